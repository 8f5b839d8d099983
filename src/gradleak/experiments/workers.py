"""A process pool that survives its workers: a killed or hung worker costs one attempt of one task.

``concurrent.futures.ProcessPoolExecutor`` breaks as a whole when one worker dies (SIGKILL, the OOM killer):
every pending future fails with ``BrokenProcessPool`` and nothing says which task killed it. Here each
worker process runs one task at a time and the parent watches every worker's pipe *and* its process
sentinel (:func:`multiprocessing.connection.wait`), so

* a worker that dies mid-task is attributed to exactly that task (with its signal or exit code), replaced by
  a fresh worker, and the task is retried up to ``retries`` more times, then reported failed; every other
  task goes on;
* a task running longer than ``timeout`` seconds has its worker killed (SIGKILL: a hung C call cannot
  ignore it) and counts as a failed attempt ("timed out");
* a Python exception inside the task is deterministic for a given seed, so it is reported at once, without
  a retry;
* Ctrl-C (``KeyboardInterrupt`` in the parent; workers ignore SIGINT) stops every worker within a second
  (SIGTERM, then SIGKILL) and re-raises: finished tasks are already on disk, those in flight are lost.

Workers are started with ``spawn`` (no inherited locks or threads) and run :func:`_worker`.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Iterator


@dataclass
class Outcome:
    """What became of one task: ``ok`` with its ``result``, or failed with ``reason`` after ``attempts``."""

    key: str
    ok: bool
    result: Any = None
    reason: str = ""
    attempts: int = 1


def describe_exit(code: int | None) -> str:
    """``killed by SIGKILL (out of memory?)`` / ``exited with code 3`` for a worker's exit code."""
    if code is None:
        return "vanished"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the OOM killer, or killed by hand?)" if -code == signal.SIGKILL else ""
        return f"worker killed by {name}{hint}"
    return f"worker exited with code {code}"


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def _worker(conn) -> None:
    """Worker loop: receive ``(key, fn, args)``, send ``("ok", key, result)`` or ``("error", key, line)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        key, fn, args = msg
        conn.send(("started", key, None))  # the timeout counts from here, not from the worker's start-up
        try:
            result = fn(*args)
        except BaseException as err:  # noqa: BLE001 - reported to the parent as this task's failure
            conn.send(("error", key, _first_line(err)))
        else:
            conn.send(("ok", key, result))


class _Slot:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.task: tuple | None = None  # (key, fn, args, attempt)
        self.started: float | None = None  # when the worker began the task (its "started" message)

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(1.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(1.0)
        self.conn.close()


def run_tasks(tasks: list[tuple[str, Callable, tuple]], workers: int, retries: int = 2,
              timeout: float | None = None, context: str = "spawn") -> Iterator[Outcome]:
    """Run ``fn(*args)`` for each ``(key, fn, args)`` on ``workers`` processes, yielding each :class:`Outcome`
    as it is known (see the module docstring)."""
    ctx = mp.get_context(context)
    pending = deque((key, fn, args, 1) for key, fn, args in tasks)
    slots = [_Slot(ctx) for _ in range(max(1, min(workers, len(tasks))))]
    try:
        while pending or any(s.task for s in slots):
            for s in slots:
                if s.task is None and pending:
                    s.task = pending.popleft()
                    s.started = None
                    s.conn.send(s.task[:3])
            busy = [s for s in slots if s.task]
            wait_for = None
            running = [s.started for s in busy if s.started is not None]
            if timeout and running:
                wait_for = max(0.0, min(running) + timeout - time.monotonic())
            ready = wait([s.conn for s in busy] + [s.proc.sentinel for s in busy], timeout=wait_for)
            for i, s in enumerate(slots):
                if s.task is None:
                    continue
                key, fn, args, attempt = s.task
                failure = None
                if s.conn in ready:
                    try:
                        status, _, payload = s.conn.recv()
                    except (EOFError, OSError):
                        s.proc.join(1.0)
                        failure = describe_exit(s.proc.exitcode)
                    else:
                        if status == "started":
                            s.started = time.monotonic()
                            continue
                        s.task = None
                        if status == "ok":
                            yield Outcome(key, True, payload, attempts=attempt)
                        else:
                            yield Outcome(key, False, reason=payload, attempts=attempt)
                        continue
                elif s.proc.sentinel in ready:
                    s.proc.join(1.0)
                    failure = describe_exit(s.proc.exitcode)
                elif timeout and s.started is not None and time.monotonic() - s.started > timeout:
                    s.proc.kill()
                    s.proc.join(5.0)
                    failure = f"timed out after {timeout:g} s (worker killed)"
                if failure is None:
                    continue
                s.stop()
                slots[i] = _Slot(ctx)
                if attempt <= retries:
                    pending.appendleft((key, fn, args, attempt + 1))
                else:
                    yield Outcome(key, False, reason=failure, attempts=attempt)
    finally:
        _stop_all(slots)


def _stop_all(slots: list[_Slot], grace: float = 1.0) -> None:
    """Normal end, Ctrl-C or an abandoned generator: no worker outlives the pool (within ``grace`` seconds)."""
    for s in slots:
        try:
            s.conn.send(None)
        except (OSError, ValueError):
            pass
        if s.task is not None and s.proc.is_alive():
            s.proc.terminate()  # busy: stop now (its run directory stays unfinished: redone next time)
    deadline = time.monotonic() + grace
    for s in slots:
        s.proc.join(max(0.0, deadline - time.monotonic()))
    for s in slots:
        if s.proc.is_alive():
            s.proc.kill()
            s.proc.join(1.0)
        s.conn.close()


# --- Ray ----------------------------------------------------------------------------------------------------

def _ray_call(fn: Callable, args: tuple, timeout: float | None, marker: str | None):
    """``fn(*args)`` in a Ray worker under a watchdog: past ``timeout`` the worker writes ``marker`` (so the
    driver can name the cause) and kills itself with SIGKILL — a hung C call cannot ignore it."""
    import os
    import threading

    timer = None
    if timeout:
        def expire():
            if marker:
                from pathlib import Path

                Path(marker).parent.mkdir(parents=True, exist_ok=True)
                Path(marker).write_text(f"{timeout:g}\n")
            os.kill(os.getpid(), signal.SIGKILL)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
    try:
        return fn(*args)
    finally:
        if timer is not None:
            timer.cancel()


def run_ray_tasks(tasks: list[tuple[str, Callable, tuple, str | None]], retries: int = 2,
                  timeout: float | None = None, num_cpus: float = 1) -> Iterator[Outcome]:
    """:func:`run_tasks` on Ray (already initialised): ``(key, fn, args, timeout_marker_path)`` per task.

    A worker or node lost (SIGKILL, OOM, node failure) is a system failure Ray retries itself
    (``max_retries=retries``), then the task is reported failed with Ray's error; a Python exception is not
    retried (``retry_exceptions=False``); ``timeout`` is enforced by a watchdog in the worker (:func:`_ray_call`)
    and named from its marker file. On Ctrl-C or any error every pending task is cancelled (``force=True``)."""
    import os

    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=retries, retry_exceptions=False)(_ray_call)
    pending: dict = {}
    try:
        for key, fn, args, marker in tasks:
            if marker and os.path.exists(marker):
                os.unlink(marker)
            pending[remote.remote(fn, args, timeout, marker)] = (key, marker)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            key, marker = pending.pop(ready[0])
            try:
                yield Outcome(key, True, ray.get(ready[0]))
            except ray.exceptions.RayTaskError as err:  # the task raised: deterministic, not retried
                cause = err.cause if isinstance(getattr(err, "cause", None), BaseException) else err
                yield Outcome(key, False, reason=_first_line(cause))
            except ray.exceptions.RayError as err:  # worker / node lost, OOM-killed, timed out: after the retries
                timed_out = bool(marker) and os.path.exists(marker)
                if timed_out:
                    os.unlink(marker)
                why = (f"timed out after {timeout:g} s (worker killed)" if timed_out
                       else f"{type(err).__name__}: {' '.join(str(err).split())[:200]}")
                yield Outcome(key, False, reason=why, attempts=retries + 1)
    finally:
        for ref in pending:  # Ctrl-C or an error: cancel what is still queued or running, at once
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort while stopping
                pass


# --- the executors behind one call ----------------------------------------------------------------------------

def map_outcomes(fn: Callable, tasks: list[tuple[str, tuple]], workers: int = 0, use_ray: bool = False,
                 ray_address: str | None = None, threads: int = 1, retries: int = 2, timeout: float | None = None,
                 markers: dict[str, str] | None = None, what: str = "sweep") -> Iterator[Outcome]:
    """``fn(*args)`` for every ``(key, args)``, yielding each :class:`Outcome` in completion order: in this
    process (``workers == 1`` or a single task, and no ``timeout``: an exception fails its task only; nothing
    survives this process's own death), on the process pool (:func:`run_tasks`) or on Ray (``use_ray``: a local
    instance or the cluster at ``ray_address``; :func:`run_ray_tasks`, ``markers[key]``: where a timed-out
    task's watchdog leaves its note). ``fn`` is a module-level function that sets its own torch threads, so
    every executor computes the same numbers. Used by the sweep; a whole-run audit can use it the same way."""
    if use_ray:
        try:
            import ray
        except ImportError:
            from gradleak.errors import UserError

            raise UserError(f"{what} --ray: the ray package is not installed; allowed: pip install "
                            "'gradleak[ray]'") from None
        started = False
        if not ray.is_initialized():
            ray.init(address=ray_address or None, include_dashboard=False, log_to_driver=False)
            started = True
        try:
            yield from run_ray_tasks([(key, fn, args, (markers or {}).get(key)) for key, args in tasks],
                                     retries=retries, timeout=timeout, num_cpus=threads or 1)
        finally:
            if started:
                ray.shutdown()
        return
    if (workers == 1 or len(tasks) <= 1) and not timeout:
        for key, args in tasks:
            try:
                yield Outcome(key, True, fn(*args))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as err:  # noqa: BLE001 - this task failed; the others go on
                yield Outcome(key, False, reason=_first_line(err))
        return
    yield from run_tasks([(key, fn, args) for key, args in tasks], workers=max(1, workers), retries=retries,
                         timeout=timeout)
