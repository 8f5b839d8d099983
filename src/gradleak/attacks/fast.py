"""The gradient-matching part of an attack step as one ``torch.func`` function, optionally compiled.

For R restarts of B images each, :class:`FastStep` computes in one call

    d_r = d(U_θ(x_r, y_r), g_obs)   and   ∇_{x_r} d_r  (and ∇_{y_r} d_r for soft labels),   r = 1…R,

as ``vmap_r( grad_and_value_x( d ∘ U ) )``, where U is the client's own update written with
``torch.func.grad`` (:func:`gradleak.fl.client.update_functional`): the second-order term (the gradient of
a gradient) is taken by nesting ``torch.func.grad``, never by ``torch.autograd.grad(create_graph=True)``.
``vmap`` over restarts folds them into the batch dimension of every layer (each convolution sees an R·B
batch) instead of a Python loop. BatchNorm victims run with
:class:`gradleak.fl.functional_bn.FunctionalBatchNorm`, which vmap differentiates twice correctly.

``compile=True`` traces this function once per input shape into one flat graph of aten operations
(``torch.func.functionalize`` + ``make_fx``: the vmap and both grad transforms are resolved while tracing) and compiles that graph with
``torch.compile`` (Inductor; on a CPU with the C++ wrapper, :func:`inductor_options`). Compiling nested
``torch.func.grad`` is correct; compiling a step that calls
``torch.autograd.grad(create_graph=True)`` is not (it silently drops the second-order term), which is why
the compiled path is only ever built from this function. The first compiled call for each shape is checked
against the eager function on the same input (values and gradients to a relative 1e-4); any failure to
trace or compile, or a mismatch, falls back to the eager function and says why in
:attr:`FastStep.fallback`. Compilation is slow on a CPU (tens of seconds to minutes for a small victim;
Inductor caches compiled graphs on disk, so a repeated attack on the same architecture and shapes is
quicker), which is why ``backend: auto`` only tries it for long searches.

The engine (:mod:`gradleak.attacks.engine`) chains ∇_x d with autograd through the parametrization
(pixels, generator latents, per-image generator copies, ROG's upsampling) and adds the image priors
(TV, BN statistics, ‖z‖), which need no second-order term.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from typing import Callable

import torch
from torch import Tensor, nn

from gradleak.fl.client import update_functional
from gradleak.fl.functional_bn import functional_model
from gradleak.fl.protocol import Protocol

Distance = Callable[[list[Tensor], list[Tensor]], Tensor]


def matching_function(model: nn.Module, protocol: Protocol, names: list[str], distance: Distance,
                      trial_view: Callable | None, soft: bool):
    """``(params, buffers, observed, x, y) -> ((∇_x d[, ∇_y d]), d)`` for one restart (x: (B, C, H, W))."""
    model.train(protocol.bn_mode == "train")
    fmodel = functional_model(model)
    update = update_functional(fmodel, protocol, names)

    def one(x, y, params, buffers, observed):
        trial = [u.unsqueeze(0) for u in update(params, buffers, x, y)]
        if trial_view is not None:
            trial = trial_view(trial)
        return distance(trial, list(observed))[0]

    return torch.func.grad_and_value(one, argnums=(0, 1) if soft else 0)


class FastStep:
    """``step(images (R,B,C,H,W), labels (R,B) or (R,B,K)) -> (d (R,), ∇_images d, ∇_labels d or None)``."""

    def __init__(self, model: nn.Module, protocol: Protocol, params: dict[str, Tensor], buffers: dict[str, Tensor],
                 observed: list[Tensor], distance: Distance, trial_view: Callable | None = None,
                 soft: bool = False, compile: bool = False):
        self.names = list(params)
        self.params = {n: p.detach() for n, p in params.items()}
        self.buffers = {n: b.detach() for n, b in buffers.items()}
        self.observed = tuple(o.detach() for o in observed)
        self.soft = soft
        grad_fn = matching_function(model, protocol, self.names, distance, trial_view, soft)
        batched = torch.vmap(grad_fn, in_dims=(0, 0, None, None, None))

        def eager(images, labels, params, buffers, observed):
            if images.shape[0] != 1:
                return batched(images, labels, params, buffers, observed)
            # one restart: the same function without the vmap layer (its dispatch costs ~20 % here)
            grads, value = grad_fn(images[0], labels[0], params, buffers, observed)
            grads = tuple(g.unsqueeze(0) for g in grads) if isinstance(grads, tuple) else grads.unsqueeze(0)
            return grads, value.unsqueeze(0)

        self.eager = eager
        self.compile = compile
        self.compiled: dict[tuple, Callable] = {}  # by input shapes: the traced graph is shape-specialised
        self.compile_seconds = 0.0
        self.fallback: str | None = None  # why a requested compilation is not used

    @property
    def backend(self) -> str:
        return "compiled" if self.compile and self.fallback is None else "vmap"

    def _split(self, out) -> tuple[Tensor, Tensor, Tensor | None]:
        grads, value = out
        if self.soft:
            return value, grads[0], grads[1]
        return value, grads, None

    def _eager(self, images: Tensor, labels: Tensor):
        return self._split(self.eager(images, labels, self.params, self.buffers, self.observed))

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        images, labels = images.detach(), labels.detach()
        if not self.compile or self.fallback is not None:
            return self._eager(images, labels)
        key = (tuple(images.shape), tuple(labels.shape), labels.dtype, images.dtype, images.device)
        args = (images, labels, self.params, self.buffers, self.observed)
        first = key not in self.compiled
        try:
            if first:
                t0 = time.perf_counter()
                from torch.fx.experimental.proxy_tensor import make_fx

                # functionalized first: Inductor miscompiled the non-functional trace of the one-restart FedAvg
                # step (LeNet: distance 1.6 instead of 0.07, caught by the check below); without mutations and
                # views it matches the eager step to 1e-6
                graph = make_fx(torch.func.functionalize(self.eager, remove="mutations_and_views"))(*args)
                self.compiled[key] = torch.compile(graph, dynamic=False, options=inductor_options(images.device))
                with _quiet_cshim():  # compilation happens in this first call
                    out = self._split(self.compiled[key](*args))
                self.compile_seconds += time.perf_counter() - t0
            else:
                out = self._split(self.compiled[key](*args))
        except Exception as err:  # noqa: BLE001 - any compiler failure means: run eagerly
            msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            return self._give_up(f"torch.compile failed: {type(err).__name__}: {msg}", images, labels)
        if first:
            bad = _mismatch(out, self._eager(images, labels))
            if bad:
                return self._give_up(f"compiled step disagrees with the eager one ({bad})", images, labels)
        return out

    def _give_up(self, why: str, images, labels):
        self.fallback = why
        warnings.warn(f"attack backend 'compiled': {why}; running the eager torch.func step", stacklevel=3)
        return self._eager(images, labels)


def inductor_options(device: torch.device) -> dict:
    """Inductor settings for the compiled step. On a CPU, ``cpp_wrapper``: the compiled graph's kernel
    calls are made from generated C++ instead of a Python wrapper, which is what an attack step of many small
    kernels spends its time on (LeNet batch 1, FedSGD, 1 thread: 2.4× the textbook loop with it, 1.8×
    without; ``benchmarks/speed.py``)."""
    return {"cpp_wrapper": True} if device.type == "cpu" else {}


class _CshimFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "missing a c-shim implementation" not in record.getMessage()


@contextlib.contextmanager
def _quiet_cshim():
    """Drop Inductor's one-line-per-op notice that the C++ wrapper calls an op (``slice_copy`` /
    ``select_copy`` from functionalization) through its proxy executor — expected here, and dozens of lines
    on the user's terminal otherwise; every other Inductor message passes."""
    log, flt = logging.getLogger("torch._inductor.ir"), _CshimFilter()
    log.addFilter(flt)
    try:
        yield
    finally:
        log.removeFilter(flt)


def _mismatch(out, ref, rtol: float = 1e-4) -> str:
    """Empty if every tensor of ``out`` equals ``ref``'s to ``rtol`` of its largest magnitude, else which."""
    for name, a, b in zip(("distance", "image gradient", "label gradient"), out, ref):
        if a is None and b is None:
            continue
        scale = float(b.abs().max()) if b.numel() else 0.0
        err = float((a - b).abs().max()) if b.numel() else 0.0
        if not err <= rtol * scale + 1e-12:
            return f"{name}: max error {err:.3g} at scale {scale:.3g}"
    return ""
