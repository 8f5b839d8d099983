"""What a search may spend, and how it adapts inside that: a wall-clock or iteration budget, plateau early
stopping and successive halving over restarts — execution settings of one search, set by the caller around
the attack call (``with budgeted(Budget(...)): rec = attack(obs, ...)``), never attack options, so every search
preset (InvertGrad, the GIAS family, ROG, …) honours them without knowing of them.

Rules (fixed, documented; :mod:`gradleak.attacks.engine` applies them):

* **Iterations fitted to time** (``seconds``): after a short probe (``PROBE`` iterations) of each stage the
  remaining stages' iteration counts are scaled by one factor so that the measured seconds per iteration
  (× the restarts still alive) fill the time left — never above the preset's own counts, so a budget larger
  than the preset needs leaves time to the next attack. The schedule's milestones (lr ×0.1 at 3/8, 5/8, 7/8;
  cosine) follow the fitted counts. A hard deadline stops the search whatever the fit said.
* **Iteration budget** (``iterations``): the stages are scaled to this total instead — reproducible across
  machines (AutoAttack's fixed counts).
* **Plateau** (``plateau``): the best objective over the live restarts has improved by less than ``tol``
  (relative) over the last ``window`` iterations (``window`` = max(``min_window``, 1/16 of the stage)). In a
  multistep schedule the search jumps to the next lr milestone (the iterations of the phase left are saved);
  in its last phase, and in a cosine or constant schedule past half of the stage, it stops.
* **Successive halving** (``halving``, Adam stages with R > 1 restarts): at fixed fractions of the schedule
  the better half of the live restarts by the attack's own objective (the loss at that iteration; never the
  truth) is kept: with R = 2^m, halvings at n/2^(m+1), …, n/8, n/4. Four restarts cost ≈ 1.5× one
  (4·n/8 + 2·n/8 + 3n/4), sixteen ≈ 2×.
* **Interrupt**: Ctrl-C inside the search ends it where it is; the images so far are returned with
  ``stopped = "interrupted"`` and the caller decides what to do (the audit writes the best so far).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import re
import time
from dataclasses import dataclass, field

from gradleak.errors import UserError

PROBE = 3  # iterations timed at the start of each stage before its length is fitted


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
    deadline: float | None = None  # set when the search starts (perf_counter seconds)

    def start(self) -> "Budget":
        """A copy with the deadline set from now."""
        d = None if self.seconds is None else time.perf_counter() + self.seconds
        return Budget(self.seconds, self.iterations, self.plateau, self.halving, d)

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.perf_counter()


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
