"""The BatchNorm-statistics prior of GradInversion (Yin et al., 2021), as used in GIAS §4:

    R_BN(x_1, …, x_B; θ) = Σ_l ‖μ_l(x) − μ_l^obs‖₂ + ‖σ²_l(x) − σ²_l^obs‖₂

over the victim's BN layers l, where μ_l, σ²_l are the per-channel mean and (biased) variance of the
layer's input over the candidate batch (forward hooks during a functional forward of the victim at θ_0),
and the targets come from

* ``"exact"``: the client's own batch statistics, ``obs.bn_stats`` (keys ``<layer>.mean`` / ``<layer>.var``,
  present when the client shares them: ``client.share_bn_stats``);
* ``"public"``: the same statistics of a batch of public images (Yin et al.'s proxy when the exact ones are
  not reported; ``data`` names the dataset, its public split at the victim's resolution/channels);
* ``"running"``: the victim's running mean / variance buffers (meaningful for a trained victim).

The regularizer runs its own forward per restart (R forwards, first order only), in the protocol's BN mode.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gradleak.errors import UserError
from gradleak.fl.client import bn_batch_statistics, client_inputs

BNSource = Literal["exact", "public", "running"]


def bn_layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batch_bn_statistics(model: nn.Module, params: dict, buffers: dict, x: Tensor, train: bool) -> dict[str, Tensor]:
    """Differentiable per-BN-layer input mean / biased variance over the batch ``x`` (B, C, H, W)."""
    stats: dict[str, Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            def hook(_m, inp, _out, name=name):
                a = inp[0]
                dims = [0] + list(range(2, a.dim()))
                stats[f"{name}.mean"] = a.mean(dims)
                stats[f"{name}.var"] = a.var(dims, unbiased=False)
            hooks.append(mod.register_forward_hook(hook))
    model.train(train)
    try:
        functional_call(model, {**params, **{k: v.clone() for k, v in buffers.items()}}, (x,))
    finally:
        for h in hooks:
            h.remove()
    return stats


def bn_distance(stats: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
    """Σ_l ‖μ_l − μ_l*‖₂ + ‖σ²_l − σ²_l*‖₂ over the layers of ``target``."""
    terms = [(stats[k] - t).norm() for k, t in target.items()]
    return torch.stack(terms).sum()


def public_bn_statistics(model: nn.Module, obs, data: str, size: int = 64, seed: int = 0) -> dict[str, Tensor]:
    """BN statistics of ``size`` public images of dataset ``data`` (seeded draw) at θ_0."""
    from gradleak.data import load_dataset

    C, H, _ = obs.image_shape
    pub = load_dataset(data, split="public", resolution=H, channels=C)
    idx = torch.randperm(len(pub), generator=torch.Generator().manual_seed(seed), device="cpu")[:size]
    model.train(obs.protocol.bn_mode == "train")
    return bn_batch_statistics(model, obs.parameters, obs.buffers, pub.images[idx], obs.protocol)


def running_bn_statistics(model: nn.Module, obs) -> dict[str, Tensor]:
    out = {}
    for name in bn_layer_names(model):
        for key, buf in (("mean", "running_mean"), ("var", "running_var")):
            t = obs.buffers.get(f"{name}.{buf}")
            if t is None:
                raise UserError(f"attack.options.bn_source: got 'running'; the victim's BN layer {name!r} keeps no "
                                "running statistics")
            out[f"{name}.{key}"] = t
    return out


class BNRegularizer:
    """R_BN as an engine regularizer: ``reg(images (R, B, C, H, W), ctx) → (R,)``. Targets are resolved
    on first use from the search context (the observation and the victim)."""

    def __init__(self, source: BNSource = "exact", data: str | None = None, size: int = 64, seed: int = 0):
        if source not in ("exact", "public", "running"):
            raise UserError(f"attack.options.bn_source: got {source!r}; allowed: exact, public, running")
        if source == "public" and not data:
            raise UserError("attack.options.bn_data: required with bn_source 'public' (a dataset whose public "
                            "split stands in for the client's data, e.g. digits, photos)")
        self.source, self.data, self.size, self.seed = source, data, size, seed
        self.target: dict[str, Tensor] | None = None

    def resolve(self, obs, model: nn.Module) -> dict[str, Tensor]:
        layers = bn_layer_names(model)
        if not layers:
            raise UserError("attack.options.bn: the victim has no BatchNorm layers")
        if self.source == "exact":
            if obs.bn_stats is None:
                raise UserError("attack.options.bn_source: got 'exact' but the observation holds no BN statistics "
                                "(set client.share_bn_stats: true, or use bn_source: public)")
            target = dict(obs.bn_stats)
        elif self.source == "public":
            target = public_bn_statistics(model, obs, self.data, self.size, self.seed)
        else:
            target = running_bn_statistics(model, obs)
        return {k: v.detach() for k, v in target.items()}

    def __call__(self, images: Tensor, ctx) -> Tensor:
        if self.target is None:
            self.target = self.resolve(ctx.obs, ctx.model)
        train = ctx.obs.protocol.bn_mode == "train"
        out = [bn_distance(batch_bn_statistics(ctx.model, ctx.obs.parameters, ctx.obs.buffers,
                                               client_inputs(ctx.obs.protocol, x), train), self.target)
               for x in images]
        ctx.model.train(train)
        return torch.stack(out)
