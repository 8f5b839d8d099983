"""All-or-nothing run directories: an error or Ctrl-C while a run directory is written leaves no partial run.

``metrics.json`` is written last and marks a finished run. :func:`run_dir_guard` wraps the write phase:

* on entry it removes an earlier ``metrics.json`` in the directory (new files next to an old marker would
  claim a finished run that never happened);
* if the write phase raises (an error, ``KeyboardInterrupt``), it removes every file the phase created — and
  the directory itself when the phase created it — then re-raises. Files that existed before are kept (the
  directory is then marked unfinished by the missing ``metrics.json``).

Each file is itself written atomically (:mod:`gradleak.atomic`), so no file is ever half-written; a
SIGKILL can leave hidden ``*.tmp`` files, which the next command writing there removes
(:func:`gradleak.cli_support.clean_tmp`).
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

MARKER = "metrics.json"


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.is_dir() else set()


@contextmanager
def run_dir_guard(out: str | os.PathLike, marker: str = MARKER) -> Iterator[Path]:
    out = Path(out)
    existed = out.is_dir()
    before = _files(out)
    (out / marker).unlink(missing_ok=True)
    try:
        yield out
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for p in sorted(_files(out) - before, key=lambda q: len(q.parts), reverse=True):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        raise
