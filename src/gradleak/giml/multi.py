"""Inversion of one client's local dataset from many of its gradients (GIAS/GIML appendix D, Figure A3).

The client holds n images (e.g. 8); at every step t = 1 … T it uploads the gradient g_t of a random subset
S_t (e.g. 4 images) at the current parameters θ_t. The attacker reconstructs the whole local dataset by

    x̂ = argmin_x  Σ_t c(x_{S_t}; θ_t, g_t)          c = d(∇_θ ℓ(f_θt(x_{S_t}), y_{S_t}), g_t) + λ_TV TV(x)

assuming, as the appendix does, that it can tell which images each gradient was computed on (the subset
indices S_t are known — "meta information to match gradients and data"); the labels are the oracle's.
Two ways θ_t evolves (:func:`observe_sequence`): ``reinit`` — θ re-initialised at every step (independent
random models), and ``trained`` — θ_{t+1} = θ_t − η g_t (the model trained on the uploads, as FL would).

All T gradient re-runs and R restarts are one vectorised call: ``torch.vmap`` over
``torch.func.grad`` of the client loss (:func:`gradleak.fl.client.update_functional`), with θ_t, the
gathered subsets x[S_t] and labels batched along R·T — no Python loop over images or steps.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from gradleak.attacks.engine import Reconstruction, Stage, lr_scheduler
from gradleak.attacks.objectives import DISTANCES, total_variation
from gradleak.attacks.parametrizations import Pixels
from gradleak.errors import UserError, bad_value
from gradleak.fl.client import update_functional
from gradleak.fl.observation import Observation

SETTINGS = ("reinit", "trained")


@dataclass
class GradientSequence:
    """T observed uploads of one client: ``observations[t]`` at θ_t on local images ``subsets[t]`` (T, b)."""

    observations: list[Observation]
    subsets: Tensor
    size: int  # n, images in the local dataset


def observe_sequence(model: nn.Module, images: Tensor, labels: Tensor, steps: int, subset: int = 4,
                     setting: Literal["reinit", "trained"] = "reinit", lr: float = 0.1, seed: int = 0,
                     defenses: list | None = None, model_spec: dict | None = None) -> GradientSequence:
    """Simulate the client of the module docstring: T FedSGD uploads, each on ``subset`` random images of
    ``images`` (n, C, H, W). θ_1 is ``model``'s parameters in both settings; afterwards θ is re-initialised
    (``reinit``, from seeds seed·10⁶ + t) or trained with step ``lr`` on each upload (``trained``).
    ``model`` is not modified."""
    import gradleak as gl
    from gradleak.models import init_model

    if setting not in SETTINGS:
        raise bad_value("multi-gradient setting", setting, ", ".join(SETTINGS))
    n = images.shape[0]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise bad_value("multi-gradient steps (T)", steps, "an integer >= 1")
    if isinstance(subset, bool) or not isinstance(subset, int) or not 1 <= subset <= n:
        raise bad_value("multi-gradient subset", subset, f"1..{n} (images in the local dataset)")
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    obs_list, subsets = [], []
    for t in range(steps):
        if setting == "reinit" and t > 0:
            init_model(model, seed * 1_000_000 + t)
        idx = torch.randperm(n, generator=gen)[:subset].sort().values
        case = gl.Case(model, images[idx], labels[idx], gl.Protocol(kind="fedsgd"), list(defenses or []),
                       model_spec, give_labels=True)
        obs = gl.capture(case, seed=seed * 1_000_000 + t)
        obs.extra = {**obs.extra, "subset": idx.tolist(), "step": t}
        obs_list.append(obs)
        subsets.append(idx)
        if setting == "trained":
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.sub_(lr * obs.update[name])
    return GradientSequence(obs_list, torch.stack(subsets), n)


def _stack(seq: GradientSequence) -> tuple[dict, dict, Tensor, list[str]]:
    obs = seq.observations
    names = list(obs[0].parameters)
    params = {k: torch.stack([o.parameters[k] for o in obs]) for k in names}
    buffers = {k: torch.stack([o.buffers[k] for o in obs]) for k in obs[0].buffers}
    deltas = [o.as_delta().update for o in obs]  # the uploads as Δ, whatever convention each states
    observed = torch.cat([torch.stack([d[k] for d in deltas]).reshape(len(obs), -1) for k in names], 1)
    return params, buffers, observed, names


def sequence_labels(seq: GradientSequence) -> Tensor:
    """The local dataset's labels (n,) assembled from the uploads' (oracle) labels; images never used get 0."""
    y = torch.zeros(seq.size, dtype=torch.long)
    for o, idx in zip(seq.observations, seq.subsets):
        if o.labels is None:
            raise UserError("multi-gradient inversion needs the labels of each upload (threat model: labels given)")
        y[idx] = o.labels.long()
    return y


def multi_gradient_cost(model: nn.Module, seq: GradientSequence, images: Tensor, labels: Tensor,
                        distance: str = "cosine", tv: float = 0.0) -> Tensor:
    """Σ_t c(x_{S_t}; θ_t, g_t) per restart: ``images`` (R, n, C, H, W), ``labels`` (n,) → (R,)."""
    protocol = seq.observations[0].protocol
    if protocol.bn_mode == "train" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise UserError("multi-gradient inversion: the victim has train-mode BatchNorm; allowed: a BN-free model or "
                        "bn_mode eval (the vectorised re-run's second-order term is wrong through train-mode BN)")
    params, buffers, observed, names = _stack(seq)
    R, T = images.shape[0], len(seq.observations)
    model.train(protocol.bn_mode == "train")
    fn = update_functional(model, protocol, names)
    rep = lambda t: t.unsqueeze(0).expand(R, *t.shape).reshape(R * T, *t.shape[1:])  # noqa: E731
    x = images[:, seq.subsets].reshape(R * T, seq.subsets.shape[1], *images.shape[2:])  # x_{S_t}, (R·T, b, C, H, W)
    y = rep(labels[seq.subsets])
    out = torch.vmap(fn, in_dims=(0, 0, 0, 0))({k: rep(v) for k, v in params.items()},
                                               {k: rep(v) for k, v in buffers.items()}, x, y)
    trial = torch.cat([o.reshape(R, T, -1) for o in out], -1)  # (R, T, P)
    dist = DISTANCES[distance]
    per = torch.vmap(lambda tr, ob: dist([tr], [ob]), in_dims=(1, 0), out_dims=1)(trial, observed)  # (R, T)
    loss = per.sum(1)
    if tv:
        loss = loss + tv * total_variation(images)
    return loss


class MultiGradientInversion:
    """min_x Σ_t c(x; θ_t, g_t) over pixels: InvertGrad's signed Adam in the [0, 1] box, ×0.1 at 3/8, 5/8, 7/8,
    R restarts optimised together, the best by final cost."""

    def __init__(self, iterations: int = 1000, lr: float = 0.1, tv: float = 1e-4, restarts: int = 1,
                 distance: str = "cosine", signed: bool = True, init: Literal["randn", "uniform"] = "randn"):
        if distance not in DISTANCES:
            raise bad_value("multi-gradient distance", distance, ", ".join(DISTANCES))
        for key, ok in (("iterations", iterations >= 1), ("lr", lr > 0), ("tv", tv >= 0), ("restarts", restarts >= 1)):
            if not ok:
                raise bad_value(f"multi-gradient {key}", locals()[key], "a positive number")
        self.iterations, self.lr, self.tv, self.restarts = iterations, lr, tv, restarts
        self.distance, self.signed, self.init = distance, signed, init

    def __call__(self, seq: GradientSequence, labels: Tensor | None = None, model: nn.Module | None = None,
                 seed: int = 0, progress: bool = True) -> Reconstruction:
        model = model if model is not None else seq.observations[0].build_model()
        labels = sequence_labels(seq) if labels is None else labels
        shape = tuple(seq.observations[0].image_shape)
        stage = Stage("x", Pixels(self.init, box=True), self.iterations, self.lr, signed=self.signed)
        gen = torch.Generator().manual_seed(seed)
        (x,) = stage.parametrization.start(self.restarts, seq.size, shape, None, gen)
        opt = torch.optim.Adam([x], lr=self.lr)
        sched = lr_scheduler(opt, stage)
        trace, t0 = [], time.perf_counter()
        for i in tqdm(range(self.iterations), desc=f"multi-gradient T={len(seq.observations)}", disable=not progress,
                      leave=False, dynamic_ncols=True):
            per = multi_gradient_cost(model, seq, x, labels, self.distance, self.tv)
            (g,) = torch.autograd.grad(per.sum(), [x])
            x.grad = g.sign() if self.signed else g
            opt.step()
            stage.parametrization.project()
            sched.step()
            trace += [{"iteration": i, "stage": "x", "restart": r, "loss": float(v)} for r, v in enumerate(per.detach())]
        final = multi_gradient_cost(model, seq, x, labels, self.distance, self.tv).detach()
        best = int(torch.nan_to_num(final, nan=math.inf).argmin())
        imgs = x.detach().clamp(0, 1)
        return Reconstruction(images=imgs[best], all_images=imgs, losses=final, best_restart=best, labels=labels,
                              trace=trace, seconds=time.perf_counter() - t0, iterations=self.iterations,
                              attack=f"multi-gradient ({len(seq.observations)} steps)")
