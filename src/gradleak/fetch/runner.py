"""Running the package tools (apt-get, npm, pip, dpkg-deb) — injectable, so tests stub them.

A :data:`Runner` is ``run(argv, cwd)``; it returns nothing and raises :class:`FetchError` (a
:class:`~gradleak.errors.UserError`: one line, exit 2) when the tool is missing or fails.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from gradleak.errors import UserError

Runner = Callable[[list, Path], None]


class FetchError(UserError):
    """A fetch that cannot go on: missing tool, unreachable registry, checksum mismatch, bad archive."""


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return " ".join(lines[-1].split())[:300] if lines else ""


def subprocess_runner(argv: list, cwd: Path) -> None:
    """Run a real tool; ``python`` means this interpreter (so ``pip`` is the one gradleak runs under)."""
    argv = [sys.executable if a == "python" and i == 0 else str(a) for i, a in enumerate(argv)]
    if shutil.which(argv[0]) is None:
        raise FetchError(f"fetch: {argv[0]}: command not found; allowed: a system with {argv[0]} on PATH "
                         f"(or a url: source)")
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise FetchError(f"fetch: {' '.join(argv[:3])}: timed out after 1800 s; allowed: a reachable registry") from None
    if proc.returncode != 0:
        why = last_line(proc.stderr) or last_line(proc.stdout) or f"exit {proc.returncode}"
        raise FetchError(f"fetch: {' '.join(argv[:4])}: failed ({why}); allowed: a reachable registry "
                         f"that serves this package")
