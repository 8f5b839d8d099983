"""Schemas of the JSON that travels with user files, checked field by field before anything is built.

Each format's metadata is a pydantic model (strict: ``"4"`` is not a number, ``true`` is not a count); a
missing or malformed field is one line naming the file and the dotted field::

    error: observation: 'tasks/task_000000.json' field model.num_classes: required key is missing

Declared sizes (``num_images``, ``image_shape``) are checked against :mod:`gradleak.limits` here too, before
any tensor of that size exists. :func:`check` is the one entry point; the schemas are below it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from gradleak.errors import UserError

PosInt = Annotated[int, Field(strict=True, ge=1)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]


class _Open(BaseModel):
    """Unknown keys are kept (newer files, provenance), known ones are typed."""

    model_config = ConfigDict(extra="allow", strict=True)


class ModelSpec(_Open):
    """How to rebuild the victim (``Observation.model_spec``)."""

    name: str
    num_classes: PosInt
    in_channels: PosInt
    resolution: PosInt
    options: dict[str, Any] = {}


class LooseModelSpec(_Open):
    """The victim when the caller supplies the architecture object (nothing is rebuilt from the file)."""

    name: Any = None
    options: dict[str, Any] = {}


class ObservationMeta(_Open):
    """``<stem>.json`` of an Observation (``Observation.save``)."""

    format_version: PosInt = 1
    model: ModelSpec
    protocol: dict[str, Any]
    num_images: PosInt
    image_shape: Annotated[list[PosInt], Field(min_length=3, max_length=3)]
    has_labels: bool = False
    has_bn_stats: bool = False
    defenses: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}


class ObservationMetaGivenModel(ObservationMeta):
    model: LooseModelSpec


class TaskEntry(_Open):
    file: str


class TaskIndex(_Open):
    """``tasks.json`` of a GIML task set."""

    format: str
    tasks: list[TaskEntry]


class CaptureEntry(_Open):
    """One reply of a captured round: its observation's path, or none for an errored reply (``kind: error``,
    e.g. an update a LeakageGuard blocked), which must then say why."""

    path: str | None
    kind: str = "client"
    reason: str | None = None

    @pydantic.model_validator(mode="after")
    def _named(self):
        if self.path is None and not (self.kind == "error" and self.reason):
            raise ValueError("a path (or kind 'error' with its reason)")
        return self


class CaptureIndex(_Open):
    """``index.json`` of a Flower capture (:mod:`gradleak.integrations.flower`)."""

    format: str
    captures: list[CaptureEntry]


def _line(err: pydantic.ValidationError) -> str:
    e = err.errors()[0]
    field = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "missing":
        return f"field {field}: required key is missing"
    given = repr(e.get("input"))
    given = given if len(given) <= 60 else given[:57] + "..."
    return f"field {field}: got {given}; allowed: {e['msg'].removeprefix('Input should be ')}"


def check(schema: type[BaseModel], meta: Any, key: str, path: str | Path) -> BaseModel:
    """``meta`` validated against ``schema``; a one-line :class:`UserError` names ``key``, the file and the
    first field at fault."""
    try:
        return schema.model_validate(meta)
    except pydantic.ValidationError as err:
        raise UserError(f"{key}: {str(path)!r} {_line(err)}") from None
