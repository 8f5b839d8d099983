"""Validate keyword options against a function's signature with pydantic, one-line errors.

Used wherever a config section is forwarded to a factory (attack presets, model options, defenses):
the signature's annotations are the schema, so options and their types live in one place.
"""
from __future__ import annotations

import inspect
import typing
from typing import Annotated, Any, Callable

import pydantic
from pydantic import Field

from gradleak.errors import UserError

# constrained option types for factory signatures (checked by validate_options, shown by ``gradleak list``)
MAX_ITERATIONS = 10_000_000  # more than any attack run could finish (days per image at ~1 ms an iteration)
Iterations = Annotated[int, Field(ge=1, le=MAX_ITERATIONS)]
Steps = Annotated[int, Field(ge=0, le=MAX_ITERATIONS)]  # a stage of a multi-stage attack, which may be skipped
LearningRate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # a regulariser's weight


def _model_for(fn: Callable) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {}
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # unresolvable annotations: validate names only
        hints = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = hints.get(name, Any)
        fields[name] = (ann, ... if p.default is inspect.Parameter.empty else p.default)
    return pydantic.create_model(f"{getattr(fn, '__name__', 'options')}_options",
                                 __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True,
                                                                allow_inf_nan=False),
                                 **fields)


def format_error(err: pydantic.ValidationError, prefix: str = "") -> str:
    """First error of a pydantic ValidationError as ``key: got X; allowed: Y``."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(e["loc"]))
    if e["type"] == "extra_forbidden":
        allowed = getattr(err, "_gradleak_allowed", None)
        return f"{key}: unknown key; allowed keys: {allowed}" if allowed else f"{key}: unknown key"
    if e["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key}: got {e.get('input')!r}; allowed: {e['msg'].removeprefix('Input should be ').removeprefix('Value error, ')}"


def validate_options(fn: Callable, options: dict, prefix: str) -> dict:
    """Check ``options`` against ``fn``'s keyword parameters; return them coerced to the annotated types."""
    model = _model_for(fn)
    try:
        return model(**options).model_dump()
    except pydantic.ValidationError as err:
        err._gradleak_allowed = ", ".join(model.model_fields)  # type: ignore[attr-defined]
        raise UserError(format_error(err, prefix)) from None



def validate_model(schema: type[pydantic.BaseModel], raw: Any, prefix: str, unknown: Callable[[str, tuple], str]):
    """``schema.model_validate(raw)`` with its first error as one line: ``unknown(dotted key, loc)`` for a key the
    schema lacks (``extra="forbid"``), else ``prefix`` + ``key: got X; allowed: Y`` (:func:`format_error`)."""
    try:
        return schema.model_validate(raw)
    except pydantic.ValidationError as err:
        e = err.errors()[0]
        if e["type"] == "extra_forbidden":
            raise UserError(unknown(".".join(map(str, e["loc"])), tuple(e["loc"]))) from None
        raise UserError(prefix + format_error(err)) from None
