"""Analytic leakage of a fully connected first layer (Phong et al., 2018; Geiping et al., 2020, Prop. 3.1;
Fowl et al., 2022 "Robbing the Fed" for the batch case).

For a first layer z = W x + b on the flattened image, row i of the client's gradient is
    ∇W_i = (1/B) Σ_n δ_{n,i} x_nᵀ,   ∇b_i = (1/B) Σ_n δ_{n,i},   δ_{n,i} = ∂ℓ_n/∂z_{n,i},
so for one sample (B = 1) every row with ∇b_i ≠ 0 gives the image exactly: x = ∇W_i / ∇b_i
(:class:`FCAnalytic`, the least-squares combination over rows, x = Σ_i ∇b_i ∇W_i / Σ_i ∇b_i²). The ratio is
scale-free, so FedAvg with several local steps on one sample leaks the same way (Σ_t δ_t x / Σ_t δ_t = x).

For a batch, row i gives the δ-weighted average of the samples that activate it; a row that only one sample
activates (with ReLU, rows inactive for all others) *isolates* that sample and its ratio is that image exactly.
:class:`FCAnalyticBatch` computes every row's candidate, groups rows whose candidates coincide (two rows that
isolate the same sample give the same image; rows that mix samples do not agree with each other), and returns
the B largest groups. Its :class:`RowIsolation` says which rows were found to isolate a sample.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gradleak.attacks.artifacts import Artifact
from gradleak.attacks.base import ATTACKS, Attack, AuditPlan, Reconstruction
from gradleak.attacks.labels import recover_labels
from gradleak.errors import UserError
from gradleak.fl.observation import Observation, validate_against

_ALLOWED = "a model whose first layer is a Linear layer with bias on the flattened image (e.g. model: mlp)"


def first_linear(model: nn.Module, image_shape: tuple[int, ...]) -> str:
    """Name of the model's first parametrised layer, which must be an ``nn.Linear`` with bias reading the
    flattened image (checked with a forward hook on a random input); a one-line UserError otherwise."""
    order: list[tuple[str, nn.Module, Tensor]] = []
    hooks = []
    for name, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: order.append((name, mod, inp[0].detach())) if not order else None))
    device = next(model.parameters()).device
    x = torch.rand(1, *image_shape, generator=torch.Generator().manual_seed(0), device="cpu").to(device)
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    if not order:
        raise UserError(f"fc-analytic: model {type(model).__name__} has no parametrised layer; allowed: {_ALLOWED}")
    name, mod, inp = order[0]
    if not isinstance(mod, nn.Linear):
        raise UserError(f"fc-analytic: layer {name!r} ({type(mod).__name__}) is the first layer; allowed: {_ALLOWED}")
    if mod.bias is None:
        raise UserError(f"fc-analytic: layer {name!r} (Linear) has no bias; allowed: {_ALLOWED}")
    if inp.shape != (1, x[0].numel()) or not torch.equal(inp, x.flatten(1)):
        raise UserError(f"fc-analytic: layer {name!r} (Linear) does not read the flattened image; allowed: {_ALLOWED}")
    return name


def _first_layer_gradient(obs: Observation, model: nn.Module | None) -> tuple[nn.Module, Tensor, Tensor]:
    obs = obs.as_delta()  # the upload as θ_0 − θ_τ (points along the gradient) whatever convention was stated
    if model is None:
        model = obs.build_model()
    else:
        validate_against(model, obs)
    name = first_linear(model, tuple(obs.image_shape))
    return model, obs.update[f"{name}.weight"].double(), obs.update[f"{name}.bias"].double()


def _labels(obs, model, labels) -> Tensor:
    return labels.clone() if labels is not None else recover_labels(obs, model)


@ATTACKS.register("fc-analytic")
class FCAnalytic(Attack):
    """Exact recovery of one sample from a fully connected first layer with bias: x = ∇W_i / ∇b_i."""

    name = "fc-analytic"
    default_labels = "recover"

    def __init__(self, tol: float = 1e-6):
        if not 0 <= tol < 1:
            raise UserError(f"attack.options.tol: got {tol}; allowed: a number in [0, 1)")
        self.tol = float(tol)

    @classmethod
    def audit_plan(cls, situation):
        """Closed form, when the first layer is fully connected with bias on the flattened image and the upload
        is not obfuscated: this attack for one image, :class:`FCAnalyticBatch` for a batch."""
        if situation.view.obfuscated:
            return None
        try:
            first_linear(situation.model, tuple(situation.obs.image_shape))
        except UserError:
            return None
        if situation.obs.num_images == 1:
            return AuditPlan(cls(), "closed form: fully connected first layer", closed_form=True)
        return AuditPlan(FCAnalyticBatch(), "closed form: fully connected first layer (rows isolating one image)",
                         closed_form=True)

    def __call__(self, obs: Observation, labels: Tensor | None = None, seed: int = 0, model: nn.Module | None = None,
                 progress: bool = True) -> Reconstruction:
        t0 = time.perf_counter()
        if obs.num_images != 1:
            raise UserError(f"fc-analytic: data.batch_size: got {obs.num_images}; allowed: 1 "
                            "(use attack.name: fc-analytic-batch for a batch)")
        model, gW, gb = _first_layer_gradient(obs, model)
        keep = gb.abs() > self.tol * gb.abs().max()
        if not keep.any():
            raise UserError("fc-analytic: the first layer's bias gradient is zero; nothing to invert")
        x = (gb[keep] @ gW[keep]) / (gb[keep] @ gb[keep])
        images = x.reshape(1, *obs.image_shape).float().clamp(0, 1)
        return Reconstruction(images=images, labels=_labels(obs, model, labels), attack=self.name,
                              seconds=time.perf_counter() - t0)


@dataclass
class RowIsolation(Artifact):
    """Which first-layer rows isolate one sample: ``groups`` are rows whose candidates ∇W_i/∇b_i coincide
    (largest first); ``used`` the group behind each returned image (None: no group left, image left grey)."""

    rows: int
    active_rows: int
    groups: list[list[int]]
    used: list[int | None]
    candidates: Tensor | None = field(default=None, repr=False)  # (rows, d) candidate per row (NaN if inactive)

    @property
    def isolating_rows(self) -> list[int]:
        """Rows in a group of ≥ 2 agreeing rows: each isolates a single sample."""
        return sorted(r for g in self.groups if len(g) >= 2 for r in g)

    def to_dict(self) -> dict:
        return {"kind": "fc row isolation", "rows": self.rows, "active_rows": self.active_rows, "groups": len(self.groups),
                "isolating_rows": self.isolating_rows, "group_sizes": [len(g) for g in self.groups],
                "image_groups": [None if u is None else self.groups[u] for u in self.used]}

    fact_labels = {"analysis": "first-layer row isolation"}

    def describe(self) -> dict:
        return {"analysis": self.to_dict()}


@ATTACKS.register("fc-analytic-batch")
class FCAnalyticBatch(Attack):
    """Batch variant: every row's candidate ∇W_i / ∇b_i, rows grouped by agreement (relative distance ≤
    ``agree``), the B largest groups returned as the images. Exact for every sample that some row isolates
    (ReLU first layers make this likely for a wide layer and a small batch; see :class:`RowIsolation`)."""

    name = "fc-analytic-batch"
    default_labels = "recover"

    def __init__(self, agree: float = 1e-3, tol: float = 1e-6):
        if not 0 < agree < 1:
            raise UserError(f"attack.options.agree: got {agree}; allowed: a number in (0, 1)")
        if not 0 <= tol < 1:
            raise UserError(f"attack.options.tol: got {tol}; allowed: a number in [0, 1)")
        self.agree, self.tol = float(agree), float(tol)

    def __call__(self, obs: Observation, labels: Tensor | None = None, seed: int = 0, model: nn.Module | None = None,
                 progress: bool = True) -> Reconstruction:
        t0 = time.perf_counter()
        model, gW, gb = _first_layer_gradient(obs, model)
        rows = gb.numel()
        active = gb.abs() > self.tol * gb.abs().max().clamp_min(1e-300)
        cand = torch.full_like(gW, float("nan"))
        cand[active] = gW[active] / gb[active, None]
        order = sorted(torch.nonzero(active).flatten().tolist(), key=lambda i: -abs(float(gb[i])))
        groups: list[list[int]] = []
        reps: list[Tensor] = []
        for i in order:  # greedy grouping, strongest rows first
            c = cand[i]
            for g, rep in zip(groups, reps):
                if (c - rep).norm() <= self.agree * max(float(c.norm()), float(rep.norm()), 1e-12):
                    g.append(i)
                    break
            else:
                groups.append([i])
                reps.append(c)
        ranked = sorted(range(len(groups)), key=lambda j: (-len(groups[j]), -sum(abs(float(gb[i])) for i in groups[j])))
        B = obs.num_images
        used: list[int | None] = ranked[:B] + [None] * max(0, B - len(ranked))
        images = torch.full((B, *obs.image_shape), 0.5)
        for slot, j in enumerate(used):
            if j is not None:
                images[slot] = cand[groups[j]].mean(0).reshape(obs.image_shape).float()
        images = images.clamp(0, 1)
        iso = RowIsolation(rows, int(active.sum()), [groups[j] for j in ranked], [None if u is None else ranked.index(u)
                                                                                  for u in used], cand)
        return Reconstruction(images=images, labels=_labels(obs, model, labels), attack=self.name,
                              seconds=time.perf_counter() - t0, artifacts=[iso])
