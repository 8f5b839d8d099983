"""The one search engine every optimisation attack is a preset of.

    x̂ = argmin_{v}  d( U_θ(P(v), y), g_obs ) + Σ_k λ_k R_k(P(v))

where P is a parametrization of the images (pixels, generator latents, …), U_θ the client's own update
computation re-run differentiably (:func:`gradleak.fl.client.batched_update`), d a gradient distance and
R_k image priors. The search runs a schedule of stages (each with its parametrization, optimiser,
iterations, learning-rate schedule) over R restarts optimised together as one batched problem; the
restart with the lowest final objective is returned (Geiping et al., 2020; GIAS Algorithm 1).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from gradleak.attacks.base import Reconstruction
from gradleak.attacks.budget import PROBE, Budget, fit_scale, halving_points, current as current_budget
from gradleak.attacks.objectives import DISTANCES, total_variation
from gradleak.devices import generator
from gradleak.attacks.parametrizations import Parametrization, Pixels
from gradleak.errors import UserError
from gradleak.fl.secagg import observed_rerun
from gradleak.fl.observation import Observation, validate_against

Regularizer = Callable[[Tensor, "SearchContext"], Tensor]  # images (R,B,C,H,W) -> (R,)
# How the gradient-matching term and its image gradient are computed (all give the same numbers, tested):
# "loop" autograd per restart, "vmap" torch.func over restarts, "compiled" the same under torch.compile,
# "auto" the fastest of these on a short measured warm-up (see gradleak.attacks.fast, benchmarks/speed.py).
Backend = Literal["loop", "vmap", "compiled", "auto"]
BACKENDS = ("loop", "vmap", "compiled", "auto")
AUTO_MIN_ITERATIONS = 50  # shorter searches: "auto" runs "loop" without measuring (the warm-up would dominate)
AUTO_COMPILE_MIN_SECONDS = 600.0  # "auto" compiles only when the eager search would take at least this long


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
    """What the objective needs: the victim, θ_0, the observed upload, the protocol."""

    model: nn.Module
    obs: Observation
    names: list[str]
    observed: list[Tensor]
    backend: str = "loop"
    fast: object | None = None  # a gradleak.attacks.fast.FastStep when the backend is not "loop"
    fused: dict = field(default_factory=dict)  # gradleak.attacks.fused.FusedAdam steps by (signed, box)


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
    if ctx.fast is not None:
        d = ctx.fast.eager_step(images, labels)[0] if eager else ctx.fast(images, labels)[0]
        return d + _regularizer_value(objective, images, ctx)
    obs = ctx.obs
    trial = observed_rerun(ctx.model, obs, images, labels, ctx.backend)  # one client, or K (secure aggregation)
    trial = [trial[n] for n in ctx.names]
    if objective.trial_view is not None:
        trial = objective.trial_view(trial)
    dist = DISTANCES[objective.distance] if isinstance(objective.distance, str) else objective.distance
    return dist(trial, ctx.observed) + _regularizer_value(objective, images, ctx)


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
    """The per-restart objective (R,) and its gradient w.r.t. ``variables``. With a fast step the matching
    term's image (and soft-label) gradient comes from torch.func and is chained through the
    parametrization by autograd, together with the first-order regularizers."""
    if ctx.fast is None:
        per = objective_value(ctx, objective, images, labels)
        return per.detach(), torch.autograd.grad(per.sum(), variables, allow_unused=True)
    d, g_x, g_y = ctx.fast(images, labels)
    outs, gouts = [images], [g_x]
    if g_y is not None and labels.requires_grad:
        outs.append(labels)
        gouts.append(g_y)
    reg = _regularizer_value(objective, images, ctx)
    if isinstance(reg, Tensor):
        d = d + reg.detach()
        if reg.requires_grad:
            outs.append(reg.sum())
            gouts.append(torch.ones((), dtype=reg.dtype, device=reg.device))
    outs_req = [(o, g) for o, g in zip(outs, gouts) if o.requires_grad]
    if not outs_req:
        return d, tuple(None for _ in variables)
    grads = torch.autograd.grad([o for o, _ in outs_req], variables, [g for _, g in outs_req], allow_unused=True)
    return d, grads


def search(
    obs: Observation,
    stages: list[Stage],
    objective: Objective,
    labels: Tensor | None,
    restarts: int = 1,
    seed: int = 0,
    model: nn.Module | None = None,
    backend: Backend = "loop",
    progress: bool = True,
    name: str = "",
) -> Reconstruction:
    """Run the staged search. ``labels``: known labels (B,), or None to learn soft labels jointly (DLG).

    Adam stages optimise all restarts as one batched problem (per-element updates keep them independent);
    L-BFGS couples variables through its line search, so L-BFGS schedules run one restart at a time.
    ``backend``: see :data:`Backend`; the one used is ``Reconstruction.backend``."""
    if backend not in BACKENDS:
        raise UserError(f"attack.options.backend: got {backend!r}; allowed: {', '.join(BACKENDS)}")
    obs = obs.as_delta()  # the upload as θ_0 − θ_τ, whatever convention the client stated
    if model is None:
        model = obs.build_model()
    else:
        validate_against(model, obs)
    names = list(obs.parameters)
    ctx = SearchContext(model, obs, names, [obs.update[n] for n in names], backend)
    gen = generator(seed)
    chunk = 1 if any(s.optimizer == "lbfgs" for s in stages) else restarts
    t0 = time.perf_counter()
    budget = current_budget()
    if budget is not None:
        budget = budget.start()
    total = sum(s.iterations for s in stages) * math.ceil(restarts / chunk)
    timing = _choose_backend(ctx, objective, "loop" if budget is not None and backend == "auto" else backend, chunk,
                             labels, total)
    bar = tqdm(total=total, desc=name or "attack", disable=not progress, leave=False, dynamic_ncols=True)
    results, trace = [], []
    run = BudgetedRun(budget) if budget is not None else None
    for first in range(0, restarts, chunk):
        if run is None:
            results.append(_run_chunk(ctx, stages, objective, labels, min(chunk, restarts - first), gen, bar, trace,
                                      first))
            continue
        share = budget.left() / math.ceil((restarts - first) / chunk)
        results.append(_run_chunk_budgeted(ctx, stages, objective, labels, min(chunk, restarts - first), gen, bar,
                                           trace, first, run, share))
        if run.stopped in ("interrupted", "budget"):
            break
    bar.close()
    images = torch.cat([r[0] for r in results])
    losses = torch.cat([r[1] for r in results])
    lab = torch.cat([r[2] for r in results])
    best = int(torch.nan_to_num(losses, nan=math.inf).argmin())
    return Reconstruction(
        images=images[best], all_images=images, losses=losses, best_restart=best, labels=lab[best],
        trace=sorted(trace, key=lambda r: (r["iteration"], r["restart"])), seconds=time.perf_counter() - t0,
        iterations=sum(s.iterations for s in stages) if run is None else run.iterations, attack=name,
        stopped=None if run is None else run.stopped, halving=None if run is None else run.halvings,
        backend=_backend_used(ctx),
        backend_timing={**timing, **_variant_timing(ctx)} or None,
        distance=objective.distance if isinstance(objective.distance, str) else None,
    )


def _fast_step(ctx: SearchContext, objective: Objective, soft: bool, compile: bool):
    from gradleak.attacks.fast import FastStep

    obs = ctx.obs
    dist = DISTANCES[objective.distance] if isinstance(objective.distance, str) else objective.distance
    return FastStep(ctx.model, obs.protocol, obs.parameters, obs.buffers, ctx.observed, dist, objective.trial_view,
                    soft=soft, compile=compile)


def compiled_steps(ctx: SearchContext) -> list:
    """The steps that ran compiled (each with its :class:`gradleak.attacks.fast.Compiled` as ``run``): the fused
    iterations where they ran, else the compiled matching step, else none."""
    return list(ctx.fused.values()) or ([ctx.fast] if ctx.fast is not None and ctx.fast.compile else [])


def _variant_timing(ctx: SearchContext) -> dict[str, float]:
    """Seconds per call of the compiled variants that were timed against each other (``compiled/conv``,
    ``compiled/matmul-conv``; :class:`gradleak.attacks.fast.Compiled`), the fused step's where it ran."""
    out: dict[str, float] = {}
    for step in compiled_steps(ctx):
        for timing in step.run.timings.values():
            out.update({f"compiled/{name}": round(t, 6) for name, t in timing.items()})
    return out


def _backend_used(ctx: SearchContext) -> str:
    """The backend that ran: "compiled" falls back to "vmap" if the step, or a fused step, could not compile."""
    if ctx.fast is None:
        return ctx.backend
    if ctx.fast.backend == "compiled" and any(f.fallback is not None for f in ctx.fused.values()):
        return "vmap"
    return ctx.fast.backend


def _fused_step(ctx: SearchContext, objective: Objective, stage: Stage, soft: bool):
    """The fused compiled iteration (:class:`gradleak.attacks.fused.FusedAdam`) for a ``compiled`` stage that
    fits it — pixels, Adam, known labels, no regularizer but TV — else None (the stage runs the usual way).
    One per (signed, box), kept on ``ctx`` so restarts' chunks and later stages reuse its compiled graphs."""
    if (ctx.backend != "compiled" or soft or objective.regularizers or stage.optimizer != "adam"
            or type(stage.parametrization) is not Pixels):
        return None
    key = (stage.signed, stage.parametrization.box)
    if key not in ctx.fused:
        from gradleak.attacks.fused import FusedAdam

        obs = ctx.obs
        dist = DISTANCES[objective.distance] if isinstance(objective.distance, str) else objective.distance
        ctx.fused[key] = FusedAdam(ctx.model, obs.protocol, obs.parameters, obs.buffers, ctx.observed, dist,
                                   objective.trial_view, objective.tv, *key, compile=ctx.fast.compile)
    return ctx.fused[key]


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


def _choose_backend(ctx: SearchContext, objective: Objective, backend: str, R: int, labels: Tensor | None,
                    total_iterations: int) -> dict:
    """Set ``ctx.backend``/``ctx.fast``. For "auto": time a few matching-term evaluations of "loop" and
    "vmap" on random images (its own RNG: the search's draws are untouched), interleaved, keep the faster;
    when the search would still take ``AUTO_COMPILE_MIN_SECONDS`` or more, also compile (minutes on a CPU)
    and time that. Searches under ``AUTO_MIN_ITERATIONS`` iterations run "loop" unmeasured.
    Returns seconds per evaluation by candidate ({} unless measured)."""
    soft = labels is None
    if ctx.obs.aggregation is not None:  # K clients' aggregate (gradleak.fl.secagg): the fast steps model one
        ctx.backend, ctx.fast = "loop", None  # client, so each client's slots are re-run by autograd ("loop")
        return {}
    if backend == "loop" or (backend == "auto" and total_iterations < AUTO_MIN_ITERATIONS):
        ctx.backend, ctx.fast = "loop", None
        return {}
    if backend in ("vmap", "compiled"):
        ctx.backend, ctx.fast = backend, _fast_step(ctx, objective, soft, backend == "compiled")
        return {}
    obs = ctx.obs
    dev = ctx.observed[0].device
    gen = torch.Generator(device=dev).manual_seed(12345)
    x = torch.rand(R, obs.num_images, *obs.image_shape, generator=gen, device=dev)
    if soft:
        y = torch.softmax(torch.randn(R, obs.num_images, obs.model_spec["num_classes"], generator=gen, device=dev), -1)
    else:
        y = labels.expand(R, *labels.shape)
    objective = replace(objective, regularizers=[])  # the priors cost the same on every backend
    cands: dict[str, object] = {"loop": None, "vmap": _fast_step(ctx, objective, soft, False)}
    best: dict[str, float] = {}

    def measure(names: list[str], rounds: int) -> None:
        for rnd in range(rounds + 1):  # round 0 is the warm-up (first-call allocations, compilation)
            for name in [n for n in names if n in cands]:
                ctx.backend, ctx.fast = name, cands[name]
                xi = x.clone().requires_grad_()
                t0 = time.perf_counter()
                try:
                    _value_and_grads(ctx, objective, xi, y, [xi])
                except Exception:  # noqa: BLE001 - a backend this model cannot run is not a candidate
                    if name == "loop":
                        raise
                    del cands[name]
                    continue
                dt = time.perf_counter() - t0
                if name == "compiled" and cands[name].fallback is not None:
                    del cands[name]
                    continue
                if rnd > 0:
                    best[name] = min(best.get(name, math.inf), dt)

    measure(["loop", "vmap"], 2)
    if min(best.values()) * total_iterations >= AUTO_COMPILE_MIN_SECONDS:
        cands["compiled"] = _fast_step(ctx, objective, soft, True)
        measure(["compiled"], 2)
    choice = min(best, key=best.get)
    ctx.backend, ctx.fast = choice, cands[choice]
    return {k: round(v, 6) for k, v in best.items()}


def _run_chunk(ctx, stages, objective, labels, R, gen, bar, trace, first):
    obs = ctx.obs
    B, shape = obs.num_images, tuple(obs.image_shape)
    K = obs.model_spec["num_classes"]
    label_var = None
    if labels is None:  # DLG: dummy soft labels, optimised jointly
        label_var = torch.randn(R, B, K, generator=gen).requires_grad_()
    prev, it0 = None, 0

    def current_labels():
        if label_var is not None:
            return F.softmax(label_var, -1)
        return labels.expand(R, *labels.shape)

    for stage in stages:
        variables = stage.parametrization.start(R, B, shape, prev, gen)
        fused = _fused_step(ctx, objective, stage, label_var is not None)
        if fused is not None:
            stage_losses = _run_fused(fused, stage, current_labels(), bar)
            _record(trace, stage, stage_losses, it0, first, R)
            it0 += stage.iterations
            prev = stage.parametrization.images().detach()
            continue
        if label_var is not None:
            variables = variables + [label_var]
        if stage.optimizer == "lbfgs":
            opt = torch.optim.LBFGS(variables, lr=stage.lr, line_search_fn=stage.line_search)
        else:
            opt = torch.optim.Adam(variables, lr=stage.lr)
        sched = lr_scheduler(opt, stage)
        last = torch.full((R,), math.inf)

        def closure():
            nonlocal last
            opt.zero_grad(set_to_none=True)
            per, grads = _value_and_grads(ctx, objective, stage.parametrization.images(), current_labels(), variables)
            for v, g in zip(variables, grads):
                v.grad = torch.zeros_like(v) if g is None else (g.sign() if stage.signed else g)
            last = per
            return per.sum()

        stage_losses: list[Tensor] = []  # kept as tensors; the trace's dicts are built after the stage

        for i in range(stage.iterations):
            opt.step(closure)
            stage.parametrization.project()
            if sched is not None:
                sched.step()
            loss_now = last
            if stage.optimizer == "lbfgs" and not torch.isfinite(loss_now).all():
                bar.update(stage.iterations - i)
                break
            stage_losses.append(loss_now)
            bar.update(1)
            if i % 10 == 0 or i == stage.iterations - 1:
                bar.set_postfix(stage=stage.name, loss=f"{float(loss_now.min()):.4g}")
        _record(trace, stage, stage_losses, it0, first, R)
        it0 += stage.iterations
        with torch.no_grad():
            prev = stage.parametrization.images().detach()
    # the final objective ranks the restarts; it needs autograd (the update is itself a gradient)
    final = objective_value(ctx, objective, prev, current_labels(), eager=bool(ctx.fused)).detach()
    imgs = prev.detach().clamp(0, 1)
    lab = current_labels().detach()
    if lab.dim() == 3:
        lab = lab.argmax(-1)
    return imgs, final, lab


def _record(trace: list, stage: Stage, stage_losses: list[Tensor], it0: int, first: int, R: int) -> None:
    """Append a stage's per-iteration losses (tensors (R,)) to the trace as rows."""
    if stage_losses:
        table = torch.stack(stage_losses).tolist()
        trace.extend({"iteration": it0 + i, "stage": stage.name, "restart": first + r, "loss": row[r]}
                     for i, row in enumerate(table) for r in range(R))


def _run_fused(fused, stage: Stage, labels: Tensor, bar) -> list[Tensor]:
    """An Adam stage on pixels as fused iterations (same numbers as the optimiser loop of ``_run_chunk``:
    Adam's state starts at zero, the schedule's lr per iteration, the box after each step); returns the
    per-iteration objective before each step, like the loop's ``last``."""
    param = stage.parametrization
    x = param.x.detach()
    exp_avg, exp_avg_sq = torch.zeros_like(x), torch.zeros_like(x)
    losses: list[Tensor] = []
    for i, lr in enumerate(stage_lrs(stage)):
        t = torch.tensor(float(i + 1), dtype=torch.float64, device=x.device)
        lr_t = torch.tensor(lr, dtype=torch.float64, device=x.device)
        x, exp_avg, exp_avg_sq, loss_now = fused(x, exp_avg, exp_avg_sq, t, lr_t, labels.detach())
        losses.append(loss_now)
        bar.update(1)
        if i % 10 == 0 or i == stage.iterations - 1:
            bar.set_postfix(stage=stage.name, loss=f"{float(loss_now.min()):.4g}")
    param.x = x.detach().requires_grad_()
    return losses


# --- budgeted search (gradleak.attacks.budget) ------------------------------------------------------------

@dataclass
class BudgetedRun:
    """The state of one budgeted search: what ran and why it ended (``completed`` | ``plateau`` | ``budget`` |
    ``interrupted``), and the successive-halving decisions (schedule position, restarts kept)."""

    budget: Budget
    iterations: int = 0
    stopped: str = "completed"
    halvings: list[dict] = field(default_factory=list)
    plateaus: list[dict] = field(default_factory=list)


def _milestones(stage: Stage, n: int) -> list[int]:
    return sorted({max(1, int(n * f)) for f in (3 / 8, 5 / 8, 7 / 8)}) if stage.schedule == "multistep" else []


def _lr_at(stage: Stage, i: int, n: int) -> float:
    """The stage's schedule (:func:`lr_scheduler`) as a function of the position i in a stage of length n."""
    if stage.schedule == "multistep":
        return stage.lr * 0.1 ** sum(1 for m in _milestones(stage, n) if i >= m)
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


def _run_chunk_budgeted(ctx, stages, objective, labels, R, gen, bar, trace, first, run: BudgetedRun, share: float):
    """:func:`_run_chunk` under a budget (the rules of :mod:`gradleak.attacks.budget`): stage lengths fitted to
    the time left (or scaled to the iteration budget), plateau jumps/stops, successive halving, deadline and
    Ctrl-C ending the search with the images so far."""
    budget = run.budget
    obs = ctx.obs
    B, shape = obs.num_images, tuple(obs.image_shape)
    K = obs.model_spec["num_classes"]
    t_start = budget.now()
    deadline = min(budget.deadline or math.inf, t_start + share)
    lengths = [s.iterations for s in stages]
    if budget.iterations is not None:
        scale = budget.iterations / max(sum(lengths), 1)
        lengths = [max(1, round(n * scale)) for n in lengths]
    base = list(lengths)  # the fit never goes above these (the preset's schedule, or the iteration budget's)
    can_halve = (budget.halving and R > 1 and all(s.optimizer == "adam" for s in stages)
                 and all(type(s.parametrization).select is not Parametrization.select for s in stages))
    points = halving_points(R) if can_halve else []
    alive = torch.arange(R)
    label_var = torch.randn(R, B, K, generator=gen).requires_grad_() if labels is None else None
    prev, pos0 = None, 0

    def current_labels():
        if label_var is not None:
            return F.softmax(label_var, -1)
        return labels.expand(len(alive), *labels.shape)

    for si, stage in enumerate(stages):
        variables = stage.parametrization.start(len(alive), B, shape, prev, gen)
        if label_var is not None:
            variables = variables + [label_var]
        if stage.optimizer == "lbfgs":
            opt = torch.optim.LBFGS(variables, lr=stage.lr, line_search_fn=stage.line_search)
        else:
            opt = torch.optim.Adam(variables, lr=stage.lr)
        last = torch.full((len(alive),), math.inf)

        def closure():
            nonlocal last
            opt.zero_grad(set_to_none=True)
            per, grads = _value_and_grads(ctx, objective, stage.parametrization.images(), current_labels(), variables)
            for v, g in zip(variables, grads):
                v.grad = torch.zeros_like(v) if g is None else (g.sign() if stage.signed else g)
            last = per
            return per.sum()

        n, i, ran = lengths[si], 0, 0
        mark, refit, refits_at = None, True, [0.1, 0.25]
        best_hist: list[float] = []
        rows: list[tuple[int, list[float], list[int]]] = []
        while i < n:
            if budget.now(lambda: _live_images(stage)) >= deadline:  # a turn may hand the CPU back here
                run.stopped = "budget"
                break
            if stage.optimizer == "adam":
                for g in opt.param_groups:
                    g["lr"] = _lr_at(stage, i, n)
            try:
                opt.step(closure)
                stage.parametrization.project()
            except KeyboardInterrupt:
                run.stopped = "interrupted"
                break
            loss_now = last.detach()
            if stage.optimizer == "lbfgs" and not torch.isfinite(loss_now).all():
                break
            rows.append((pos0 + i, loss_now.tolist(), alive.tolist()))
            i, ran = i + 1, ran + 1
            run.iterations += 1
            bar.update(1)
            if budget.seconds is not None and budget.iterations is None:
                if ran == 1 or mark is None:  # the first iteration (and the one after a halving) is not timed
                    mark = (budget.now(), ran)
                elif refit and ran - mark[1] >= PROBE:
                    per_it = (budget.now() - mark[0]) / (ran - mark[1]) / len(alive)
                    f = fit_scale(deadline - budget.now() - 2 * per_it * len(alive), per_it, i, pos0,
                                  base[si:], R if points else len(alive), bool(points))
                    lengths = lengths[:si] + [max(i + 1, round(base[si] * f))] + [max(1, round(m * f))
                                                                                  for m in base[si + 1:]]
                    n = lengths[si]
                    refit = False
                if not refit and refits_at and i >= refits_at[0] * n:  # refit on a longer measurement
                    refits_at.pop(0)
                    refit = i < (_milestones(stage, n) or [n])[0]
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
                best_hist, mark, refit = [], None, True
            best_hist.append(float(torch.nan_to_num(loss_now, nan=math.inf).min()))
            # plateau: jump to the next milestone, or stop in the last phase / second half
            plateau = budget.plateau
            window = max(plateau.min_window, n // 16) if plateau is not None else 0
            if plateau is not None and len(best_hist) > window:
                old, now = min(best_hist[:-window]), min(best_hist)
                if math.isfinite(old) and old - now <= plateau.tol * abs(old):
                    ahead = [m for m in _milestones(stage, n) if m > i]
                    if ahead:
                        run.plateaus.append({"iteration": pos0 + i, "action": f"jump to {pos0 + ahead[0]}"})
                        i, best_hist = ahead[0], []
                    elif stage.schedule == "multistep" or i >= n // 2:
                        run.plateaus.append({"iteration": pos0 + i, "action": "stop stage"})
                        if si == len(stages) - 1 and run.stopped == "completed":
                            run.stopped = "plateau"
                        break
        for pos, losses, ids in rows:
            trace.extend({"iteration": pos, "stage": stage.name, "restart": first + int(r), "loss": v}
                         for r, v in zip(ids, losses))
        lengths[si] = i
        pos0 += i
        with torch.no_grad():
            prev = stage.parametrization.images().detach()
        if run.stopped in ("interrupted", "budget"):
            break
    if run.stopped in ("budget", "interrupted"):  # out of time: rank by the last step's objective, no extra pass
        final = last.detach() if torch.isfinite(last).all() else torch.zeros(len(alive))
    else:
        final = objective_value(ctx, objective, prev, current_labels()).detach()
    imgs = prev.detach().clamp(0, 1)
    lab = current_labels().detach()
    if lab.dim() == 3:
        lab = lab.argmax(-1)
    return imgs, final, lab
