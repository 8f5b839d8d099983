"""``gradleak list NAME``: one registered dataset, model, defense or attack described from its own code —
the first paragraph of its docstring (which cites the equation it implements), where it lives, and every
option with its default, read from the signature that the config is checked against."""
from __future__ import annotations

import functools
import inspect
import textwrap
from typing import Any

# parameters the case fills in itself (from the data / the victim), not config options
_FILLED = {"model": {"num_classes", "in_channels", "resolution"}}
_PREFIX = {"data": "data.{}", "model": "model.options.{}", "defense": "defense[i].{}", "attack": "attack.options.{}"}


def _annotation(p: inspect.Parameter) -> str:
    a = p.annotation
    if a is inspect.Parameter.empty:
        return ""
    text = (a if isinstance(a, str) else getattr(a, "__name__", repr(a))).replace("typing.", "")
    if text.startswith("Annotated["):  # Annotated[T, Field(...)] -> T
        text = text[len("Annotated["):].split(", Field(")[0]
    return text


def describe_entry(name: str, kind: str, section: str, entry: Any) -> str:
    """Text block for registry ``entry`` (a class or a factory function) registered as ``name``."""
    target = entry.__init__ if inspect.isclass(entry) else entry  # a partial keeps its bound arguments out
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
        lines.append(f"  {p.name:<{width}}  {default:<12} {_annotation(p):<40} {key}".rstrip())
    return "\n".join(lines)
