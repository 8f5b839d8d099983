"""The ``backend`` execution setting: how the search computes its step, beside ``device`` and ``threads``.

``loop`` (default) | ``vmap`` | ``compiled`` | ``auto`` (:mod:`gradleak.backends.policy` measures and picks). It is
a property of the run, not of the attack: a run config's top-level ``backend:`` key, ``--backend`` on the
commands that take ``--device``, or ``with using("vmap"):`` around any attack call. Every backend gives the same
numbers (tested), so the setting changes time, never results beyond rounding.

Configs that still say ``attack.options.backend: X`` (before issue 22) are read as ``backend: X`` with a
one-line note (:func:`moved_option`); a config that sets both to different values is refused. An attack built
in Python with ``backend=...`` is refused with a one-line error naming the setting.

No torch here: the CLI and the config schema import this module.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

from gradleak.errors import UserError, bad_value

SETTINGS = ("loop", "vmap", "compiled", "auto")
DEFAULT = "loop"

_CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("gradleak_backend", default=DEFAULT)
_NOTED: set[str] = set()  # notes already shown in this process (a sweep validates one config per cell)


def check(name: object, key: str = "backend") -> str:
    """``name`` if it is a backend setting, else the one-line error naming ``key``."""
    if not isinstance(name, str) or name not in SETTINGS:
        raise bad_value(key, name, ", ".join(SETTINGS))
    return name


def current() -> str:
    """The setting in force here (:data:`DEFAULT` unless a caller set one with :func:`using`)."""
    return _CURRENT.get()


@contextlib.contextmanager
def using(name: str | None, key: str = "backend") -> Iterator[str]:
    """Run the enclosed attack calls with backend setting ``name`` (None: keep the one in force)."""
    if name is None:
        yield current()
        return
    token = _CURRENT.set(check(name, key))
    try:
        yield name
    finally:
        _CURRENT.reset(token)


def moved_option(raw: dict) -> str | None:
    """A raw run config's ``attack.options.backend`` moved to the top-level ``backend`` key (in place); returns
    the note to show (once per process), else None. Both set to different values: one-line error."""
    attack = raw.get("attack")
    options = attack.get("options") if isinstance(attack, dict) else None
    if not isinstance(options, dict) or "backend" not in options:
        return None
    value = options.pop("backend")
    top = raw.get("backend")
    if top is not None and top != value:
        raise UserError(f"attack.options.backend: got {value!r} while backend is {top!r}; allowed: one of them — "
                        "backend is an execution setting now (top-level backend:, or --backend)")
    raw["backend"] = value
    note = (f"note: attack.options.backend is read as the execution setting backend: {value} "
            "(write it as a top-level key; attack.options.backend is deprecated)")
    if note in _NOTED:
        return None
    _NOTED.add(note)
    return note


def refuse_option(value: object, key: str = "attack.options.backend") -> UserError:
    """The one-line error for ``backend`` given to an attack (it is an execution setting now)."""
    return UserError(f"{key}: got {value!r}; allowed: not an attack option — backend is an execution setting: "
                     "top-level 'backend:' in a run config, --backend on the command line, or "
                     "gradleak.backends.setting.using(...) in Python")
