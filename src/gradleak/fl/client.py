"""The client's computation, written once and used both to simulate the client and, differentiably,
by the attacker (``create_graph=True``) — so the attacker's forward model is the client's own code.

All functions are functional over ``params``/``buffers`` dicts via ``torch.func.functional_call``.
Labels ``y`` are class indices (B,) or class probabilities (B, K) (DLG's soft dummy labels).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from gradleak.fl.protocol import Protocol

Params = dict[str, Tensor]


def split_state(model: nn.Module) -> tuple[Params, Params]:
    """Detached copies of the model's parameters and buffers (θ_0 as the server sends it)."""
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    return params, buffers


def batch_loss(model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of the batch, ℓ = (1/B) Σ_i CE(f_θ(x_i), y_i)."""
    return F.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y)


def _set_mode(model: nn.Module, protocol: Protocol) -> None:
    model.train(protocol.bn_mode == "train")


def client_update(
    model: nn.Module,
    params: Params,
    buffers: Params,
    x: Tensor,
    y: Tensor,
    protocol: Protocol,
    create_graph: bool = False,
) -> Params:
    """The upload of one client: g (FedSGD) or Δ = θ_0 − θ_τ (FedAvg), see ``protocol``.

    With ``create_graph=True`` the result is differentiable w.r.t. ``x`` (and ``y``) through all τ
    unrolled steps — the attacker's re-run. BN running statistics are updated on copies (train mode),
    so ``buffers`` is left untouched.
    """
    _set_mode(model, protocol)
    names = list(params)
    p = {n: t if t.requires_grad else t.detach().requires_grad_() for n, t in params.items()}
    b = {n: t.clone() for n, t in buffers.items()}
    steps = protocol.schedule(x.shape[0])
    full = tuple(range(x.shape[0]))
    for idx in steps:
        xb, yb = (x, y) if idx == full else (x[list(idx)], y[list(idx)])
        loss = batch_loss(model, p, b, xb, yb)
        grads = torch.autograd.grad(loss, [p[n] for n in names], create_graph=create_graph)
        if protocol.kind == "fedsgd":
            return dict(zip(names, grads if create_graph else [g.detach() for g in grads]))
        if create_graph:
            p = {n: p[n] - protocol.lr * g for n, g in zip(names, grads)}
        else:
            p = {n: (p[n] - protocol.lr * g).detach().requires_grad_() for n, g in zip(names, grads)}
    delta = {n: params[n].detach() - p[n] for n in names}
    return delta if create_graph else {n: d.detach() for n, d in delta.items()}


def update_functional(model: nn.Module, protocol: Protocol, names: list[str]):
    """``(params, buffers, x, y) -> tuple(upload)`` built from ``torch.func.grad``, for ``vmap``."""
    def loss(p, b, xb, yb):
        return batch_loss(model, p, b, xb, yb)

    grad = torch.func.grad(loss)

    def update(params, buffers, x, y):
        p = params
        full = tuple(range(x.shape[0]))
        for idx in protocol.schedule(x.shape[0]):
            xb, yb = (x, y) if idx == full else (x[list(idx)], y[list(idx)])
            g = grad(p, buffers, xb, yb)
            if protocol.kind == "fedsgd":
                return tuple(g[n] for n in names)
            p = {n: p[n] - protocol.lr * g[n] for n in names}
        return tuple(params[n] - p[n] for n in names)

    return update


def batched_update(
    model: nn.Module,
    params: Params,
    buffers: Params,
    x: Tensor,
    y: Tensor,
    protocol: Protocol,
    backend: Literal["loop", "vmap", "compiled", "auto"] = "loop",
) -> Params:
    """The attacker's differentiable re-run for R restarts at once.

    ``x``: (R, B, C, H, W); ``y``: (R, B) class indices or (R, B, K) probabilities.
    Returns the upload with a leading restart dimension, each entry (R, *param_shape).
    ``backend="loop"`` calls :func:`client_update` per restart with ``torch.autograd.grad``;
    ``backend="vmap"`` vectorises ``torch.func.grad`` over restarts (``"compiled"``/``"auto"`` mean the same
    here: the engine's fast step, :mod:`gradleak.attacks.fast`, is where those differ). Both give the same
    numbers (tested), BatchNorm included: the vmap path runs a copy of the model whose BatchNorm layers are
    :class:`gradleak.fl.functional_bn.FunctionalBatchNorm` (torch's own train-mode BN gives a wrong
    second-order term under vmap in this torch). ``benchmarks/speed.py`` measures which is faster.
    """
    R = x.shape[0]
    ys = y
    names = list(params)
    if backend == "loop":
        ups = [client_update(model, params, buffers, x[r], ys[r], protocol, create_graph=True) for r in range(R)]
        return {n: torch.stack([u[n] for u in ups]) for n in names}
    from gradleak.fl.functional_bn import functional_model

    _set_mode(model, protocol)
    fmodel = functional_model(model)
    fn = update_functional(fmodel, protocol, names)
    bufs = {n: t.expand(R, *t.shape).clone() for n, t in buffers.items()}
    out = torch.vmap(fn, in_dims=(None, 0, 0, 0))({n: p.detach() for n, p in params.items()}, bufs, x, ys)
    return dict(zip(names, out))


def bn_batch_statistics(model: nn.Module, params: Params, buffers: Params, x: Tensor) -> Params:
    """Per BatchNorm layer, the mean and (biased) variance of its input over the batch — what a client
    shares when it sends BN statistics (GradInversion's assumption). Keys ``<layer>.mean``/``<layer>.var``."""
    stats: Params = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            def hook(_m, inp, _out, name=name):
                a = inp[0].detach()
                dims = [0] + list(range(2, a.dim()))
                stats[f"{name}.mean"] = a.mean(dims)
                stats[f"{name}.var"] = a.var(dims, unbiased=False)
            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            functional_call(model, {**params, **{k: v.clone() for k, v in buffers.items()}}, (x,))
    finally:
        for h in hooks:
            h.remove()
    return stats
