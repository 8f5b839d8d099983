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
the compiled path is only ever built from this function. The first compiled call for each shape, and every
:data:`RECHECK_EVERY`-th call after it, is checked against the eager function on the same input (values and
gradients to a relative 1e-4); any failure to
trace or compile, or a mismatch, falls back to the eager function and says why in
:attr:`FastStep.fallback`. For a victim with plain 2-D convolutions the step is also traced with the small
ones written as im2col + matrix product (:mod:`gradleak.fl.matmul_conv`; oneDNN spends most of a LeNet-sized
convolution's time on fixed costs), both are compiled and checked, and the faster on a short timing is kept.
Compilation is slow on a CPU (tens of seconds to minutes for a small victim;
Inductor caches compiled graphs on disk, so a repeated attack on the same architecture and shapes is
quicker), which is why ``backend: auto`` only tries it for long searches (:mod:`gradleak.backends.policy`).

The step backends (:mod:`gradleak.backends.vmap`, :mod:`gradleak.backends.compiled`) chain ∇_x d with autograd
through the parametrization (pixels, generator latents, per-image generator copies, ROG's upsampling) and add
the search's image priors (TV, BN statistics, ‖z‖), which need no second-order term. For ``compiled`` stages on
pixels with Adam and known labels the search instead runs :class:`gradleak.backends.fused.FusedAdam`: the whole
iteration (∇_x of the matching term + TV, Adam, the box) compiled as one function with the same machinery
(:class:`Compiled`).
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections import Counter
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from gradleak.backends.inductor_workarounds import TRACE_DECOMPOSITIONS
from gradleak.fl.client import update_functional
from gradleak.fl.functional_bn import functional_model
from gradleak.fl.matmul_conv import has_eligible, matmul_convs
from gradleak.fl.protocol import Protocol

Distance = Callable[[list[Tensor], list[Tensor]], Tensor]
Penalty = Callable[[Tensor], Tensor]  # images (R, B, C, H, W) -> (R,), first-order (e.g. tv·TV)


def matching_function(model: nn.Module, protocol: Protocol, names: list[str], distance: Distance,
                      trial_view: Callable | None, soft: bool, penalty: Penalty | None = None, matmul: bool = False):
    """``(x, y, params, buffers, observed) -> ((∇_x f[, ∇_y f]), f)`` for one restart (x: (B, C, H, W)),
    f = d(U(x, y), g_obs) + penalty(x) (the search's first-order image prior, e.g. tv·TV, given as a function
    of images (1, B, C, H, W) -> (1,); none when None). ``matmul``: small convolutions as im2col + matrix
    product (:mod:`gradleak.fl.matmul_conv`; for traced graphs)."""
    model.train(protocol.bn_mode == "train")
    fmodel = functional_model(model)
    if matmul:
        fmodel = matmul_convs(fmodel)
    update = update_functional(fmodel, protocol, names)

    def one(x, y, params, buffers, observed):
        trial = [u.unsqueeze(0) for u in update(params, buffers, x, y)]
        if trial_view is not None:
            trial = trial_view(trial)
        value = distance(trial, list(observed))[0]
        return value if penalty is None else value + penalty(x.unsqueeze(0))[0]

    return torch.func.grad_and_value(one, argnums=(0, 1) if soft else 0)


RECHECK_EVERY = 100  # compiled calls between two checks against the eager function (≈ 1–2 % extra time)
TIMED_ROUNDS, TIMED_CALLS = 3, 2  # how compiled variants are timed against each other on their first shape


def variants(build: Callable[[bool], Callable], model: nn.Module, compile: bool) -> dict[str, Callable]:
    """The functions :class:`Compiled` may trace: ``build(False)`` (convolutions as they are) and, when
    compiling a model with plain 2-D convolutions, ``build(True)`` (small ones as im2col + matrix product,
    :mod:`gradleak.fl.matmul_conv`) under the name ``"matmul-conv"``."""
    out = {"conv": build(False)}
    if compile and has_eligible(model):
        out["matmul-conv"] = build(True)
    return out


class Compiled:
    """``fn(*args, *const)`` run eagerly or, with ``compile=True``, as its Inductor-compiled trace.

    The trace (``torch.func.functionalize`` + ``make_fx``) is made once per shape of ``args`` (the per-call
    inputs; ``const`` are the fixed ones: θ_0, buffers, the observed upload). ``fn`` may come in several
    ``variants`` (same signature, same mathematics, e.g. convolutions written two ways): on the first call
    for a shape each is traced and compiled, each result is checked against the eager ``variants["conv"]``
    with ``check(out, ref) -> ''`` or what differs, and of those that pass, the one with the shortest
    measured call time (:data:`TIMED_ROUNDS` interleaved rounds of :data:`TIMED_CALLS` calls, median) is
    kept (:attr:`chosen`, :attr:`timings`). Every :data:`RECHECK_EVERY`-th call after that is checked again
    (a graph that is right on the first, random images need not stay right on the images a search reaches).
    A mismatch no larger than the eager step's own change under a rounding-level change of the images is
    accepted (:meth:`_verify`: ReLU kinks); a failure to trace or compile every variant, or a real mismatch,
    sets :attr:`fallback` (why), warns once and runs eagerly from then on.
    Used by :class:`FastStep` and :class:`gradleak.backends.fused.FusedAdam`."""

    def __init__(self, variants: dict[str, Callable], const: tuple, compile: bool,
                 check: Callable[..., str], probed: Callable[[tuple], tuple] = lambda out: out):
        self.variants, self.fn = variants, variants["conv"]
        self.const, self.compile, self.check, self.probed = const, compile, check, probed
        self.compiled: dict[tuple, Callable] = {}  # by input shapes: the traced graph is shape-specialised
        self.chosen: dict[tuple, str] = {}  # the variant kept per shape
        self.timings: dict[tuple, dict[str, float]] = {}  # seconds per call of each passing variant, per shape
        self.rejected: dict[str, str] = {}  # variants that failed to compile or to match, and why
        self.calls: dict[tuple, int] = {}  # compiled calls per shape, for the periodic re-check
        self.compile_seconds = 0.0
        self.kinks = 0  # checks passed only within the eager step's own rounding spread (see _verify)
        self.fallback: str | None = None  # why a requested compilation is not used

    @property
    def active(self) -> bool:
        return self.compile and self.fallback is None

    def eager(self, *args):
        return self.fn(*args, *self.const)

    def __call__(self, *args):
        if not self.active:
            return self.eager(*args)
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        if key not in self.compiled:
            return self._first(key, args)
        self.calls[key] = self.calls.get(key, 0) + 1
        try:
            out = self.compiled[key](*args, *self.const)
        except Exception as err:  # noqa: BLE001 - any failure of the compiled graph means: run eagerly
            return self._give_up(_failed(err), args)
        if self.calls[key] % RECHECK_EVERY:
            return out
        ref = self.eager(*args)
        bad = self._verify(out, ref, args)
        if bad:
            return self._give_up(f"compiled step disagrees with the eager one ({bad})", args, ref)
        return out

    def _verify(self, out, ref, args) -> str:
        """``check`` at its own tolerance; where that fails, again at the eager step's own rounding-level
        spread at these images (:func:`rounding_spread`: twice it, at most :data:`KINK_CAP`). A ReLU victim's
        step is discontinuous at float32 rounding level wherever a pre-activation sits within rounding of 0
        (the mask flips, and with it the second-order term): there, a 10⁻⁶ relative change of the images
        moves even the eager image gradient by up to 4·10⁻² (BN ConvNet; ``docs/speed.md``), so a compiled
        graph that rounds differently lands on the other side of a kink without being wrong. A miscompiled
        graph (a dropped term or layer: relative errors 0.5–1) stays rejected."""
        bad = self.check(out, ref)
        if not bad:
            return ""
        spread = rounding_spread(self.eager, args, ref, self.probed)
        tol = min(KINK_CAP, 2 * spread)
        if tol > 1e-4 and not self.check(out, ref, tol):
            self.kinks += 1
            return ""
        return f"{bad}; the eager step itself moves by {spread:.2g} under a 1e-6 change of the images"

    def _first(self, key: tuple, args: tuple):
        """Trace, compile and check every variant for this shape; keep the fastest that passes."""
        t0 = time.perf_counter()
        full = (*args, *self.const)
        ref = self.eager(*args)
        passing: dict[str, tuple[Callable, object]] = {}
        seen: set[tuple] = set()
        for name, fn in self.variants.items():
            try:
                from torch.fx.experimental.proxy_tensor import make_fx

                # functionalized first: Inductor miscompiled the non-functional trace of the one-restart FedAvg
                # step (LeNet: distance 1.6 instead of 0.07, caught by the check); without mutations and
                # views it matches the eager step to 1e-6; max-pool backward as a gather, not Inductor's
                # scatter_add (a reader of its buffer was fused into the zero-fill: inductor_workarounds)
                graph = make_fx(torch.func.functionalize(fn, remove="mutations_and_views"),
                                decomposition_table=TRACE_DECOMPOSITIONS)(*full)
                ops = _operations(graph)
                if ops in seen:  # e.g. no convolution small enough to switch: nothing new to compile
                    continue
                seen.add(ops)
                options = inductor_options(args[0].device, len(graph.graph.nodes))
                compiled = torch.compile(graph, dynamic=False, options=options)
                with _quiet_cshim():  # compilation happens in this first call
                    out = compiled(*full)
            except Exception as err:  # noqa: BLE001 - any compiler failure means: not this variant
                self.rejected[name] = _failed(err)
                continue
            bad = self._verify(out, ref, args)
            if bad:
                self.rejected[name] = f"compiled step disagrees with the eager one ({bad})"
                continue
            passing[name] = (compiled, out)
        if not passing:
            self.compile_seconds += time.perf_counter() - t0
            return self._give_up(self.rejected.get("conv") or next(iter(self.rejected.values())), args, ref)
        if len(passing) > 1:
            self.timings[key] = _time_calls({n: c for n, (c, _) in passing.items()}, full)
            name = min(self.timings[key], key=self.timings[key].get)
        else:
            name = next(iter(passing))
        self.compiled[key], self.chosen[key] = passing[name][0], name
        self.calls[key] = 0
        self.compile_seconds += time.perf_counter() - t0
        return passing[name][1]

    def _give_up(self, why: str, args, ref=None):
        self.fallback = why
        warnings.warn(f"attack backend 'compiled': {why}; running the eager torch.func step", stacklevel=4)
        return self.eager(*args) if ref is None else ref


ROUNDING = 1e-6  # relative change of the images that probes whether the step is continuous at rounding level
KINK_CAP = 0.1  # a compiled result further than this (relative) from eager is rejected whatever the spread


def rounding_spread(fn: Callable, args: tuple, ref, probed: Callable[[tuple], tuple], draws: int = 3) -> float:
    """The largest relative change (of each probed output's largest magnitude) of ``fn(*args)`` when the
    images ``args[0]`` are multiplied by 1 + :data:`ROUNDING`·ε, ε ~ N(0, 1), over ``draws`` fixed draws."""
    x = args[0]
    gen = torch.Generator(device=x.device).manual_seed(0)
    worst = 0.0
    for _ in range(draws):
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        moved = fn(x * (1 + ROUNDING * noise), *args[1:])
        for a, b in zip(tree_leaves(probed(moved)), tree_leaves(probed(ref))):
            scale = float(b.abs().max()) if b.numel() else 0.0
            if scale > 0:
                worst = max(worst, float((a - b).abs().max()) / scale)
    return worst


def _operations(graph) -> tuple:
    """The multiset of operations of a traced graph (the same computation traced twice gives the same one,
    whatever its nodes are named)."""
    ops = Counter(str(n.target) for n in graph.graph.nodes if n.op == "call_function")
    return tuple(sorted(ops.items()))


def _failed(err: Exception) -> str:
    msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    return f"torch.compile failed: {type(err).__name__}: {msg}"


def _time_calls(fns: dict[str, Callable], full: tuple) -> dict[str, float]:
    """Median seconds per call of each function on ``full``, interleaved (:data:`TIMED_ROUNDS` rounds of
    :data:`TIMED_CALLS` calls each, after one untimed call)."""
    times: dict[str, list[float]] = {n: [] for n in fns}
    for fn in fns.values():
        fn(*full)
    for _ in range(TIMED_ROUNDS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(TIMED_CALLS):
                fn(*full)
            times[name].append((time.perf_counter() - t0) / TIMED_CALLS)
    return {n: sorted(t)[len(t) // 2] for n, t in times.items()}


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
        fns = variants(lambda matmul: restarts_function(
            matching_function(model, protocol, self.names, distance, trial_view, soft, matmul=matmul)), model, compile)
        self.run = Compiled(fns, (self.params, self.buffers, self.observed), compile,
                            lambda out, ref, rtol=1e-4: _mismatch(self._split(out), self._split(ref), rtol))

    @property
    def compile(self) -> bool:
        """Whether compilation was asked for (it may since have fallen back: :attr:`fallback`)."""
        return self.run.compile

    @property
    def fallback(self) -> str | None:
        return self.run.fallback

    @property
    def compile_seconds(self) -> float:
        return self.run.compile_seconds

    @property
    def backend(self) -> str:
        return "compiled" if self.run.active else "vmap"

    def _split(self, out) -> tuple[Tensor, Tensor, Tensor | None]:
        grads, value = out
        if self.soft:
            return value, grads[0], grads[1]
        return value, grads, None

    def eager_step(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The step without compilation (same outputs as calling it)."""
        return self._split(self.run.eager(images.detach(), labels.detach()))

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        return self._split(self.run(images.detach(), labels.detach()))


def restarts_function(grad_fn: Callable) -> Callable:
    """``grad_fn`` over one restart -> the same over R restarts (leading dimension of images and labels):
    ``vmap``, or for one restart the function itself without the vmap layer (its dispatch costs ~20 % here)."""
    batched = torch.vmap(grad_fn, in_dims=(0, 0, None, None, None))

    def over_restarts(images, labels, params, buffers, observed):
        if images.shape[0] != 1:
            return batched(images, labels, params, buffers, observed)
        grads, value = grad_fn(images[0], labels[0], params, buffers, observed)
        grads = tuple(g.unsqueeze(0) for g in grads) if isinstance(grads, tuple) else grads.unsqueeze(0)
        return grads, value.unsqueeze(0)

    return over_restarts


CPP_WRAPPER_MAX_NODES = 2500  # larger traces keep Inductor's Python wrapper (see inductor_options)


def inductor_options(device: torch.device, nodes: int = 0) -> dict:
    """Inductor settings for the compiled step. On a CPU, ``cpp_wrapper`` for traces of at most
    :data:`CPP_WRAPPER_MAX_NODES` nodes: the compiled graph's kernel calls are made from generated C++ instead
    of a Python wrapper, which is what an attack step of many small kernels spends its time on (LeNet batch 1,
    FedSGD, 1 thread: 2.4× the textbook loop with it, 1.8× without; ``benchmarks/speed.py``). A larger trace
    (ConvNet FedAvg τ = 5: 6 400 nodes; ResNet-18: 3 000–20 000) is compute-bound, so the wrapper's overhead
    does not matter there, while gcc spent over 20 minutes on the C++ wrapper of the ConvNet's FedAvg step."""
    return {"cpp_wrapper": True} if device.type == "cpu" and nodes <= CPP_WRAPPER_MAX_NODES else {}


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
