"""Concurrent runs on one output directory (issue 25, item 5): the second is refused, stale locks are taken over.

Real processes hold the lock (``gradleak.locks``: an ``flock`` on ``OUT/.gradleak.lock`` holding the owner's pid,
host, command and start time); the refused command is the real CLI, in-process.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradleak.errors import UserError
from gradleak.locks import LOCK_NAME, acquire, release, release_all

SRC = str(Path(__file__).resolve().parents[1] / "src")
HOLD = ("import sys, time; from gradleak.locks import acquire; acquire(sys.argv[1], 'gradleak sweep s'); "
        "print('held', flush=True); time.sleep(60)")


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock of ``tmp_path / 'out'``."""
    env = {**os.environ, "PYTHONPATH": SRC}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True,
                         env=env)
    assert p.stdout.readline().strip() == "held"
    yield p
    p.kill()
    p.wait()


def test_second_command_refused_while_first_runs(cli, tmp_path, holder):
    out = tmp_path / "out"
    (out / "keep.txt").write_text("the first run's file\n")
    before = sorted(p.name for p in out.iterdir())
    r = cli("run", tmp_path / "nowhere.yaml", "--out", out)  # refused at parse time: the config is never read
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: --out: ") and "in use by gradleak sweep s" in lines[0], lines[0]
    assert f"pid {holder.pid} on host {socket.gethostname()}" in lines[0], lines[0]
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written, the owner's lock left alone
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid


def test_killed_owner_leaves_a_stale_lock_that_is_taken_over(tmp_path, holder):
    out = tmp_path / "out"
    holder.kill()  # SIGKILL: the lock file stays, naming a dead pid
    holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    lock = acquire(out, "gradleak run")
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    release(lock)
    assert not (out / LOCK_NAME).exists() and out.is_dir()


def test_lock_is_reentrant_and_cleans_up(tmp_path):
    out = tmp_path / "a" / "b"
    first = acquire(out)
    second = acquire(out)
    assert first is second and (out / LOCK_NAME).is_file()
    release(second)
    assert (out / LOCK_NAME).is_file()
    release(first)
    assert not (tmp_path / "a").exists()  # made for the lock, left empty: removed


def _race(out: str, start: float, q, done) -> None:
    while time.time() < start:
        pass
    try:
        acquire(out, "racer")
        q.put(("won", os.getpid()))
        done.wait(60)  # hold it until every racer has tried (however late the loaded machine starts them)
        release_all()
    except UserError as err:
        q.put(("refused", str(err)))


def test_simultaneous_starters_exactly_one_wins(tmp_path):
    ctx = mp.get_context("fork")
    q, done = ctx.Queue(), ctx.Event()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "out"), start, q, done)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    done.set()
    for p in procs:
        p.join(10)
    assert [r[0] for r in results].count("won") == 1, results
    assert all("in use by racer" in r[1] for r in results if r[0] == "refused"), results


def test_refused_command_leaves_no_directory(cli, tmp_path):
    """A command refused after taking the lock removes the directory the lock created (nothing written)."""
    r = cli("run", tmp_path / "missing.yaml", "--out", tmp_path / "new" / "out")
    assert r.returncode == 2 and "missing.yaml" in r.stderr
    assert not (tmp_path / "new").exists()
