"""Workers that die or hang, and Ctrl-C, in sweeps (issue 25, items 3 and 6) — with real processes and signals.

The pool (:mod:`gradleak.experiments.workers`) is driven with small functions of this module (no torch: the
workers start in a fraction of a second): a worker SIGKILLed from outside mid-task costs that task one attempt
and nothing else; a hung task is killed at its timeout; an exception fails its task only. ``gradleak sweep`` is
then run as a user would: one worker is SIGKILLed mid-run → that run is reported failed (with the reason),
the others finish, the rerun redoes only it; Ctrl-C ends the sweep within seconds with exit 130, keeping the
finished runs and leaving no worker behind.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gradleak.experiments.workers import run_tasks

SRC = str(Path(__file__).resolve().parents[1] / "src")


# --- task functions (run in spawned workers) -----------------------------------------------------------------

def double(x: int) -> int:
    return 2 * x


def victim(d: str, name: str, die_times: int) -> str:
    """Leave ``<name>.<attempt>.pid`` and wait to be killed (by the test) on the first ``die_times`` attempts."""
    attempt = 1 + len(list(Path(d).glob(f"{name}.*.pid")))
    Path(d, f"{name}.{attempt}.pid").write_text(str(os.getpid()))
    if attempt <= die_times:
        time.sleep(60)
    return f"{name} done on attempt {attempt}"


def hang() -> None:
    time.sleep(60)


def boom() -> None:
    raise ValueError("boom")


def _killer(d: Path, stop: threading.Event) -> None:
    """SIGKILL every worker that announces itself in ``d`` (what the OOM killer or an operator does)."""
    killed = set()
    while not stop.is_set():
        for f in d.glob("*.pid"):
            if f.name not in killed and f.read_text():
                pid = int(f.read_text())
                name, attempt = f.name.split(".")[:2]
                if int(attempt) <= {"once": 1, "always": 99}[name]:
                    os.kill(pid, signal.SIGKILL)
                killed.add(f.name)
        time.sleep(0.02)


def test_killed_worker_costs_one_attempt_of_one_task(tmp_path):
    stop = threading.Event()
    t = threading.Thread(target=_killer, args=(tmp_path, stop), daemon=True)
    t.start()
    tasks = [("a", double, (1,)), ("once", victim, (str(tmp_path), "once", 1)),
             ("always", victim, (str(tmp_path), "always", 99)), ("b", double, (2,)), ("c", double, (3,))]
    try:
        got = {o.key: o for o in run_tasks(tasks, workers=2, retries=2)}
    finally:
        stop.set()
    assert got["a"].result == 2 and got["b"].result == 4 and got["c"].result == 6
    assert got["once"].ok and got["once"].result == "once done on attempt 2" and got["once"].attempts == 2
    assert not got["always"].ok and got["always"].attempts == 3  # 1 + 2 retries, each one SIGKILLed
    assert "killed by SIGKILL" in got["always"].reason
    assert len(list(tmp_path.glob("always.*.pid"))) == 3


def test_hung_task_is_killed_at_its_timeout_and_exceptions_are_not_retried():
    t0 = time.monotonic()
    got = {o.key: o for o in run_tasks([("hang", hang, ()), ("boom", boom, ()), ("ok", double, (5,))],
                                       workers=2, retries=1, timeout=1.0)}
    assert time.monotonic() - t0 < 30
    assert not got["hang"].ok and got["hang"].attempts == 2 and got["hang"].reason.startswith("timed out after 1 s")
    assert not got["boom"].ok and got["boom"].attempts == 1 and got["boom"].reason == "ValueError: boom"
    assert got["ok"].result == 10


SCRIPT = f"""
import sys; sys.path[:0] = [{SRC!r}, {str(Path(__file__).parent)!r}]
from gradleak.experiments.workers import run_tasks
from test_worker_faults import hang
if __name__ == "__main__":
    for o in run_tasks([("h1", hang, ()), ("h2", hang, ())], workers=2):
        pass
"""


def test_ctrl_c_stops_the_pool_within_seconds_and_leaves_no_worker(tmp_path):
    (tmp_path / "s.py").write_text(SCRIPT)
    p = subprocess.Popen([sys.executable, str(tmp_path / "s.py")], start_new_session=True, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(_workers(p.pid)) < 2:
        time.sleep(0.05)
    workers = _workers(p.pid)
    assert len(workers) >= 2
    time.sleep(1.0)  # the tasks are running
    t0 = time.monotonic()
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    p.wait(30)
    assert time.monotonic() - t0 < 5
    assert "KeyboardInterrupt" in p.stderr.read()
    time.sleep(0.2)
    assert not [w for w in workers if _alive(w)], "a worker outlived the pool"


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _workers(pid: int) -> list[int]:
    """The pool's worker processes among ``pid``'s children (not multiprocessing's resource tracker)."""
    found = []
    for c in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes():
                found.append(c)
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- gradleak sweep with real workers --------------------------------------------------------------------------

SWEEP = """
base:
  data: {name: digits, channels: 1, resolution: 16}
  attack: {name: invertgrad, options: {iterations: 3}}
  metrics: {tagger: none}
axes:
  data.batch_size: [1, 2, 3]
batches: 1
"""


def _sweep(tmp_path: Path, out: Path, *extra: str) -> subprocess.Popen:
    (tmp_path / "s.yaml").write_text(SWEEP)
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", "from gradleak.cli import main; main()", "sweep",
                             str(tmp_path / "s.yaml"), "--out", str(out), "--no-progress", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_sweep_worker_sigkilled_mid_run_is_reported_and_redone_alone(tmp_path):
    out = tmp_path / "out"
    p = _sweep(tmp_path, out, "--workers", "2", "--retries", "0")
    deadline = time.time() + 120
    while time.time() < deadline and not _workers(p.pid):
        time.sleep(0.05)
    first = sorted(_workers(p.pid))
    time.sleep(0.5)
    os.kill(first[0], signal.SIGKILL)  # a worker dies mid-run; with --retries 0 its run fails at once
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 1, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("sweep:")]
    assert len(lines) == 1 and "1 of 3 runs failed" in lines[0] and "killed by SIGKILL" in lines[0], stderr[-3000:]
    failed = json.loads((out / "failures.json").read_text())["failed"]
    assert len(failed) == 1 and failed[0]["attempts"] == 1 and "SIGKILL" in failed[0]["reason"]
    done = {m: m.stat().st_mtime_ns for m in out.glob("runs/*/*/metrics.json")}
    assert len(done) == 2 and not (out / "runs" / failed[0]["run"] / "metrics.json").exists()
    summary = {r["cell"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert len(summary) == 3 and summary[failed[0]["cell"]]["failed"] == "1"
    assert "SIGKILL" in summary[failed[0]["cell"]]["failure"]
    assert sum(int(r["failed"]) for r in summary.values()) == 1
    r = _sweep(tmp_path, out, "--workers", "2")  # the rerun: only the failed run
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err[-3000:]
    assert all(m.stat().st_mtime_ns == t for m, t in done.items())
    assert len(list(out.glob("runs/*/*/metrics.json"))) == 3 and not (out / "failures.json").exists()


def test_sweep_ctrl_c_exits_130_within_seconds_keeping_finished_runs(tmp_path):
    out = tmp_path / "out"
    p = _sweep(tmp_path, out, "--workers", "2")
    deadline = time.time() + 180
    while time.time() < deadline and not list(out.glob("runs/*/*/metrics.json")):
        time.sleep(0.05)
    kept = {m: m.stat().st_mtime_ns for m in out.glob("runs/*/*/metrics.json")}
    if len(kept) == 3:
        pytest.skip("the machine finished the whole sweep before the Ctrl-C")
    workers = _workers(p.pid)
    t0 = time.monotonic()
    os.killpg(p.pid, signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 10, "Ctrl-C took too long"
    assert p.returncode == 130, stderr[-3000:]
    ours = [ln for ln in stderr.splitlines() if not ln.startswith((" ", "/")) and "resource_tracker" not in ln]
    assert ours[-1] == "interrupted", stderr[-2000:]  # (multiprocessing's tracker may warn after it)
    assert "runs are finished and kept" in stderr
    assert all(m.stat().st_mtime_ns == t for m, t in kept.items())
    time.sleep(0.3)
    assert not [w for w in workers if _alive(w)]
    assert not (out / ".gradleak.lock").exists()


def test_flower_capture_ctrl_c_exits_130_keeping_complete_captures(tmp_path):
    """Ctrl-C during a Flower capture (the example's in-process engine: the real ServerApp / ClientApp / capture
    wrapper): exit 130 within seconds; every capture in index.json is complete and loads."""
    pytest.importorskip("flwr")
    from gradleak.fl.observation import Observation
    from gradleak.integrations.flower import load_index

    example = Path(__file__).resolve().parents[1] / "examples" / "flower" / "run.py"
    out = tmp_path / "fl"
    p = subprocess.Popen([sys.executable, str(example), "--out", str(out), "--engine", "inprocess", "--clients", "3",
                          "--images", "1", "--batch-size", "1", "--epochs", "2", "--rounds", "500", "--iterations",
                          "6", "--attack-clients", "1", "--no-dp"], env={**os.environ, "PYTHONPATH": SRC},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not (out / "plain" / "index.json").exists() and p.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)
    t0 = time.monotonic()
    os.killpg(p.pid, signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 10, "Ctrl-C took too long"
    assert p.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted"), stderr[-2000:]
    entries = load_index(out / "plain")
    assert entries
    for e in entries:
        Observation.load(out / "plain" / e["path"])  # complete: loads and validates against the model


def suicide(d: str, name: str, times: int) -> str:
    """Count this attempt, then SIGKILL the own (Ray) worker on the first ``times`` attempts."""
    attempt = 1 + len(list(Path(d).glob(f"{name}.*.attempt")))
    Path(d, f"{name}.{attempt}.attempt").write_text("")
    if attempt <= times:
        os.kill(os.getpid(), signal.SIGKILL)
    return f"{name} done on attempt {attempt}"


@pytest.mark.slow  # a local Ray instance takes ~20 s to start on the shared machine: pytest -m slow
def test_ray_worker_deaths_timeouts_and_exceptions(tmp_path):
    """The same contract on Ray (a local instance, 2 CPUs): a worker SIGKILLed is retried by Ray, a hung task is
    killed by its watchdog and named "timed out", an exception is not retried."""
    ray = pytest.importorskip("ray")
    from gradleak.experiments.workers import run_ray_tasks

    tests = str(Path(__file__).resolve().parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": f"{SRC}:{tests}:{Path(tests).parent}"}})
    try:
        d = str(tmp_path)
        tasks = [("ok", double, (4,), None), ("once", suicide, (d, "once", 1), None),
                 ("always", suicide, (d, "always", 99), None), ("hang", hang, (), str(tmp_path / "hang.timeout")),
                 ("boom", boom, (), None)]
        got = {o.key: o for o in run_ray_tasks(tasks, retries=1, timeout=3.0)}
    finally:
        ray.shutdown()
    assert got["ok"].result == 8
    assert got["once"].ok and got["once"].result == "once done on attempt 2"
    assert not got["always"].ok and "WorkerCrashedError" in got["always"].reason
    assert len(list(tmp_path.glob("always.*.attempt"))) == 2  # 1 + 1 retry
    assert not got["hang"].ok and got["hang"].reason.startswith("timed out after 3 s"), got["hang"].reason
    assert not got["boom"].ok and got["boom"].reason == "ValueError: boom"
