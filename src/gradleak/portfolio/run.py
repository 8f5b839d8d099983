"""Run a portfolio under one budget (the split rules are fixed and documented here).

* Closed-form attacks run first, outside the split (they take seconds); their time counts.
* A search is skipped when its share is under ``MIN_ITERATIONS`` of the slowest iteration measured so far on
  this victim (by an earlier search, or given by the caller), or under ``MIN_SHARE`` seconds: it could not
  run a useful schedule, and starting it would overrun the budget by at least one iteration.
* The search attacks then run in the portfolio's order; each gets an equal share of the time still left
  (left / number of searches not yet run), so time an attack saves — its schedule done early, a plateau
  (:mod:`gradleak.attacks.budget`) — goes to the ones after it. Each search starts R restarts pruned by
  successive halving; its iterations are fitted to its share, never above its preset's own schedule.
* With an iteration budget instead of a time budget every search runs that many iterations (reproducible).
* Anytime: Ctrl-C ends the running attack with its images so far (``stopped = "interrupted"``) and skips the
  rest; the caller writes what there is. An attack that refuses this observation (a one-line UserError) is
  recorded with its reason and the others still run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch import Tensor, nn

from gradleak.attacks.base import AuditPlan, Reconstruction
from gradleak.attacks.budget import Budget, budgeted
from gradleak.devices import run_attack
from gradleak.errors import UserError
from gradleak.fl.observation import Observation

MIN_SHARE = 0.5  # seconds: a search with less than this left is skipped ("no time left")
MIN_ITERATIONS = 3  # ... or with less than this many of the slowest iteration seen on this victim


@dataclass
class AttackRun:
    """One attack of the portfolio on one observation: what it returned (or why not), its time and iterations."""

    name: str
    reason: str
    closed_form: bool
    reconstruction: Reconstruction | None = None
    seconds: float = 0.0
    share: float | None = None  # seconds it was given (None: closed form, or an iteration budget)
    iterations: int = 0
    stopped: str | None = None  # completed | plateau | budget | interrupted | failed | skipped
    note: str | None = None


@dataclass
class PortfolioRun:
    """All attacks' runs on one observation; ``interrupted``: Ctrl-C ended it."""

    runs: list[AttackRun] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    seconds_per_iteration: float = 0.0  # the slowest search iteration measured (for the skip rule)

    @property
    def finished(self) -> list[AttackRun]:
        """The runs that returned images."""
        return [r for r in self.runs if r.reconstruction is not None]


def run_portfolio(obs: Observation, plans: list[AuditPlan], labels: Tensor | None, model: nn.Module,
                  seconds: float | None = None, iterations: int | None = None, seed: int = 0,
                  progress: bool = False, device: str = "cpu", seconds_per_iteration: float = 0.0) -> PortfolioRun:
    """Run ``plans`` on ``obs`` within ``seconds`` of wall-clock (or ``iterations`` per search attack);
    ``seconds_per_iteration``: an iteration's cost already measured on this victim (e.g. by the audited run,
    for its control)."""
    t0 = time.perf_counter()
    deadline = None if seconds is None else t0 + seconds
    out = PortfolioRun(seconds_per_iteration=seconds_per_iteration)
    searches_left = sum(1 for p in plans if not p.closed_form)
    for plan in plans:
        run = AttackRun(name=plan.attack.name, reason=plan.reason, closed_form=plan.closed_form)
        out.runs.append(run)
        if out.interrupted:
            run.stopped, run.note = "skipped", "interrupted before it started"
            continue
        budget = None
        if not plan.closed_form:
            if deadline is not None:
                left = deadline - time.perf_counter()
                run.share = left / max(searches_left, 1)
                searches_left -= 1
                if run.share < max(MIN_SHARE, MIN_ITERATIONS * out.seconds_per_iteration):
                    run.stopped, run.note = "skipped", ("no time left in the budget" if run.share < MIN_SHARE else
                                                        f"no time for {MIN_ITERATIONS} iterations (one took "
                                                        f"{out.seconds_per_iteration:.1f} s)")
                    continue
                budget = Budget(seconds=run.share, halving=True)
            else:
                budget = Budget(iterations=iterations, halving=True)
        t1 = time.perf_counter()
        try:
            with budgeted(budget):
                rec = run_attack(plan.attack, obs, labels, seed, model, progress, device)
        except UserError as err:
            run.stopped, run.note = "failed", str(err)
        except KeyboardInterrupt:
            run.stopped, run.note = "interrupted", "Ctrl-C before it returned images"
            out.interrupted = True
        else:
            run.reconstruction = rec
            run.iterations = rec.iterations
            if not plan.closed_form and rec.iterations:
                out.seconds_per_iteration = max(out.seconds_per_iteration, rec.seconds / rec.iterations)
            run.stopped = rec.stopped or "completed"
            out.interrupted = rec.stopped == "interrupted"
        run.seconds = time.perf_counter() - t1
    out.seconds = time.perf_counter() - t0
    return out
