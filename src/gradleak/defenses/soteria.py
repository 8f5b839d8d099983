"""Soteria (Sun et al., 2021; ROG eq. 16): perturb the representation at the defended FC layer.

The defended layer is the victim's final ``nn.Linear`` (:func:`gradleak.models.feature_layer`); its input
r ∈ R^F (per example) is the representation. Following the authors' code, for every feature f the
sensitivity ‖∂r_f/∂x‖₂ / |r_f| is computed per example and summed over the batch, the ``pruning_rate``
fraction of features with the *smallest* sums is pruned (exactly ⌊rate·F⌋ features; ties broken by
index), and the pruned features' columns of the FC weight's gradient are zeroed in the upload
(``dy_dx[fc.weight] *= mask``). The bias gradient and all other layers are unchanged. |r_f| = 0 (a dead
ReLU feature, whose column is zero anyway) counts as infinitely sensitive and is kept.

The Jacobian ∂r/∂x is computed in one batched call: ``torch.func.vjp`` of x ↦ r(x) over the batch, with
the F one-hot cotangents vectorised by ``torch.func.vmap`` (``chunk_size`` bounds the memory) — not F
separate backward passes. Memory/time grow with F·|x|; fine for LeNet/ConvNet at 32×32 on a CPU only
for small widths (the ConvNet's 36·width features each need a batched vector–Jacobian product).

Protocol semantics: Soteria is defined for FedSGD (the upload is the gradient). For FedAvg the mask is
computed once from θ_0 and the client's batch and applied to the upload's FC-weight columns (Δ), which
is an approximation (the representation drifts over the local steps). The model runs in the client's
``bn_mode``.
"""
from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

from gradleak.defenses.base import AttackerView, ClientContext, Defense, Params, check, register
from gradleak.errors import UserError
from gradleak.fl.client import client_inputs


def defended_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """(module name, layer) of the final classifier nn.Linear; one-line UserError if there is none."""
    from gradleak.models import feature_layer

    try:
        layer = feature_layer(model)
    except UserError:
        name = getattr(model, "gradleak_name", type(model).__name__)
        raise UserError(f"defense soteria.model: got {name!r}; allowed: a model whose classifier head is a "
                        "torch.nn.Linear layer (Soteria defends that layer)") from None
    for n, m in model.named_modules():
        if m is layer:
            return n, layer
    raise UserError("defense soteria.model: the defended layer is not a submodule of the model")


def feature_sensitivity(model: nn.Module, params: Params, buffers: Params, x: Tensor,
                        chunk_size: int | None = 256) -> tuple[Tensor, Tensor]:
    """(sens, r): sens (B, F) = ‖∂r_f/∂x_b‖₂ / |r_{b,f}| and the representation r (B, F).

    One ``vjp`` over the batch, vmapped over the F one-hot cotangents (``chunk_size`` at a time)."""
    _, layer = defended_layer(model)

    def rep(inp: Tensor) -> Tensor:
        bufs = {k: v.clone() for k, v in buffers.items()}  # created inside the transform: BN may update them
        stash: list[Tensor] = []
        h = layer.register_forward_pre_hook(lambda _m, a: stash.append(a[0]))
        try:
            functional_call(model, {**params, **bufs}, (inp,))
        finally:
            h.remove()
        return stash[0].flatten(1)

    r, vjp_fn = torch.func.vjp(rep, x)
    B, Fdim = r.shape
    basis = torch.eye(Fdim, dtype=r.dtype).unsqueeze(1).expand(Fdim, B, Fdim)  # cotangent f: ones at [:, f]
    (jac,) = torch.func.vmap(vjp_fn, chunk_size=chunk_size)(basis)  # (F, B, C, H, W) — d Σ_b r_{b,f} / dx
    norms = jac.reshape(Fdim, B, -1).norm(dim=2).T  # (B, F)
    sens = norms / r.detach().abs()
    sens = torch.where(r.detach() == 0, torch.full_like(sens, math.inf), sens)
    return sens, r.detach()


def soteria_mask(sens: Tensor, pruning_rate: float) -> Tensor:
    """(F,) float mask: 0 for the ⌊rate·F⌋ features with the smallest batch-summed sensitivity."""
    total = sens.sum(0)
    Fdim = total.numel()
    n_prune = int(math.floor(pruning_rate * Fdim + 1e-9))
    mask = torch.ones(Fdim, dtype=sens.dtype)
    if n_prune:
        order = torch.sort(total, stable=True).indices
        mask[order[:n_prune]] = 0
    return mask


@register
class Soteria(Defense):
    """Soteria: prune the ``pruning_rate`` fraction (default 80 %) of representation features with the
    smallest ‖∂r/∂x‖/|r| at the final FC layer by zeroing their FC-weight-gradient columns."""

    name = "soteria"

    def __init__(self, pruning_rate: Annotated[float, Field(ge=0, lt=1)] = 0.8,
                 chunk_size: Annotated[int, Field(ge=1)] | None = 256, attacker_knows: bool = True):
        check(self.name, "pruning_rate", 0 <= pruning_rate < 1, pruning_rate, "a number in [0, 1)")
        check(self.name, "chunk_size", chunk_size is None or chunk_size >= 1, chunk_size, "an integer >= 1 or null")
        self.pruning_rate, self.attacker_knows = float(pruning_rate), attacker_knows
        self._chunk = chunk_size
        self._report: dict = {}
        self._mask: Tensor | None = None

    @classmethod
    def attacker_view(cls, told: dict) -> AttackerView:
        return AttackerView(support=True)

    def apply(self, update: Params, ctx: ClientContext) -> Params:
        model = ctx.model
        lname, _ = defended_layer(model)
        wname = f"{lname}.weight" if lname else "weight"
        if wname not in update:
            raise UserError(f"defense soteria.model: the upload has no tensor {wname!r} for the defended layer")
        was = model.training
        model.train(ctx.protocol.bn_mode == "train")
        try:
            sens, _ = feature_sensitivity(model, ctx.params, ctx.buffers, client_inputs(ctx.protocol, ctx.images),
                                          self._chunk)
        finally:
            model.train(was)
        mask = soteria_mask(sens, self.pruning_rate)
        self._mask = mask
        out = dict(update)
        out[wname] = update[wname] * mask.to(update[wname].dtype)
        self._report = {"layer": wname, "features": int(mask.numel()), "pruned": int((mask == 0).sum())}
        return out
