"""Named registries (datasets, models, defenses, attacks, distances), filled by one decorator.

Like Opacus's ``@register_grad_sampler``: an entry is registered where it is defined, and a name can be
registered once — a second registration under the same name is a programming error, not a silent
overwrite::

    ATTACKS = Registry("attack")

    @ATTACKS.register("invertgrad", "gi-x")
    class InvertGrad(SearchAttack): ...

A :class:`Registry` reads like a ``dict`` (``name in R``, ``R[name]``, iteration in registration order)
but refuses item assignment: the decorator is the only way in.
"""
from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


class Registry(dict):
    """name → object; :meth:`register` adds, nothing else writes."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator registering the object under ``name`` (and ``aliases``); refuses a taken name."""
        def add(obj: T) -> T:
            for key in (name, *aliases):
                if key in self:
                    raise ValueError(f"{self.kind} {key!r} is already registered ({self[key]!r}); "
                                     "pick another name")
                dict.__setitem__(self, key, obj)
            return obj
        return add

    def __setitem__(self, key, value):  # noqa: D105
        raise TypeError(f"{self.kind} registry: use @register({key!r}) where the {self.kind} is defined")

    def update(self, *args, **kwargs):  # noqa: D102
        raise TypeError(f"{self.kind} registry: use @register(name) where the {self.kind} is defined")

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"
