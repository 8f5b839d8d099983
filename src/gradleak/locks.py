"""One writer per output directory: ``OUT/.gradleak.lock``, held for the whole command.

Two processes given the same ``--out`` (two runs, two sweeps, a sweep and a trainer) would interleave their
files. Every command that writes takes this lock when its ``--out`` is checked (:func:`gradleak.cli_support.
check_out`), before any work; a second command on the same directory is refused with one line naming the
owner::

    error: --out: 'runs/x' is in use by gradleak sweep (pid 4242 on host node7, since 2026-12-07T19:40:02Z);
    allowed: another --out, or wait for that run to end

The lock is an advisory ``flock`` on the file (the kernel drops it when its owner exits, however it exits:
a SIGKILL or an OOM kill leaves no live lock), and the file holds the owner's pid, host, command and start
time for that message. A leftover file whose lock nobody holds is therefore stale by construction and taken
over silently. Where ``flock`` is not supported (some network file systems) the pid is checked instead: a
lock written on this host by a process that no longer runs is stale; one from another host is honoured (the
message says to delete the file if that run is gone).

Locks are re-entrant within a process (the CLI holds the directory, :func:`gradleak.experiments.sweep.run_sweep`
asks again) and released by :func:`release_all` when the command ends; the file is removed then.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gradleak.errors import UserError

LOCK_NAME = ".gradleak.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid check only
    fcntl = None


@dataclass
class Lock:
    """A held lock (see the module docstring)."""

    path: Path
    fd: int | None
    count: int = 1
    created: list[Path] = field(default_factory=list)  # directories made for it (removed again when left empty)


_HELD: dict[Path, Lock] = {}


def _owner(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _owner_written(path: Path, wait: float = 1.0) -> dict:
    """The holder's facts; a holder that has just taken the lock writes them a moment after its flock, so an
    empty file is read again for up to ``wait`` seconds before the refusal says "pid ?"."""
    end = time.monotonic() + wait
    info = _owner(path)
    while not info and time.monotonic() < end:
        time.sleep(0.01)
        info = _owner(path)
    return info


def _describe(info: dict) -> str:
    cmd = info.get("command") or "gradleak"
    return (f"{cmd} (pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
            f"since {info.get('started', '?')})")


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refuse(out: Path, key: str, info: dict, hint: str = "") -> UserError:
    return UserError(f"{key}: {str(out)!r} is in use by {_describe(info)}; allowed: another {key}, or wait for "
                     f"that run to end{hint}")


def acquire(out: str | os.PathLike, command: str = "gradleak", key: str = "--out") -> Lock:
    """Take the lock of directory ``out`` (created, with its parents, if missing); raises a one-line
    :class:`UserError` when another live process holds it."""
    out = Path(out)
    created = []
    probe = out
    while not probe.exists():
        created.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    out.mkdir(parents=True, exist_ok=True)
    real = out.resolve()
    if real in _HELD:
        _HELD[real].count += 1
        return _HELD[real]
    path = real / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    try:
        fd = _take(path, out, key, me)
    except BaseException:
        _remove_created(created)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    except OSError as err:  # a full or failing disk: one line naming the lock file (gradleak.cli_support)
        from gradleak.atomic import write_error

        os.close(fd)
        path.unlink(missing_ok=True)
        _remove_created(created)
        raise write_error(err, path) from err
    lock = Lock(path, fd, created=created)
    _HELD[real] = lock
    return lock


def _take(path: Path, out: Path, key: str, me: dict) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _owner_written(path)
                os.close(fd)
                raise _refuse(out, key, info) from None
            except OSError:  # no flock here (some network file systems): judge by the pid
                _pid_check(path, out, key, me)
                return fd
        else:  # pragma: no cover
            _pid_check(path, out, key, me)
            return fd
        try:  # the owner may have released (and removed) the file between our open and our flock
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _pid_check(path: Path, out: Path, key: str, me: dict) -> None:
    info = _owner(path)
    if not info or info.get("pid") == me["pid"] and info.get("host") == me["host"]:
        return
    if info.get("host") != me["host"]:
        raise _refuse(out, key, info, f" (if it is gone, delete {str(path)!r})")
    if _alive(info.get("pid")):
        raise _refuse(out, key, info)


def _remove_created(created: list[Path]) -> None:
    for d in created:  # deepest first
        try:
            d.rmdir()
        except OSError:
            break


def release(lock: Lock) -> None:
    """Give one hold of ``lock`` back; the last one removes the file (and directories made for it if empty)."""
    lock.count -= 1
    if lock.count > 0:
        return
    _HELD.pop(lock.path.parent, None)
    try:
        lock.path.unlink()  # while still holding the flock: a waiting opener sees another inode and retries
    except FileNotFoundError:
        pass
    if lock.fd is not None:
        os.close(lock.fd)
        lock.fd = None
    _remove_created(lock.created)


def release_all() -> None:
    """Release every lock this process holds (the CLI calls this when a command ends, however it ends)."""
    for lock in list(_HELD.values()):
        lock.count = 1
        release(lock)


class out_lock:
    """``with out_lock(out, "sweep"):`` — :func:`acquire` / :func:`release` as a context manager."""

    def __init__(self, out: str | os.PathLike, command: str = "gradleak", key: str = "--out"):
        self.args = (out, command, key)

    def __enter__(self) -> Lock:
        self.lock = acquire(*self.args)
        return self.lock

    def __exit__(self, *exc) -> None:
        release(self.lock)


def command_name() -> str:
    """``gradleak <command>`` from ``sys.argv`` (for the lock's owner line)."""
    args = [a for a in sys.argv[1:] if not a.startswith("-")][:1]
    return "gradleak " + " ".join(args) if args else "gradleak"
