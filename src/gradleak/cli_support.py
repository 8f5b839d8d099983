"""What every command shares: the one error policy, the checked ``--out``, ``--threads``, ``--version``.

The policy (:func:`run_cli`, called by ``gradleak.cli.main``):

* a :class:`~gradleak.errors.UserError` (bad input) → ``error: <one line>`` on stderr, exit code 2;
* a click usage error (unknown option, ``--steps x``, missing argument) → ``error: <one line>``, exit 2;
* Ctrl-C (SIGINT → ``KeyboardInterrupt``, click's ``Abort``) → ``interrupted``, exit 130;
* a write that fails because of the place (full disk, read-only file system, quota, I/O error: an
  :class:`OSError` with an errno of :data:`DISK_ERRNOS`) → ``error: cannot write '<file>': <reason>``, exit 74;
* anything else is a bug: the traceback is kept, exit 1.

``--out`` is checked when the command line is parsed, before any work starts (:func:`checked_out`): it must
not be an existing file, lie under a file, or be in a place this process cannot write; then its lock is taken
(:mod:`gradleak.locks`: a second command on the same directory is refused in one line) and leftover temporary
files of an earlier killed run (``.<name>.XXXXXXXX.tmp``, ``*.safetensors.tmp``, ``*.json.tmp``) are removed
from it. :func:`run_cli` releases the lock however the command ends.
"""
from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

from gradleak.errors import UserError

INTERRUPTED = 130
USAGE = 2
IO_ERROR = 74  # EX_IOERR (sysexits.h): the disk is full, read-only, over quota or failing
#: errnos of a write that failed because of the place, not the program: one line, not a traceback
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}


def one_line(text: str) -> str:
    """Collapse a message to one line (error messages quoted from libraries may span several)."""
    return " ".join(str(text).split())


def _click_exception() -> type:
    """click's ClickException, whether typer depends on click or vendors it."""
    import typer

    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _is_abort(err: BaseException) -> bool:
    return any(c.__name__ == "Abort" for c in type(err).__mro__)


def _usage_line(err) -> str:
    """click's usage error as one line: the message, plus the command it belongs to."""
    ctx = getattr(err, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None and getattr(ctx, "command_path", None) else ""
    return one_line(f"{where}{err.format_message()}")


def run_cli(app: Callable[..., object]) -> None:
    """Run the typer/click ``app`` under the error policy of the module docstring (exits the process)."""
    from gradleak.locks import release_all

    try:
        _run_cli(app)
    finally:
        release_all()  # the --out locks taken while parsing (gradleak.locks)


def _run_cli(app: Callable[..., object]) -> None:
    try:
        code = app(standalone_mode=False)
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(USAGE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        where = f" {str(err.filename)!r}" if err.filename else ""
        print(f"error: cannot write{where}: {err.strerror or os.strerror(err.errno)} (the files written before "
              "are complete; nothing is half-written)", file=sys.stderr)
        sys.exit(IO_ERROR)
    except Exception as err:
        if _is_abort(err):  # click turns KeyboardInterrupt into Abort
            print("interrupted", file=sys.stderr)
            sys.exit(INTERRUPTED)
        if isinstance(err, _click_exception()):
            if type(err).__name__ == "NoArgsIsHelpError":  # no arguments at all: the help, not an error line
                if err.format_message().strip():
                    print(err.format_message())
            elif err.format_message().strip():
                print(f"error: {_usage_line(err)}", file=sys.stderr)
            sys.exit(getattr(err, "exit_code", USAGE) or USAGE)
        raise
    # typer turns KeyboardInterrupt into Exit(130), which standalone_mode=False *returns* (it would exit 0)
    if isinstance(code, int) and not isinstance(code, bool) and code:
        if code == INTERRUPTED:
            print("interrupted", file=sys.stderr)
        sys.exit(code)


# --- --out ---------------------------------------------------------------------------------------------------

# exactly the names gradleak's writers use for temporary files: gradleak.atomic (mkstemp: ".<name>." + 8 random
# characters + ".tmp"), gradleak.filepair ("<stem>.safetensors.tmp" / "<stem>.json.tmp") and the --out probe
TMP_NAME = re.compile(r"^(\..+\.[a-z0-9_]{8}\.tmp|.+\.safetensors\.tmp|.+\.json\.tmp|\.gradleak-probe-.+\.tmp)$")


def clean_tmp(directory: str | os.PathLike) -> list[Path]:
    """Remove leftover temporary files of gradleak's atomic writes under ``directory`` (a killed run leaves
    them); returns what was removed. Only names gradleak's writers use are touched (:data:`TMP_NAME`)."""
    root = Path(directory)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for p in root.rglob("*.tmp"):
        if TMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def check_out(out: str | os.PathLike, key: str = "--out", lock: bool = False) -> Path:
    """Refuse an output directory that cannot be used, before any work: an existing file, a path under a
    file, or a place where no file can be created. With ``lock``, take the directory's lock
    (:mod:`gradleak.locks`: a second command on the same directory is refused; the directory is created for
    it and removed again if the command leaves it empty); then clean leftover ``*.tmp`` files — only under the
    lock, so a live run's temporary files are never touched."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}: {str(path)!r} is a file; allowed: a directory (existing or to be created)")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{key}: {str(path)!r} lies under the file {str(probe)!r}; allowed: a directory path")
    try:  # a real probe: os.access is always true for root, and says nothing about read-only file systems
        fd, name = tempfile.mkstemp(dir=probe, prefix=".gradleak-probe-", suffix=".tmp")
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise UserError(f"{key}: cannot write in {str(probe)!r} ({err.strerror or type(err).__name__}); "
                        "allowed: a writable directory") from None
    if lock:
        from gradleak.locks import acquire, command_name

        acquire(path, command_name(), key)
    if path.is_dir() and (lock or not _locked_by_other(path)):
        clean_tmp(path)
    return path


def _locked_by_other(path: Path) -> bool:
    from gradleak.locks import LOCK_NAME

    return (path / LOCK_NAME).exists()


def checked_out(value):
    """typer ``callback=`` for ``--out`` options: :func:`check_out` at parse time, with the directory's lock
    held until the command ends (None passes)."""
    return None if value is None else check_out(value, lock=True)


# --- --threads, --version -------------------------------------------------------------------------------------

def set_threads(threads: int) -> None:
    """``--threads N``: torch CPU threads for this command (0 keeps torch's default)."""
    if threads < 0:
        raise UserError(f"--threads: got {threads}; allowed: an integer >= 0 (0: torch's default)")
    if threads:
        import torch

        torch.set_num_threads(threads)


def threads_callback(value: int) -> int:
    """typer ``callback=`` for ``--threads``: applies it at parse time, so every command honours it."""
    set_threads(value)
    return value


def version_callback(value: bool) -> None:
    if value:
        import gradleak

        print(f"gradleak {gradleak.__version__}")
        raise SystemExit(0)
