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
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from gradleak.attacks.base import Reconstruction
from gradleak.attacks.objectives import DISTANCES, total_variation
from gradleak.attacks.parametrizations import Parametrization
from gradleak.fl.client import batched_update
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
    """What the objective needs: the victim, θ_0, the observed upload, the protocol."""

    model: nn.Module
    obs: Observation
    names: list[str]
    observed: list[Tensor]
    backend: str = "loop"


def lr_scheduler(opt, stage: Stage):
    """The learning-rate schedule named by ``stage.schedule`` (see :class:`Stage`); None for constant."""
    n = stage.iterations
    if stage.schedule == "multistep":
        ms = sorted({max(1, int(n * f)) for f in (3 / 8, 5 / 8, 7 / 8)})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=0.1)
    if stage.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(n, 1))
    return None


def objective_value(ctx: SearchContext, objective: Objective, images: Tensor, labels: Tensor) -> Tensor:
    """The per-restart objective (R,) for images (R,B,C,H,W) and labels (R,B) or soft (R,B,K)."""
    obs = ctx.obs
    trial = batched_update(ctx.model, obs.parameters, obs.buffers, images, labels, obs.protocol, ctx.backend)
    trial = [trial[n] for n in ctx.names]
    if objective.trial_view is not None:
        trial = objective.trial_view(trial)
    dist = DISTANCES[objective.distance] if isinstance(objective.distance, str) else objective.distance
    loss = dist(trial, ctx.observed)
    if objective.tv:
        loss = loss + objective.tv * total_variation(images)
    for weight, reg in objective.regularizers:
        loss = loss + weight * reg(images, ctx)
    return loss


def search(
    obs: Observation,
    stages: list[Stage],
    objective: Objective,
    labels: Tensor | None,
    restarts: int = 1,
    seed: int = 0,
    model: nn.Module | None = None,
    backend: str = "loop",
    progress: bool = True,
    name: str = "",
) -> Reconstruction:
    """Run the staged search. ``labels``: known labels (B,), or None to learn soft labels jointly (DLG).

    Adam stages optimise all restarts as one batched problem (per-element updates keep them independent);
    L-BFGS couples variables through its line search, so L-BFGS schedules run one restart at a time."""
    if model is None:
        model = obs.build_model()
    else:
        validate_against(model, obs)
    names = list(obs.parameters)
    ctx = SearchContext(model, obs, names, [obs.update[n] for n in names], backend)
    gen = torch.Generator().manual_seed(seed)
    chunk = 1 if any(s.optimizer == "lbfgs" for s in stages) else restarts
    t0 = time.perf_counter()
    total = sum(s.iterations for s in stages) * math.ceil(restarts / chunk)
    bar = tqdm(total=total, desc=name or "attack", disable=not progress, leave=False, dynamic_ncols=True)
    results, trace = [], []
    for first in range(0, restarts, chunk):
        results.append(_run_chunk(ctx, stages, objective, labels, min(chunk, restarts - first), gen, bar, trace, first))
    bar.close()
    images = torch.cat([r[0] for r in results])
    losses = torch.cat([r[1] for r in results])
    lab = torch.cat([r[2] for r in results])
    best = int(torch.nan_to_num(losses, nan=math.inf).argmin())
    return Reconstruction(
        images=images[best], all_images=images, losses=losses, best_restart=best, labels=lab[best],
        trace=sorted(trace, key=lambda r: (r["iteration"], r["restart"])), seconds=time.perf_counter() - t0,
        iterations=sum(s.iterations for s in stages), attack=name, backend=backend,
        distance=objective.distance if isinstance(objective.distance, str) else None,
    )


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
            per = objective_value(ctx, objective, stage.parametrization.images(), current_labels())
            grads = torch.autograd.grad(per.sum(), variables, allow_unused=True)
            for v, g in zip(variables, grads):
                v.grad = torch.zeros_like(v) if g is None else (g.sign() if stage.signed else g)
            last = per.detach()
            return per.sum()

        for i in range(stage.iterations):
            opt.step(closure)
            stage.parametrization.project()
            if sched is not None:
                sched.step()
            loss_now = last
            if not torch.isfinite(loss_now).all() and stage.optimizer == "lbfgs":
                bar.update(stage.iterations - i)
                break
            for r in range(R):
                trace.append({"iteration": it0 + i, "stage": stage.name, "restart": first + r,
                              "loss": float(loss_now[r])})
            bar.update(1)
            if i % 10 == 0 or i == stage.iterations - 1:
                bar.set_postfix(stage=stage.name, loss=f"{float(loss_now.min()):.4g}")
        it0 += stage.iterations
        with torch.no_grad():
            prev = stage.parametrization.images().detach()
    # the final objective ranks the restarts; it needs autograd (the update is itself a gradient)
    final = objective_value(ctx, objective, prev, current_labels()).detach()
    imgs = prev.detach().clamp(0, 1)
    lab = current_labels().detach()
    if lab.dim() == 3:
        lab = lab.argmax(-1)
    return imgs, final, lab
