"""Expensive read-only networks (LPIPS, taggers) loaded once per process.

A scorer, a calibration, a sweep cell and a whole-run audit may each ask for the same LPIPS network or tagger;
:func:`once` builds it the first time and hands back the same object afterwards, keyed by the files it was
read from (path, inode, size and modification time, so a file replaced on disk is read again) and the options that
shape it. The objects are shared: callers must treat them as read-only (their parameters never get
gradients). :data:`LOADS` counts the builds per kind, for tests and for ``--verbose`` diagnostics.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, TypeVar

T = TypeVar("T")

LOADS: Counter = Counter()
_CACHE: dict[tuple, Any] = {}


def _stamp(path: str | os.PathLike) -> tuple:
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError:
        return (str(p), None, None)
    return (str(p), st.st_ino, st.st_size, st.st_mtime_ns)


def once(kind: str, files: Iterable[str | os.PathLike], options: Hashable, build: Callable[[], T]) -> T:
    """``build()`` the first time this (kind, files as they are on disk, options) is asked for; the same object
    afterwards. An exception from ``build`` is not cached."""
    key = (kind, tuple(_stamp(f) for f in files), options)
    if key not in _CACHE:
        _CACHE[key] = build()
        LOADS[kind] += 1
    return _CACHE[key]


def clear() -> None:
    """Forget every cached object (tests)."""
    _CACHE.clear()
    LOADS.clear()
