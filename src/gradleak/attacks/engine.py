"""The one search engine every optimisation attack is a preset of.

    x̂ = argmin_{v}  d( U_θ(P(v), y), g_obs ) + Σ_k λ_k R_k(P(v))

where P is a parametrization of the images (pixels, generator latents, …), U_θ the client's own update
computation re-run differentiably (:func:`gradleak.fl.client.batched_update`), d a gradient distance and
R_k image priors. The search runs a schedule of stages (each with its parametrization, optimiser,
iterations, learning-rate schedule) over R restarts optimised together as one batched problem; the
restart with the lowest final objective is returned (Geiping et al., 2020; GIAS Algorithm 1).

How d and its gradient are computed is not decided here: the step comes from a step backend
(:mod:`gradleak.backends`) chosen by the execution setting (:func:`gradleak.backends.policy.choose`); the
search only asks it for values and gradients, and, for a stage that fits, for a fused Adam iteration.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from gradleak.attacks.base import Reconstruction
from gradleak.attacks.budget import (PROBE, REFITS, TRUNCATED, Budget, current as current_budget, fit_scale,
                                     halving_points, seconds_per_iteration)
from gradleak.attacks.objectives import DISTANCES, total_variation
from gradleak.attacks.parametrizations import Parametrization, Pixels
from gradleak.backends.base import MatchingProblem, Step
from gradleak.devices import generator
from gradleak.fl.observation import Observation, validate_against

Regularizer = Callable[[Tensor, "SearchContext"], Tensor]  # images (R,B,C,H,W) -> (R,)


@dataclass
class Stage:
    """One stage of the schedule. ``schedule="multistep"`` decays lr ×0.1 at 3/8, 5/8, 7/8 of the
    iterations (InvertGrad, GIAS appendix G); "cosine" anneals to 0 (ROG); "constant" keeps it."""

    name: str
    parametrization: Parametrization
    iterations: int
    lr: float
    optimizer: Literal["adam", "lbfgs"] = "adam"
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    signed: bool = False  # use sign of the gradient (InvertGrad's signed Adam)
    line_search: Literal["strong_wolfe"] | None = None  # L-BFGS only


@dataclass
class Objective:
    """d(U(x), g_obs) + tv·TV(x) + Σ weight·regularizer(x). ``distance`` names an entry of DISTANCES
    (or is a callable); ``observed_view`` maps the trial upload to what the server observed (e.g. a
    defense's attacker-side model such as a sparsity mask)."""

    distance: str | Callable = "cosine"
    tv: float = 0.0
    regularizers: list[tuple[float, Regularizer]] = field(default_factory=list)
    trial_view: Callable[[list[Tensor]], list[Tensor]] | None = None


@dataclass
class SearchContext:
    """What the objective needs: the victim, θ_0, the observed upload, the protocol; ``step`` the backend's
    step computing the matching term (None: autograd, :class:`gradleak.backends.loop.LoopStep`)."""

    model: nn.Module
    obs: Observation
    names: list[str]
    observed: list[Tensor]
    step: Step | None = None


def matching_problem(ctx: SearchContext, objective: Objective, soft: bool) -> MatchingProblem:
    """The gradient-matching term of ``objective`` on ``ctx``, as the step backends take it."""
    dist = DISTANCES[objective.distance] if isinstance(objective.distance, str) else objective.distance
    return MatchingProblem(ctx.model, ctx.obs, ctx.observed, dist, objective.trial_view, soft)


def _step(ctx: SearchContext, objective: Objective, labels: Tensor) -> Step:
    if ctx.step is not None:
        return ctx.step
    from gradleak.backends.loop import LoopStep

    return LoopStep(matching_problem(ctx, objective, labels.dim() == 3))


def lr_scheduler(opt, stage: Stage):
    """The learning-rate schedule named by ``stage.schedule`` (see :class:`Stage`); None for constant."""
    n = stage.iterations
    if stage.schedule == "multistep":
        ms = sorted({max(1, int(n * f)) for f in (3 / 8, 5 / 8, 7 / 8)})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=0.1)
    if stage.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(n, 1))
    return None


def objective_value(ctx: SearchContext, objective: Objective, images: Tensor, labels: Tensor,
                    eager: bool = False) -> Tensor:
    """The per-restart objective (R,) for images (R,B,C,H,W) and labels (R,B) or soft (R,B,K).
    ``eager``: never compile for this call (a one-off evaluation)."""
    return _step(ctx, objective, labels).matching(images, labels, eager) + _regularizer_value(objective, images, ctx)


def _regularizer_value(objective: Objective, images: Tensor, ctx: SearchContext) -> Tensor | float:
    """Σ_k λ_k R_k(images), per restart (R,), or 0.0 when there is none."""
    loss: Tensor | float = 0.0
    if objective.tv:
        loss = loss + objective.tv * total_variation(images)
    for weight, reg in objective.regularizers:
        loss = loss + weight * reg(images, ctx)
    return loss


def _value_and_grads(ctx: SearchContext, objective: Objective, images: Tensor, labels: Tensor,
                     variables: list[Tensor]) -> tuple[Tensor, tuple]:
    """The per-restart objective (R,) and its gradient w.r.t. ``variables``, from the context's step."""
    return _step(ctx, objective, labels).value_and_grads(images, labels, variables,
                                                         lambda x: _regularizer_value(objective, x, ctx))


def search(
    obs: Observation,
    stages: list[Stage],
    objective: Objective,
    labels: Tensor | None,
    restarts: int = 1,
    seed: int = 0,
    model: nn.Module | None = None,
    backend: str | None = None,
    progress: bool = True,
    name: str = "",
) -> Reconstruction:
    """Run the staged search. ``labels``: known labels (B,), or None to learn soft labels jointly (DLG).

    Adam stages optimise all restarts as one batched problem (per-element updates keep them independent);
    L-BFGS couples variables through its line search, so L-BFGS schedules run one restart at a time.
    ``backend``: the execution setting for this search (:mod:`gradleak.backends.setting`; None: the one in
    force); the backend that ran is ``Reconstruction.backend``. Under a budget (:mod:`gradleak.attacks.budget`)
    the schedule is fitted to it, restarts are halved and Ctrl-C ends the search with the images so far."""
    from gradleak.backends.policy import choose

    obs = obs.as_delta()  # the upload as θ_0 − θ_τ, whatever convention the client stated
    if model is None:
        model = obs.build_model()
    else:
        validate_against(model, obs)
    names = list(obs.parameters)
    ctx = SearchContext(model, obs, names, [obs.update[n] for n in names])
    gen = generator(seed)
    chunk = 1 if any(s.optimizer == "lbfgs" for s in stages) else restarts
    t0 = time.perf_counter()
    budget = current_budget()
    if budget is not None:
        budget = budget.start()
    total = sum(s.iterations for s in stages) * math.ceil(restarts / chunk)
    ctx.step, timing = choose(matching_problem(ctx, objective, labels is None), backend, chunk, labels, total,
                              budgeted=budget is not None)
    bar = tqdm(total=total, desc=name or "attack", disable=not progress, leave=False, dynamic_ncols=True)
    results, trace = [], []
    run = BudgetedRun(budget)
    for first in range(0, restarts, chunk):
        share = math.inf if budget is None else budget.left() / math.ceil((restarts - first) / chunk)
        results.append(_run_chunk(ctx, stages, objective, labels, min(chunk, restarts - first), gen, bar, trace,
                                  first, run, share))
        if run.stopped in ("interrupted", "budget"):
            break
    bar.close()
    images = torch.cat([r[0] for r in results])
    losses = torch.cat([r[1] for r in results])
    lab = torch.cat([r[2] for r in results])
    best = int(torch.nan_to_num(losses, nan=math.inf).argmin())
    planned = budget is None
    return Reconstruction(
        images=images[best], all_images=images, losses=losses, best_restart=best, labels=lab[best],
        trace=sorted(trace, key=lambda r: (r["iteration"], r["restart"])), seconds=time.perf_counter() - t0,
        iterations=sum(s.iterations for s in stages) if planned else run.iterations, attack=name,
        stopped=None if planned else run.stopped, halving=None if planned else run.halvings,
        backend=ctx.step.name, backend_timing={**timing, **ctx.step.timings()} or None,
        distance=objective.distance if isinstance(objective.distance, str) else None,
    )


def _fused_stage(ctx: SearchContext, objective: Objective, stage: Stage, soft: bool):
    """The step's fused Adam iteration for a stage that fits it — pixels, Adam, known labels, no regularizer
    but TV — where the step has one (``compiled``), else None (the stage runs the optimiser loop)."""
    if soft or objective.regularizers or stage.optimizer != "adam" or type(stage.parametrization) is not Pixels:
        return None
    tv = objective.tv
    return ctx.step.fused_adam(stage.signed, stage.parametrization.box,
                               (lambda x: tv * total_variation(x)) if tv else None)


def stage_lrs(stage: Stage) -> list[float]:
    """The learning rate of each iteration of an Adam stage under its schedule (torch's schedulers)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=stage.lr)
    sched = lr_scheduler(opt, stage)
    lrs = []
    for _ in range(stage.iterations):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradient: changes nothing, but the scheduler expects a step before its own
        if sched is not None:
            sched.step()
    return lrs


def _run_chunk(ctx: SearchContext, stages: list[Stage], objective: Objective, labels: Tensor | None, R: int, gen,
               bar, trace: list, first: int, run: "BudgetedRun", share: float):
    """Restarts ``first`` … ``first + R − 1`` through every stage; returns (images, final objective, labels).

    Without a budget (``run.budget`` None) each stage runs its planned iterations under its schedule (torch's
    schedulers, :func:`lr_scheduler`), fused where the step offers it. Under a budget the rules of
    :mod:`gradleak.attacks.budget` apply: stage lengths fitted to the time left (``share`` of it for this chunk)
    or scaled to the iteration budget, plateau jumps/stops, successive halving, and the deadline or Ctrl-C ending
    the search with the images so far."""
    budget = run.budget
    obs = ctx.obs
    B, shape = obs.num_images, tuple(obs.image_shape)
    K = obs.model_spec["num_classes"]
    deadline = math.inf if budget is None else min(budget.deadline or math.inf, budget.now() + share)
    lengths = [s.iterations for s in stages]
    if budget is not None and budget.iterations is not None:
        scale = budget.iterations / max(sum(lengths), 1)
        lengths = [max(1, round(n * scale)) for n in lengths]
    base = list(lengths)  # the fit never goes above these (the preset's schedule, or the iteration budget's)
    timed = budget is not None and budget.seconds is not None and budget.iterations is None
    can_halve = (budget is not None and budget.halving and R > 1 and all(s.optimizer == "adam" for s in stages)
                 and all(type(s.parametrization).select is not Parametrization.select for s in stages))
    points = halving_points(R) if can_halve else []
    plateau = None if budget is None else budget.plateau
    alive = torch.arange(R)
    label_var = torch.randn(R, B, K, generator=gen).requires_grad_() if labels is None else None  # DLG: soft labels
    prev, pos0 = None, 0
    last = torch.full((R,), math.inf)

    def current_labels():
        if label_var is not None:
            return F.softmax(label_var, -1)
        return labels.expand(len(alive), *labels.shape)

    def progress(i: int, n: int, loss: Tensor, stage: Stage) -> None:
        bar.update(1)
        if i % 10 == 0 or i == n - 1:
            bar.set_postfix(stage=stage.name, loss=f"{float(loss.min()):.4g}")

    for si, stage in enumerate(stages):
        variables = stage.parametrization.start(len(alive), B, shape, prev, gen)
        fused = _fused_stage(ctx, objective, stage, label_var is not None) if budget is None else None
        if fused is not None:
            x, losses = fused.run_stage(stage.parametrization.x, stage_lrs(stage), current_labels(),
                                        lambda i, loss: progress(i, stage.iterations, loss, stage))
            stage.parametrization.x = x.detach().requires_grad_()
            _record(trace, stage, [(pos0 + i, loss, alive) for i, loss in enumerate(losses)], first)
            pos0 += stage.iterations
            prev = stage.parametrization.images().detach()
            continue
        if label_var is not None:
            variables = variables + [label_var]
        if stage.optimizer == "lbfgs":
            opt = torch.optim.LBFGS(variables, lr=stage.lr, line_search_fn=stage.line_search)
        else:
            opt = torch.optim.Adam(variables, lr=stage.lr)
        sched = lr_scheduler(opt, stage) if budget is None else None  # planned: torch's scheduler; else fitted
        last = torch.full((len(alive),), math.inf)

        def closure():
            nonlocal last
            opt.zero_grad(set_to_none=True)
            per, grads = _value_and_grads(ctx, objective, stage.parametrization.images(), current_labels(), variables)
            for v, g in zip(variables, grads):
                v.grad = torch.zeros_like(v) if g is None else (g.sign() if stage.signed else g)
            last = per
            return per.sum()

        n, i, ran, truncated = lengths[si], 0, 0, False
        stamp, took, refit, refits_at = None, [], True, list(REFITS)  # took: seconds per restart-iteration
        best_hist: list[float] = []
        rows: list[tuple[int, Tensor, Tensor]] = []  # (position, losses of the restarts alive, their ids)
        while i < n:
            if budget is not None and budget.now(lambda: _live_images(stage)) >= deadline:  # a turn may hand
                run.stopped = "budget"  # the CPU back here (budget.Turn)
                break
            horizon = None if budget is None or budget.turn is None else budget.turn.horizon
            if timed and horizon is not None and horizon < deadline - 1e-9:  # its last turn ends sooner than
                deadline, refit = horizon, True  # it was fitted to: fit what is left to that (budget.Turn)
            if budget is not None:  # the schedule of the fitted length
                truncated = timed and n < base[si]
                for g in opt.param_groups:
                    g["lr"] = _lr_at(stage, i, n, truncated)
            try:
                opt.step(closure)
                stage.parametrization.project()
            except KeyboardInterrupt:
                if budget is None:
                    raise
                run.stopped = "interrupted"
                break
            if sched is not None:
                sched.step()
            loss_now = last.detach()
            if stage.optimizer == "lbfgs" and not torch.isfinite(loss_now).all():
                bar.update(n - i)
                break
            rows.append((pos0 + i, loss_now, alive))
            progress(i, n, loss_now, stage)
            i, ran = i + 1, ran + 1
            run.iterations += 1
            if timed:
                clock = budget.now()
                if ran > 1 and stamp is not None:  # the first iteration (and the one after a halving) is not timed
                    took.append((clock - stamp) / len(alive))
                stamp = clock
                if refit and len(took) >= PROBE:
                    per_it = seconds_per_iteration(took)
                    alone = fit_scale(deadline - clock, per_it, i, pos0, base[si:], 1, False) if points else 1.0
                    if len(alive) > 1 and alone < 1:
                        # depth before breadth (budget module, "Successive halving"): the time cannot pay the
                        # planned schedule even for one restart, so the one lowest by objective now goes on alone
                        keep = torch.argsort(torch.nan_to_num(loss_now, nan=math.inf))[:1]
                        run.halvings.append({"iteration": pos0 + i, "kept": [first + int(alive[keep])],
                                             "why": "the time left cuts even one restart short"})
                        variables, opt, label_var = _select(stage, variables, opt, keep, len(alive), label_var)
                        alive, points = alive[keep], []
                        loss_now, last = loss_now[keep], last[keep]
                        stamp, took = None, []  # one restart's iterations are timed afresh
                    else:
                        f = fit_scale(deadline - budget.now() - 2 * per_it * len(alive), per_it, i, pos0,
                                      base[si:], R if points else len(alive), bool(points))
                        lengths = lengths[:si] + [max(i + 1, round(base[si] * f))] + [max(1, round(m * f))
                                                                                      for m in base[si + 1:]]
                        n = lengths[si]
                        refit = False
                if not refit and refits_at and i >= refits_at[0] * n:  # refit on a longer measurement
                    refits_at.pop(0)
                    refit = i < (_milestones(stage, n, truncated) or [n])[0]
            # successive halving at fixed fractions of the (fitted) schedule
            pos, total = pos0 + i, sum(lengths)
            while points and len(alive) > 1 and pos >= points[0] * total:
                points.pop(0)
                k = max(1, math.ceil(len(alive) / 2))
                keep = torch.argsort(torch.nan_to_num(loss_now, nan=math.inf))[:k].sort().values
                run.halvings.append({"iteration": pos, "kept": [first + int(alive[j]) for j in keep]})
                variables, opt, label_var = _select(stage, variables, opt, keep, len(alive), label_var)
                alive = alive[keep]
                loss_now, last = loss_now[keep], last[keep]
                best_hist, stamp, took, refit = [], None, [], True
            if plateau is None:
                continue
            # plateau: jump to the next milestone, or stop in the last phase / second half
            best_hist.append(float(torch.nan_to_num(loss_now, nan=math.inf).min()))
            window = max(plateau.min_window, n // 16)
            if len(best_hist) > window:
                old, now = min(best_hist[:-window]), min(best_hist)
                if math.isfinite(old) and old - now <= plateau.tol * abs(old):
                    ahead = [m for m in _milestones(stage, n, truncated) if m > i]
                    if ahead and truncated:
                        pass  # cut short by its time, the search needs every iteration it has: no jump (budget)
                    elif ahead:
                        run.plateaus.append({"iteration": pos0 + i, "action": f"jump to {pos0 + ahead[0]}"})
                        i, best_hist = ahead[0], []
                    elif stage.schedule == "multistep" or i >= n // 2:
                        run.plateaus.append({"iteration": pos0 + i, "action": "stop stage"})
                        if si == len(stages) - 1 and run.stopped == "completed":
                            run.stopped = "plateau"
                        break
        _record(trace, stage, rows, first)
        lengths[si] = i
        pos0 += i if budget is not None else stage.iterations  # a plain schedule keeps its positions
        with torch.no_grad():
            prev = stage.parametrization.images().detach()
        if run.stopped in ("interrupted", "budget"):
            break
    if run.stopped in ("budget", "interrupted"):  # out of time: rank by the last step's objective, no extra pass
        final = last.detach() if torch.isfinite(last).all() else torch.zeros(len(alive))
    else:  # the final objective ranks the restarts; it needs autograd (the update is itself a gradient)
        final = objective_value(ctx, objective, prev, current_labels(), eager=ctx.step.one_off_eager).detach()
    imgs = prev.detach().clamp(0, 1)
    lab = current_labels().detach()
    if lab.dim() == 3:
        lab = lab.argmax(-1)
    return imgs, final, lab


def _record(trace: list, stage: Stage, rows: list[tuple[int, Tensor, Tensor]], first: int) -> None:
    """Append a stage's per-iteration losses (position, losses (k,), restart ids (k,)) to the trace as rows;
    converted once per stage, not per iteration (each conversion waits for the device)."""
    if not rows:
        return
    if all(r[2] is rows[0][2] for r in rows):  # no halving in this stage: one table
        ids, table = rows[0][2].tolist(), torch.stack([r[1] for r in rows]).tolist()
        trace.extend({"iteration": pos, "stage": stage.name, "restart": first + r, "loss": v}
                     for (pos, _, _), values in zip(rows, table) for r, v in zip(ids, values))
        return
    for pos, losses, ids in rows:
        trace.extend({"iteration": pos, "stage": stage.name, "restart": first + int(r), "loss": v}
                     for r, v in zip(ids.tolist(), losses.tolist()))


# --- budgeted search (gradleak.attacks.budget) ------------------------------------------------------------

@dataclass
class BudgetedRun:
    """The state of one search under ``budget`` (None: the planned schedule): what ran and why it ended
    (``completed`` | ``plateau`` | ``budget`` | ``interrupted``), and the successive-halving decisions
    (schedule position, restarts kept)."""

    budget: Budget | None
    iterations: int = 0
    stopped: str = "completed"
    halvings: list[dict] = field(default_factory=list)
    plateaus: list[dict] = field(default_factory=list)


def _milestones(stage: Stage, n: int, truncated: bool = False) -> list[int]:
    """lr ×0.1 milestones of a multistep stage of length n: 3/8, 5/8, 7/8; for a stage a time budget cut short
    of its planned iterations (``truncated``) 5/8, 3/4, 7/8 — see :data:`gradleak.attacks.budget.TRUNCATED`."""
    if stage.schedule != "multistep":
        return []
    return sorted({max(1, int(n * f)) for f in (TRUNCATED if truncated else (3 / 8, 5 / 8, 7 / 8))})


def _lr_at(stage: Stage, i: int, n: int, truncated: bool = False) -> float:
    """The stage's schedule (:func:`lr_scheduler`) as a function of the position i in a stage of length n."""
    if stage.schedule == "multistep":
        return stage.lr * 0.1 ** sum(1 for m in _milestones(stage, n, truncated) if i >= m)
    if stage.schedule == "cosine":
        return stage.lr * 0.5 * (1 + math.cos(math.pi * min(i, n) / max(n, 1)))
    return stage.lr


def _row_index(v: Tensor, keep: Tensor, R: int) -> Tensor:
    """Rows of a restart-major variable (leading dimension R, or R·k) that belong to the restarts ``keep``."""
    per = v.shape[0] // R
    return (keep[:, None] * per + torch.arange(per)[None]).reshape(-1)


def _select(stage: Stage, variables: list[Tensor], opt, keep: Tensor, R: int, label_var):
    """Keep the restarts ``keep``: new variables from the parametrization, Adam state sliced to them."""
    new = stage.parametrization.select(keep)
    if label_var is not None:
        new = new + [label_var.detach()[keep].clone().requires_grad_()]
    new_opt = torch.optim.Adam(new, lr=opt.param_groups[0]["lr"])
    for old, nv in zip(variables, new):
        st = opt.state.get(old)
        if not st:
            continue
        idx = _row_index(old, keep, R)
        new_opt.state[nv] = {k: (t[idx].clone() if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == old.shape[0]
                                 else t) for k, t in st.items()}
    return new, new_opt, (new[-1] if label_var is not None else None)


def _live_images(stage: Stage) -> Tensor:
    """The live restarts' images (R, B, C, H, W) in the box, for a turn's hand-back (:class:`budget.Turn`)."""
    with torch.no_grad():
        return stage.parametrization.images().detach().clamp(0, 1).clone()
