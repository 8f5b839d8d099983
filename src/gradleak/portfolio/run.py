"""Run a portfolio under one budget (the allocation rule is fixed and documented here; nothing is tuned per case).

* Closed-form attacks run first, outside the split (they take seconds); their time counts.
* **The race** (a time budget, two or more searches). Let S be the time left for the searches and A their
  number. Every search is started with the nominal budget L = S, as if it were the only one (its iteration
  count, lr milestones and restart halving are fitted to S by :mod:`gradleak.attacks.budget`), and they take
  turns on the CPU (:class:`gradleak.attacks.budget.Turn`: one computes at a time, each on its own clock):

  1. *probe*: each search, in the portfolio's order, runs until its own clock reads ``RACE_POINT``·L
     (1/16, and at least one iteration): long enough for the searches' objectives to have left their random
     starts, short enough that the losers cost little;
  2. *rank*: every search's current images (its live restarts at that moment) are scored by ONE common,
     truth-free criterion, computed the same way for every attack: the gradient distance between the update
     re-run at those images (the portfolio's labels) and the observed upload, with the distance the
     defenses' attacker view calls for (:func:`gradleak.defenses.estimate.choose_distance`: cosine on a
     plain upload) and no prior term — :func:`matching_distance`, the best over the live restarts;
  3. *continue*: the leader (lowest distance) resumes from where it stopped — same iterates, optimiser state
     and schedule, not a restart — with all the time left, and ends at its own fitted end, a plateau, or the
     budget. If it ends early, the next by rank resumes from its probe with the time left, and so on. A
     search ends with its images so far (a candidate for the per-image worst case) when the budget is spent.

  The losers' probes, (A − 1)·S/16, come out of the end of the leader's schedule: it is cut by the budget at
  the latest at 15/16 of its fitted schedule with two searches (7/8 with three), i.e. inside its last lr phase
  (×0.001 after 7/8) — and usually not at all, since fitted searches end before their time (the fit is
  conservative; plateaus). The equal split this rule replaces gave each search 1/2 (1/3) of S.
* A single search gets all of S (no race; on the ``cpu`` clock it runs as a race of one). A search is skipped
  when the time left is under ``MIN_SHARE`` seconds or under ``MIN_ITERATIONS`` of the slowest iteration
  measured on this victim (by an earlier search, or given by the caller): it could not run a useful schedule
  and would overrun the budget.
* With an iteration budget every search runs that many iterations, one after the other (reproducible; no race).
* Anytime: Ctrl-C ends the search that holds the CPU with its images so far (``stopped = "interrupted"``),
  ends the paused ones with theirs, and skips those not started; the caller writes what there is. An attack
  that refuses this observation (a one-line UserError) is recorded with its reason and the others still run.
"""
from __future__ import annotations

import contextvars
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from gradleak.attacks.base import AuditPlan, Reconstruction
from gradleak.attacks.budget import Budget, Turn, budgeted
from gradleak.devices import run_attack
from gradleak.errors import UserError
from gradleak.fl.observation import Observation

MIN_SHARE = 0.5  # seconds: a search with less than this left is skipped ("no time left")
MIN_ITERATIONS = 3  # ... or with less than this many of the slowest iteration seen on this victim
RACE_POINT = 1 / 16  # the probe: this fraction of the search time S, on each search's own clock
Clock = Literal["wall", "cpu"]
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


@dataclass
class AttackRun:
    """One attack of the portfolio on one observation: what it returned (or why not), its time and iterations."""

    name: str
    reason: str
    closed_form: bool
    reconstruction: Reconstruction | None = None
    seconds: float = 0.0  # the time it held the CPU (its own clock in a race)
    share: float | None = None  # the nominal budget it was fitted to (None: closed form, or an iteration budget)
    iterations: int = 0
    stopped: str | None = None  # completed | plateau | budget | interrupted | failed | skipped
    note: str | None = None
    race_distance: float | None = None  # the common criterion at the probe (lower: better)
    race_rank: int | None = None  # 1 = the leader


@dataclass
class PortfolioRun:
    """All attacks' runs on one observation; ``interrupted``: Ctrl-C ended it."""

    runs: list[AttackRun] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    seconds_per_iteration: float = 0.0  # the slowest search iteration measured (for the skip rule)
    race: dict | None = None  # the race's numbers: S, L, the probe, the order

    @property
    def finished(self) -> list[AttackRun]:
        """The runs that returned images."""
        return [r for r in self.runs if r.reconstruction is not None]


def matching_distance(obs: Observation, model: nn.Module, labels: Tensor, images: Tensor) -> float:
    """The race's common criterion: d(U_θ(x, y), g_obs) for images ``x`` ((R,) B, C, H, W; the best over R),
    with d the distance of the observation's attacker view (cosine on a plain upload), no prior term — the
    same function of the images for every attack, and never of the private images."""
    from gradleak.attacks.objectives import DISTANCES
    from gradleak.defenses.estimate import choose_distance
    from gradleak.fl.secagg import observed_rerun

    delta = obs.as_delta()
    names = list(delta.parameters)
    x = images if images.dim() == 5 else images[None]
    x = x.to(torch.float32).clamp(0, 1)
    y = labels.expand(x.shape[0], *labels.shape)
    with torch.enable_grad():
        trial = observed_rerun(model, delta, x, y)
    dist = DISTANCES[choose_distance(obs)]([trial[n].detach() for n in names], [delta.update[n] for n in names])
    return float(torch.nan_to_num(dist, nan=math.inf).min())


class _Worker:
    """One search in its own thread, taking turns (:class:`Turn`)."""

    def __init__(self, plan: AuditPlan, run: AttackRun, budget: Budget, obs, labels, seed, model, progress, device):
        self.plan, self.run, self.turn = plan, run, budget.turn
        self.rec: Reconstruction | None = None
        self.error: BaseException | None = None
        self.dropped = False  # ranked out by the race: ended with its images so far

        def body():
            try:
                if not self.turn.begin():
                    return
                with budgeted(budget):
                    self.rec = run_attack(plan.attack, obs, labels, seed, model, progress, device)
            except BaseException as err:  # noqa: BLE001 - reported by the controller (UserError: "failed")
                self.error = err
            finally:
                self.turn.end()

        context = contextvars.copy_context()  # the caller's execution settings (backend) hold in the thread too
        self.thread = threading.Thread(target=context.run, args=(body,), name=f"gradleak-{plan.attack.name}",
                                       daemon=True)
        self.thread.start()

    def give(self, until: float, stop: bool = False, final: bool = False) -> None:
        """Let it run until its clock reads ``until`` and wait for it to hand the CPU back (or end)."""
        self.turn.grant(until, stop, final)
        self.turn.wait()
        if stop or self.turn.done:
            self.thread.join()


def run_portfolio(obs: Observation, plans: list[AuditPlan], labels: Tensor | None, model: nn.Module,
                  seconds: float | None = None, iterations: int | None = None, seed: int = 0,
                  progress: bool = False, device: str = "cpu", seconds_per_iteration: float = 0.0,
                  clock: Clock = "wall") -> PortfolioRun:
    """Run ``plans`` on ``obs`` within ``seconds`` (or ``iterations`` per search attack); ``seconds_per_iteration``:
    an iteration's cost already measured on this victim (e.g. by the audited run, for its control).
    ``clock``: ``wall`` (the budget is wall-clock) or ``cpu`` (seconds of CPU time of the searches and
    closed forms — what a benchmark on a loaded machine compares; one torch thread)."""
    tick = CLOCKS[clock]
    t0, c0 = time.perf_counter(), tick()
    out = PortfolioRun(seconds_per_iteration=seconds_per_iteration)
    spent_cpu = [0.0]  # cpu clock: the searches' own time plus the main thread's

    def left() -> float:
        if seconds is None:
            return math.inf
        if clock == "wall":
            return seconds - (time.perf_counter() - t0)
        return seconds - (tick() - c0) - spent_cpu[0]

    searches: list[tuple[AuditPlan, AttackRun]] = []
    for plan in plans:
        run = AttackRun(name=plan.attack.name, reason=plan.reason, closed_form=plan.closed_form)
        out.runs.append(run)
        if not plan.closed_form:
            searches.append((plan, run))
            continue
        if out.interrupted:
            run.stopped, run.note = "skipped", "interrupted before it started"
            continue
        _run_inline(plan, run, out, None, obs, labels, seed, model, progress, device)
    if seconds is None or (len(searches) <= 1 and clock == "wall") or out.interrupted:
        for plan, run in searches:  # one after the other: an iteration budget, or one search with all the time
            if out.interrupted:
                run.stopped, run.note = "skipped", "interrupted before it started"
                continue
            budget = Budget(iterations=iterations, halving=True)
            if seconds is not None:
                run.share = left()
                if _skip(run, run.share, out):
                    continue
                budget = Budget(seconds=run.share, halving=True)
            _run_inline(plan, run, out, budget, obs, labels, seed, model, progress, device)
    else:
        _race(searches, out, left, tick, spent_cpu if clock == "cpu" else None, obs, labels, seed, model,
              progress, device)
    out.seconds = time.perf_counter() - t0
    return out


def _skip(run: AttackRun, share: float, out: PortfolioRun) -> bool:
    if share >= max(MIN_SHARE, MIN_ITERATIONS * out.seconds_per_iteration):
        return False
    run.stopped, run.note = "skipped", ("no time left in the budget" if share < MIN_SHARE else
                                        f"no time for {MIN_ITERATIONS} iterations (one took "
                                        f"{out.seconds_per_iteration:.1f} s)")
    return True


def _finish(run: AttackRun, rec: Reconstruction, out: PortfolioRun, seconds: float) -> None:
    run.reconstruction, run.iterations, run.seconds = rec, rec.iterations, seconds
    if not run.closed_form and rec.iterations:
        out.seconds_per_iteration = max(out.seconds_per_iteration, seconds / rec.iterations)
    run.stopped = rec.stopped or "completed"


def _run_inline(plan, run, out, budget, obs, labels, seed, model, progress, device) -> None:
    """One attack in this thread (closed forms; iteration budgets; a lone search)."""
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
        _finish(run, rec, out, time.perf_counter() - t1)
        out.interrupted = rec.stopped == "interrupted"
    run.seconds = time.perf_counter() - t1


def _may_run_again(w, workers, order, current) -> bool:
    """Whether ``w`` comes after the search now given the CPU (it resumes if that one ends early)."""
    return order.index(workers.index(w)) > order.index(current)


def _race(searches, out: PortfolioRun, left, tick, spent_cpu, obs, labels, seed, model, progress, device) -> None:
    """The race of the module docstring: probe, rank by :func:`matching_distance`, continue the leader."""
    A = len(searches)
    S = left()
    L = S  # each fitted as if alone; the losers' probes come out of the leader's last, lowest-lr iterations
    probe = RACE_POINT * L
    out.race = {"seconds": round(S, 3), "nominal": round(L, 3), "probe": round(probe, 3), "order": [],
                "turns": []}  # [attack, seconds given, seconds it ran, ended], in the order the CPU was given
    if _skip(searches[0][1], S, out):
        for _, run in searches[1:]:
            run.stopped, run.note = "skipped", searches[0][1].note
        return
    workers: list[_Worker] = []
    for plan, run in searches:
        run.share = L
        budget = Budget(seconds=L, halving=True, turn=Turn(tick))
        workers.append(_Worker(plan, run, budget, obs, labels, seed, model, progress, device))

    def account(w: _Worker, before: float) -> None:
        if spent_cpu is not None:
            spent_cpu[0] += w.turn.used - before

    def give(w: _Worker, until: float, stop: bool = False, final: bool = False) -> None:
        before = w.turn.used
        try:
            w.give(until, stop, final)
        finally:
            account(w, before)
            if not stop:
                out.race["turns"].append([w.run.name, round(until - before, 3), round(w.turn.used - before, 3),
                                          w.turn.done])

    try:
        distance: dict[int, float] = {}
        for k, w in enumerate(workers):  # 1. probe, each on its own clock
            room = left()
            if room < MIN_SHARE:
                break
            give(w, min(probe, room))
            images = w.rec.images if w.turn.done and w.rec is not None else w.turn.images
            if images is not None and labels is not None:
                distance[k] = matching_distance(obs, model, labels, images)
            w.run.race_distance = distance.get(k)
        # 2. rank (never-probed ones last, in the portfolio's order); 3. continue by rank while time is left
        order = sorted(range(A), key=lambda k: (k not in distance, distance.get(k, math.inf), k))
        for rank, k in enumerate(order, 1):
            workers[k].run.race_rank = rank if k in distance else None
        out.race["order"] = [workers[k].run.name for k in order]
        for k in order:  # the leader first with all the time left; if it ends early, the next by rank resumes
            w = workers[k]
            if w.turn.done:
                continue
            for j in order:  # the ones that will not run again end before it (their closing work is counted)
                other = workers[j]
                if other is not w and not other.turn.done and not _may_run_again(other, workers, order, k):
                    other.dropped = True
                    give(other, other.turn.used, stop=True)
            room = left()
            if room < max(MIN_SHARE, MIN_ITERATIONS * out.seconds_per_iteration if w.turn.started else 0.0):
                break
            give(w, w.turn.used + room, final=True)  # all the time left: it may fit its schedule to it
            if w.turn.done and w.rec is not None and w.rec.iterations:
                out.seconds_per_iteration = max(out.seconds_per_iteration, w.turn.used / w.rec.iterations)
    except KeyboardInterrupt:
        out.interrupted = True
    # every search still alive ends now, with its images so far (or, never started, with nothing)
    for w in workers:
        if w.turn.done:
            continue
        started = w.turn.started
        w.dropped = not out.interrupted and w.run.race_rank not in (None, 1)
        try:
            give(w, w.turn.used, stop=True)
        except KeyboardInterrupt:  # a second Ctrl-C while they end: give up waiting
            out.interrupted = True
            break
        if not started:
            w.run.stopped = "skipped"
            w.run.note = "interrupted before it started" if out.interrupted else "no time left in the budget"
    for w in workers:
        if w.run.stopped == "skipped":
            continue
        if isinstance(w.error, UserError):
            w.run.stopped, w.run.note = "failed", str(w.error)
        elif isinstance(w.error, KeyboardInterrupt):
            w.run.stopped, w.run.note = "interrupted", "Ctrl-C before it returned images"
        elif w.error is not None:
            raise w.error
        elif w.rec is not None:
            _finish(w.run, w.rec, out, w.turn.used)
            if w.dropped and w.rec.stopped == "budget":
                w.run.note = (f"race: ranked {w.run.race_rank} of {A} by the matching distance after its probe; "
                              "ended with its images so far")
            elif out.interrupted and w.rec.stopped == "budget":
                w.run.stopped = "interrupted"
        w.run.seconds = w.turn.used
