"""The run configuration: one validated pydantic schema, loaded from YAML with ``--set`` overrides.

Every section maps to one stage of the pipeline (data → model → client → defense → attack → metrics);
``options`` dicts are forwarded to the named factory and validated against its signature.
Errors are one line naming the key, the value given and what is allowed.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gradleak.errors import UserError
from gradleak.validate import validate_model


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataConfig(_Section):
    name: str = "digits"
    split: str = "private"
    resolution: int = Field(32, ge=4, le=1024)
    channels: Literal[1, 3] = 3
    root: str | None = None
    batch_size: int = Field(4, ge=1, le=4096)
    distinct_labels: bool = True


class ModelConfig(_Section):
    name: str = "lenet"
    options: dict[str, Any] = Field(default_factory=dict)
    pretrain_steps: int = Field(0, ge=0)
    pretrain_lr: float = Field(0.01, gt=0)


class _ClientSection(_Section):
    def to_protocol(self):
        """The :class:`gradleak.fl.protocol.Protocol` these settings describe (validated there too)."""
        from gradleak.fl.protocol import Protocol

        return Protocol(kind=self.protocol, **self.model_dump(exclude={"protocol"}))


def _client_config() -> type[_Section]:
    """The ``client`` section, derived from the protocol settings (:data:`gradleak.fl.protocol.SETTINGS`:
    the common ones plus each registered protocol's own) — one definition, not a mirror. ``protocol`` is a
    registered protocol name (:data:`gradleak.fl.protocols.PROTOCOLS`)."""
    from gradleak.fl.protocol import SETTINGS
    from gradleak.fl.protocols import PROTOCOLS

    fields: dict[str, Any] = {"protocol": (Literal[tuple(PROTOCOLS)], Field("fedsgd", description="client protocol"))}
    for s in SETTINGS:
        fields[s.name] = (s.annotation, Field(s.default, description=s.doc, **s.bounds()))
    return pydantic.create_model("ClientConfig", __base__=_ClientSection, __module__=__name__, **fields)


ClientConfig = _client_config()


class AttackConfig(_Section):
    name: str = "invertgrad"
    labels: Literal["default", "oracle", "recover", "learn"] = "default"
    options: dict[str, Any] = Field(default_factory=dict)


class MetricsConfig(_Section):
    lpips_dir: str | None = None
    lpips_upsample: bool = False  # False = the reference lpips package (no resizing); True = upsample < 64 px to 64
    tagger: str = "auto"  # semantic tags / Jaccard (ROGS eq. 21): auto | none | built-in name | path | import path
    tagger_threshold: float = Field(0.5, ge=0, le=1)
    tagger_top_k: int | None = Field(None, ge=1)


class RunConfig(_Section):
    """A whole audit case. ``seed`` drives the batch draw, the victim's init and the attack."""

    seed: int = 0
    device: str = "cpu"  # where the attack computes: cpu | cuda | cuda:N | mps | auto (gradleak.devices)
    backend: Literal["loop", "vmap", "compiled", "auto"] = "loop"  # how the search computes its step (gradleak.backends)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    client: ClientConfig = Field(default_factory=ClientConfig)
    defense: list[dict[str, Any]] = Field(default_factory=list)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @field_validator("device", mode="before")
    @classmethod
    def _available_device(cls, name: Any) -> str:
        """A device this machine has (:func:`gradleak.devices.lookup`), so a bad one fails when the config is read;
        ``auto`` stays ``auto`` (resolved where the attack runs, e.g. on a Ray worker with a GPU)."""
        from gradleak.devices import lookup

        device, allowed = lookup(name)
        if device is None:
            raise ValueError(allowed)
        return name.strip().lower()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _allowed_keys(loc: tuple) -> str:
    model: Any = RunConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ""
        model = field.annotation
    return ", ".join(getattr(model, "model_fields", {}))


def validate_config(raw: dict) -> RunConfig:
    if isinstance(raw, dict):
        from gradleak.backends.setting import moved_option

        note = moved_option(raw)  # attack.options.backend (before issue 22) -> the execution setting
        if note:
            print(note, file=sys.stderr)
    cfg = validate_model(RunConfig, raw, "config ",
                         lambda key, loc: f"config key {key!r}: unknown key; allowed keys: {_allowed_keys(loc)}")
    cfg.client.to_protocol()  # the protocol's own cross-field checks (one line naming client.<key>)
    return cfg


def apply_override(raw: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to the raw config dict in place."""
    if "=" not in assignment:
        raise UserError(f"--set: got {assignment!r}; allowed: KEY=VALUE with a dotted key, e.g. attack.options.iterations=100")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise UserError(f"--set {key}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read YAML (or start from defaults when ``path`` is None), apply overrides, validate."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config: file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise UserError(f"config: {p} is not UTF-8 text (byte {err.start}); allowed: a YAML file") from None
        except yaml.YAMLError as err:
            raise UserError(f"config: {p} is not valid YAML: {str(err).splitlines()[0]}") from None
        if raw is None:  # an empty file would silently run the defaults
            raise UserError(f"config: {p} is empty; allowed: a mapping of sections (write {{}} to run the defaults)")
        if not isinstance(raw, dict):
            raise UserError(f"config: {p} must hold a mapping of sections, got {type(raw).__name__}")
    for o in overrides:
        apply_override(raw, o)
    return validate_config(raw)
