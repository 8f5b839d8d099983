"""The client's computation, written once and used both to simulate the client and, differentiably,
by the attacker (``create_graph=True``) — so the attacker's forward model is the client's own code.

All functions are functional over ``params``/``buffers`` dicts via ``torch.func.functional_call``.
Labels ``y`` are class indices (B,) or class probabilities (B, K) (DLG's soft dummy labels).
"""
from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from gradleak.errors import bad_value
from gradleak.fl.protocol import Protocol
from gradleak.fl.protocols import to_delta
from gradleak.userimport import import_callable

Params = dict[str, Tensor]


def split_state(model: nn.Module) -> tuple[Params, Params]:
    """Detached copies of the model's parameters and buffers (θ_0 as the server sends it)."""
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    return params, buffers


def client_inputs(protocol: Protocol | None, x: Tensor) -> Tensor:
    """The client's input normalization N(x) = (x − mean_c) / std_c per channel (identity when unset)."""
    if protocol is None or protocol.mean is None:
        return x
    mean = torch.tensor(protocol.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(protocol.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


@functools.lru_cache(maxsize=16)
def _import_loss(path: str):
    return import_callable("client.loss", path, "an importable 'package.module:function' path to a callable "
                                                "(logits, labels) -> scalar")


def client_loss(protocol: Protocol | None, logits: Tensor, y: Tensor) -> Tensor:
    """The client's loss: mean cross-entropy (with ``label_smoothing`` and ``class_weights`` as
    ``torch.nn.CrossEntropyLoss``: weighted mean Σ w_{y_i} ℓ_i / Σ w_{y_i}), or ``protocol.loss`` imported."""
    if protocol is None or protocol.loss == "cross_entropy":
        weight = None
        if protocol is not None and protocol.class_weights is not None:
            if len(protocol.class_weights) != logits.shape[-1]:
                raise bad_value("client.class_weights", list(protocol.class_weights),
                                f"one weight per class ({logits.shape[-1]})")
            weight = torch.tensor(protocol.class_weights, dtype=logits.dtype, device=logits.device)
        smoothing = protocol.label_smoothing if protocol is not None else 0.0
        return F.cross_entropy(logits, y, weight=weight, label_smoothing=smoothing)
    return _import_loss(protocol.loss)(logits, y)


def batch_loss(model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor,
               protocol: Protocol | None = None) -> Tensor:
    """The client's mini-batch loss ℓ(f_θ(N(x)), y) (plain mean cross-entropy when ``protocol`` is None)."""
    return client_loss(protocol, functional_call(model, {**params, **buffers}, (client_inputs(protocol, x),)), y)


def _set_mode(model: nn.Module, protocol: Protocol) -> None:
    model.train(protocol.bn_mode == "train")


def client_round(model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor, protocol: Protocol,
                 create_graph: bool = False) -> tuple[Params, dict[str, Params]]:
    """One client's round, dispatched to its registered protocol (:mod:`gradleak.fl.protocols`): the model
    upload (g for FedSGD; θ_0 − θ_τ, θ_τ − θ_0 or θ_τ by ``protocol.update`` otherwise) and the protocol's
    extra uploads (SCAFFOLD's ``control_update``), computed with ``protocol.state`` (zeros when unset).

    With ``create_graph=True`` the result is differentiable w.r.t. ``x`` (and ``y``) through all τ
    unrolled steps — the attacker's re-run. BN running statistics are updated on copies (train mode),
    so ``buffers`` is left untouched.
    """
    _set_mode(model, protocol)
    names = list(params)
    rule = protocol.rule
    p0 = {n: t if t.requires_grad else t.detach().requires_grad_() for n, t in params.items()}
    b = {n: t.clone() for n, t in buffers.items()}
    full = tuple(range(x.shape[0]))
    state = protocol.state_or_initial(params)

    def grad(theta: Params, idx: tuple) -> Params:
        xb, yb = (x, y) if idx == full else (x[list(idx)], y[list(idx)])
        loss = batch_loss(model, theta, b, xb, yb, protocol)
        return dict(zip(names, torch.autograd.grad(loss, [theta[n] for n in names], create_graph=create_graph)))

    def cut(theta: Params, opt: dict) -> tuple[Params, dict]:
        return ({n: t.detach().requires_grad_() for n, t in theta.items()},
                {k: v.detach() if isinstance(v, Tensor) else v for k, v in opt.items()})

    up = rule.run(protocol, p0, grad, x.shape[0], state, None if create_graph else cut)
    up = up if create_graph else {n: d.detach() for n, d in up.items()}
    extra = rule.extra_uploads(protocol, to_delta(up, params, protocol.update), x.shape[0], state)
    return up, extra


def client_update(model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor, protocol: Protocol,
                  create_graph: bool = False) -> Params:
    """The model upload of one client (:func:`client_round` without the extra uploads)."""
    return client_round(model, params, buffers, x, y, protocol, create_graph)[0]


def update_functional(model: nn.Module, protocol: Protocol, names: list[str]):
    """``(params, buffers, x, y) -> tuple(upload)`` built from ``torch.func.grad``, for ``vmap``; the
    protocol's state (``protocol.state``) enters as a constant."""
    def loss(p, b, xb, yb):
        return batch_loss(model, p, b, xb, yb, protocol)

    grad = torch.func.grad(loss)
    rule = protocol.rule

    def update(params, buffers, x, y):
        full = tuple(range(x.shape[0]))
        state = protocol.state_or_initial({n: params[n] for n in names})

        def g(theta, idx):
            xb, yb = (x, y) if idx == full else (x[list(idx)], y[list(idx)])
            out = grad({**params, **theta}, buffers, xb, yb)
            return {n: out[n] for n in names}

        up = rule.run(protocol, {n: params[n] for n in names}, g, x.shape[0], state)
        return tuple(up[n] for n in names)

    return update


def batched_update(model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor, protocol: Protocol,
                   backend: Literal["loop", "vmap", "compiled", "auto"] = "loop") -> Params:
    """The attacker's differentiable re-run for R restarts at once.

    ``x``: (R, B, C, H, W); ``y``: (R, B) class indices or (R, B, K) probabilities.
    Returns the upload with a leading restart dimension, each entry (R, *param_shape).
    ``backend="loop"`` calls :func:`client_update` per restart with ``torch.autograd.grad``;
    ``backend="vmap"`` vectorises ``torch.func.grad`` over restarts (``"compiled"``/``"auto"`` mean the same
    here: the engine's fast step, :mod:`gradleak.backends`, is where those differ). Both give the same
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


def bn_batch_statistics(model: nn.Module, params: Params, buffers: Params, x: Tensor,
                        protocol: Protocol | None = None) -> Params:
    """Per BatchNorm layer, the mean and (biased) variance of its input over the batch — what a client
    shares when it sends BN statistics (GradInversion's assumption). Keys ``<layer>.mean``/``<layer>.var``.
    ``x`` is normalized as the client does (``protocol``) first."""
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
            functional_call(model, {**params, **{k: v.clone() for k, v in buffers.items()}},
                            (client_inputs(protocol, x),))
    finally:
        for h in hooks:
            h.remove()
    return stats
