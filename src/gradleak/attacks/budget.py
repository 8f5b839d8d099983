"""What a search may spend, and how it adapts inside that: a wall-clock or iteration budget, plateau early
stopping and successive halving over restarts — execution settings of one search, set by the caller around
the attack call (``with budgeted(Budget(...)): rec = attack(obs, ...)``), never attack options, so every search
preset (InvertGrad, the GIAS family, ROG, …) honours them without knowing of them.

Rules (fixed, documented; :mod:`gradleak.attacks.engine` applies them):

* **Iterations fitted to time** (``seconds``): after a short probe (``PROBE`` iterations) of each stage the
  remaining stages' iteration counts are scaled by one factor so that the measured seconds per iteration
  (× the restarts still alive) fill the time left — never above the preset's own counts, so a budget larger
  than the preset needs leaves time to the next attack. The schedule's milestones (lr ×0.1 at 3/8, 5/8, 7/8;
  cosine) follow the fitted counts, except that a multistep stage cut short of its planned iterations keeps
  its first lr to 5/8 and decays at 5/8, 3/4, 7/8 (``TRUNCATED``): a short search is still far from the
  images when the full schedule would decay (measured in docs/audit.md, part d). The length is fitted again
  at ``REFITS`` fractions of the stage, before its first decay. A hard deadline stops the search whatever
  the fit said.
* **Iteration budget** (``iterations``): the stages are scaled to this total instead — reproducible across
  machines (AutoAttack's fixed counts).
* **Plateau** (``plateau``): the best objective over the live restarts has improved by less than ``tol``
  (relative) over the last ``window`` iterations (``window`` = max(``min_window``, 1/16 of the stage)). In a
  multistep schedule the search jumps to the next lr milestone (the iterations of the phase left are saved);
  in its last phase, and in a cosine or constant schedule past half of the stage, it stops. A stage cut short
  by its time does not jump (it has fewer iterations than its schedule asks; saving some of them only hands
  time to searches that ranked lower); it still stops on a plateau in its last phase.
* **Successive halving** (``halving``, Adam stages with R > 1 restarts): at fixed fractions of the schedule
  the better half of the live restarts by the attack's own objective (the loss at that iteration; never the
  truth) is kept: with R = 2^m, halvings at n/2^(m+1), …, n/8, n/4. Four restarts cost ≈ 1.5× one
  (4·n/8 + 2·n/8 + 3n/4), sixteen ≈ 2×. Depth before breadth: when the first timing of a time budget shows
  that even one restart alone cannot run the planned schedule, the restart lowest by objective at that point
  goes on alone (restarts help only a search that can finish; measured in docs/audit.md, part d).
* **Interrupt**: Ctrl-C inside the search ends it where it is; the images so far are returned with
  ``stopped = "interrupted"`` and the caller decides what to do (the audit writes the best so far).
* **Turns** (``turn``): a search given a :class:`Turn` runs on its own clock — the seconds it has held the
  CPU, not the wall-clock — and hands the CPU back at an iteration boundary when its turn is used up, with its
  live restarts' images; it continues from exactly that state when given the CPU again, or ends there (as if
  its deadline had passed) when told to stop. This is what lets :mod:`gradleak.portfolio.run` race several
  searches and give the losers' time to the leader without restarting anyone. A turn granted as the last one
  (``final``) sets the search's horizon: when it is nearer than the time the search was fitted to, the search
  fits what is left of its schedule to it (a resumed search then finishes its schedule in the time left
  instead of being cut inside it).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import re
import statistics
import threading
import time
from typing import Callable
from dataclasses import dataclass, field

from gradleak.errors import UserError

PROBE = 3  # iterations timed at the start of each stage before its length is fitted
REFITS = (0.1, 0.25, 0.4, 0.55)  # fractions of a stage where its length is fitted again (before its first decay)
TRUNCATED = (5 / 8, 3 / 4, 7 / 8)  # lr milestones of a multistep stage that a time budget cut short


@dataclass(frozen=True)
class Plateau:
    """Plateau rule (see the module docstring): relative improvement below ``tol`` over ``window`` iterations."""

    tol: float = 1e-3
    min_window: int = 25


@dataclass
class Budget:
    """One search's budget. ``seconds``: wall-clock from the call (None: no time limit); ``iterations``: total
    over the stages (None: the preset's own); ``halving``: successive halving over the restarts."""

    seconds: float | None = None
    iterations: int | None = None
    plateau: Plateau | None = field(default_factory=Plateau)
    halving: bool = False
    deadline: float | None = None  # set when the search starts (on :meth:`now`'s clock)
    turn: "Turn | None" = None  # None: the search owns the CPU, its clock is the wall-clock

    def start(self) -> "Budget":
        """A copy with the deadline set from now."""
        d = None if self.seconds is None else self.now() + self.seconds
        return Budget(self.seconds, self.iterations, self.plateau, self.halving, d, self.turn)

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - self.now()

    def now(self, snapshot: Callable[[], object] | None = None) -> float:
        """The search's clock: ``time.perf_counter()``, or with a :class:`Turn` the seconds the search has held
        the CPU. The engine calls it with ``snapshot`` (its live images) once per iteration, before the step:
        there, and only there, a turn that is used up hands the CPU back (the call returns when it gets it
        again), and a stopped one returns ``inf`` (past any deadline: the search ends with its images)."""
        return time.perf_counter() if self.turn is None else self.turn.now(snapshot)


class Turn:
    """One search's share of the CPU when several take turns on it (:mod:`gradleak.portfolio.run`).

    The search runs in its own thread; only the thread holding the turn computes, so the searches never compete
    for the CPU and each one's clock (``used``: seconds on ``clock`` while it held the turn) is what it would
    have seen alone. The controller calls :meth:`grant` (run until ``used`` reaches ``until``) and
    :meth:`wait` (until the search hands the CPU back or ends); the search's thread calls :meth:`now` through
    :meth:`Budget.now`. Every turn runs at least one iteration (a search's first one-off setup cannot use up
    its probe before it has done anything). ``clock``: ``time.perf_counter`` (wall-clock) or ``time.thread_time`` (the thread's CPU
    time: unaffected by other processes' load on the machine).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.used = 0.0
        self.images = None  # the live restarts' images when it last handed the CPU back
        self.done = False  # the search's thread has ended
        self.started = False  # it was granted the CPU at least once
        self._cv = threading.Condition()
        self._since: float | None = None
        self._until = 0.0
        self._holding = False
        self._stop = False
        self._checks = 0  # iteration boundaries seen since the last grant
        self.horizon: float | None = None  # the clock reading where its last turn ends (a final grant's ``until``)

    # --- the search's side ---------------------------------------------------------------------------------
    def begin(self) -> bool:
        """Called first in the search's thread: wait for the first grant; False if stopped before it."""
        with self._cv:
            while not self._holding:
                self._cv.wait()
            self._since, self._checks = self.clock(), 0
            return not self._stop

    def now(self, snapshot: Callable[[], object] | None = None) -> float:
        if self._stop:
            return math.inf
        used = self.used + (self.clock() - self._since)
        if snapshot is None:
            return used
        self._checks += 1
        if used < self._until or self._checks < 2:  # every turn runs at least one iteration
            return used
        images = snapshot()  # not charged to the search: its clock stopped at ``used``
        with self._cv:
            self.used, self.images, self._holding = used, images, False
            self._cv.notify_all()
            while not self._holding:
                self._cv.wait()
            self._since, self._checks = self.clock(), 1
        return math.inf if self._stop else self.used

    def end(self) -> None:
        """Called last in the search's thread (also on an error): hands the CPU back for good."""
        with self._cv:
            if self._since is not None and self._holding:
                self.used += self.clock() - self._since
            self.done, self._holding = True, False
            self._cv.notify_all()

    # --- the controller's side -----------------------------------------------------------------------------
    def grant(self, until: float, stop: bool = False, final: bool = False) -> None:
        """Let the search run until its clock reads ``until`` (``stop``: only to end, returning its images;
        ``final``: no later turn will follow, so the search may fit what is left of its schedule to ``until``)."""
        with self._cv:
            self._until, self._stop, self._holding, self.started = until, self._stop or stop, True, True
            if final:
                self.horizon = until
            self._cv.notify_all()

    def wait(self) -> None:
        """Until the search hands the CPU back or ends (polling, so that Ctrl-C reaches the caller)."""
        with self._cv:
            while self._holding and not self.done:
                self._cv.wait(0.05)


_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("gradleak_budget", default=None)


@contextlib.contextmanager
def budgeted(budget: Budget | None):
    """Run the searches inside under ``budget`` (None: the presets' own schedules, unchanged)."""
    token = _CURRENT.set(budget)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current() -> Budget | None:
    """The budget the caller set around this search, or None."""
    return _CURRENT.get()


def halving_points(restarts: int) -> list[float]:
    """Fractions of the schedule at which the live restarts are halved (R → R/2 → … → 1)."""
    m = max(0, math.ceil(math.log2(restarts))) if restarts > 1 else 0
    return [2.0 ** (j - m - 2) for j in range(1, m + 1)]


def alive_after(restarts: int, fraction: float) -> int:
    """Restarts still running at ``fraction`` of the schedule under :func:`halving_points`."""
    r = restarts
    for f in halving_points(restarts):
        if fraction >= f:
            r = max(1, math.ceil(r / 2))
    return r


def relative_cost(restarts: int, halving: bool) -> float:
    """Cost of the whole schedule in units of one restart's full run."""
    if not halving or restarts <= 1:
        return float(restarts)
    pts = halving_points(restarts) + [1.0]
    cost, prev, r = 0.0, 0.0, restarts
    for p in pts:
        cost += r * (p - prev)
        prev, r = p, max(1, math.ceil(r / 2))
    return cost


_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class AuditBudget:
    """An audit's budget as the user gave it: wall-clock ``seconds`` or ``iterations`` per search attack."""

    seconds: float | None = None
    iterations: int | None = None
    text: str = ""

    def describe(self) -> str:
        if self.seconds is not None:
            s = self.seconds
            return f"{s / 60:g} min" if s >= 60 and s % 60 == 0 else f"{s:g} s"
        return f"{self.iterations} iterations per search attack"


def parse_budget(text: str | int | float, key: str = "--budget") -> AuditBudget:
    """``90s``, ``10m``, ``1.5h``, ``120`` (seconds) or ``500it`` (iterations per search attack); > 0."""
    raw = str(text).strip().lower()
    allowed = "a positive duration such as 90s, 10m, 1h or 120 (seconds), or an iteration count such as 500it"
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(it|s|sec|m|min|h|)", raw)
    if not m:
        raise UserError(f"{key}: got {str(text)!r}; allowed: {allowed}")
    value, unit = float(m.group(1)), m.group(2)
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{key}: got {str(text)!r}; allowed: {allowed}")
    if unit == "it":
        if value != int(value):
            raise UserError(f"{key}: got {str(text)!r}; allowed: {allowed}")
        return AuditBudget(iterations=int(value), text=raw)
    return AuditBudget(seconds=value * _UNITS[unit], text=raw)


def schedule_cost(done: int, total: int, restarts: int, halving: bool) -> float:
    """Σ over schedule positions g = done … total − 1 of the restarts alive at g (one restart-iteration = 1)."""
    if total <= done:
        return 0.0
    if not halving or restarts <= 1:
        return float(restarts * (total - done))
    cost, r, prev = 0.0, restarts, 0
    for p in halving_points(restarts) + [1.0]:
        end = total if p >= 1.0 else math.ceil(p * total)
        lo, hi = max(prev, done), max(end, done)
        cost += r * max(0, hi - lo)
        prev, r = end, max(1, math.ceil(r / 2))
    return cost


def seconds_per_iteration(took: list[float]) -> float:
    """The mean of the iteration times ``took``, leaving out those above 3× their median: the first iterations'
    one-off costs (allocations, lazy imports; ≈ 30× a LeNet iteration) would otherwise shrink the fitted length."""
    typical = statistics.median(took)
    kept = [t for t in took if t <= 3 * typical]
    return sum(kept) / len(kept)


def fit_scale(left_seconds: float, seconds_per_restart_iteration: float, done: int, lengths_done: int,
              remaining: list[int], restarts: int, halving: bool) -> float:
    """The factor f ≤ 1 for the remaining stage lengths (the current one first, ``done`` of its iterations run;
    ``lengths_done`` schedule positions before it) so that their cost fills ``left_seconds``."""
    if seconds_per_restart_iteration <= 0 or not remaining:
        return 1.0

    def cost(f: float) -> float:
        lengths = [max(done + 1, round(remaining[0] * f))] + [max(1, round(n * f)) for n in remaining[1:]]
        total = lengths_done + sum(lengths)
        return schedule_cost(lengths_done + done, total, restarts, halving) * seconds_per_restart_iteration

    if cost(1.0) <= left_seconds:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid) <= left_seconds else (lo, mid)
    return lo
