"""BatchNorm written from its mean and variance, so ``torch.func`` transforms can differentiate it twice.

    y = γ · (x − μ) / √(σ² + ε) + β                                    (Ioffe & Szegedy, 2015, Alg. 1)

with μ, σ² the biased moments of the input over every dimension but the channel one (train mode, or a
layer without running statistics) or the running statistics (eval mode). Composed only of mean, sub, mul
and rsqrt, whose vmap batching rules and double backward are plain, this gives the same numbers as
``nn.BatchNorm*d`` (tested against torch's layer and against finite differences of the second-order
term), whereas ``torch.vmap`` over ``torch.func.grad`` through ``torch.nn.functional.batch_norm`` in train
mode gives a wrong second-order term in this torch.

Running statistics are *not* updated: a client's upload never depends on them in train mode (every local
step normalises with its own batch moments), and the attacker's re-run only needs the upload.
:func:`functional_model` returns a copy of a model with every BatchNorm swapped for this layer, with the
same parameter and buffer names, so ``functional_call`` with the original state dict works unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from gradleak.fl.swapped import SwappedCopies


class FunctionalBatchNorm(nn.Module):
    """Drop-in for ``nn.BatchNorm1d/2d/3d`` (same parameters and buffers), without in-place updates."""

    def __init__(self, bn: _BatchNorm):
        super().__init__()
        self.eps, self.affine = bn.eps, bn.affine
        self.track_running_stats = bn.track_running_stats
        self.num_features = bn.num_features
        if bn.affine:
            self.weight, self.bias = bn.weight, bn.bias
        if bn.track_running_stats:
            self.register_buffer("running_mean", bn.running_mean)
            self.register_buffer("running_var", bn.running_var)
            self.register_buffer("num_batches_tracked", bn.num_batches_tracked)
        self.train(bn.training)

    def forward(self, x: Tensor) -> Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.training or not self.track_running_stats:
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dims, keepdim=True)
            centred = x - mean
            var = (centred * centred).mean(dims, keepdim=True)
            y = centred * torch.rsqrt(var + self.eps)
        else:
            y = (x - self.running_mean.view(shape)) * torch.rsqrt(self.running_var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


_COPIES = SwappedCopies(lambda m: FunctionalBatchNorm(m) if isinstance(m, _BatchNorm) else None)


def functional_model(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no BatchNorm, else a (cached) copy with every BatchNorm replaced by
    :class:`FunctionalBatchNorm`. Meant for ``functional_call``: the copy's own tensor values are those of
    ``model`` at the time of the first call; pass the state explicitly. The copy follows ``model``'s
    train/eval mode at each call."""
    return _COPIES(model) if has_batchnorm(model) else model
