"""``gradleak list NAME``: one registered dataset, model, defense or attack described from its own code —
the first paragraph of its docstring (which cites the equation it implements), where it lives, and every
option with its default, read from the signature that the config is checked against."""
from __future__ import annotations

import functools
import inspect
import textwrap
import types
import typing
from typing import Annotated, Any

# parameters the case fills in itself (from the data / the victim), not config options
_FILLED = {"model": {"num_classes", "in_channels", "resolution"}}
_PREFIX = {"data": "data.{}", "model": "model.options.{}", "defense": "defense[i].{}", "attack": "attack.options.{}"}


_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


def _type_text(hint: Any, fallback: str) -> str:
    """``int ≥ 1`` for Annotated[int, Field(ge=1)], ``str | None`` for a union, the class name for a class."""
    if hint is None:
        return fallback.replace("typing.", "")
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        bounds = [f"{sym} {getattr(m, attr)}" for x in extras for m in getattr(x, "metadata", [x])
                  for attr, sym in _BOUNDS if getattr(m, attr, None) is not None]
        return " ".join([_type_text(base, ""), *bounds])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_text(a, "") for a in typing.get_args(hint))
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def describe_entry(name: str, kind: str, section: str, entry: Any) -> str:
    """Text block for registry ``entry`` (a class or a factory function) registered as ``name``."""
    target = entry.__init__ if inspect.isclass(entry) else entry  # a partial keeps its bound arguments out
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable annotations: show them as written
        hints = {}
    params = [p for p in inspect.signature(target).parameters.values()
              if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
              and p.name not in _FILLED.get(section, ())]
    source = entry.func if isinstance(entry, functools.partial) else entry
    doc = inspect.getdoc(source) or ""
    summary = doc.split("\n\n")[0].replace("\n", " ").strip()
    lines = [f"{name} ({kind}) — {source.__module__}.{source.__qualname__}"]
    if summary:
        lines += textwrap.wrap(summary, 100)
    if section == "defense":
        lines.append(f"config: defense: [{{name: {name}, <option>: <value>, ...}}]")
    lines.append("options:" if params else "options: none")
    width = max((len(p.name) for p in params), default=0)
    for p in params:
        default = "(required)" if p.default is inspect.Parameter.empty else repr(p.default)
        key = _PREFIX[section].format(p.name)
        written = "" if p.annotation is inspect.Parameter.empty else str(p.annotation)
        lines.append(f"  {p.name:<{width}}  {default:<12} {_type_text(hints.get(p.name), written):<40} {key}".rstrip())
    return "\n".join(lines)
