"""One whole InvertGrad-style iteration as one (compiled) function: gradient matching, TV, signed Adam, box.

For pixel images x (R restarts of B images), known labels y and one Adam state (m, v, step t):

    f_r   = d(U_θ(x_r, y_r), g_obs) + tv·TV(x_r),      g = ∇_x f  (sign(g) for signed Adam),
    m'    = m + (1 − β1)(g − m),   v' = β2 v + (1 − β2) g²,
    x'    = x − lr/(1 − β1^t) · m' / (√v' / √(1 − β2^t) + ε),   clamped to [0, 1] with the box,

i.e. ∇_x of Geiping et al. (2020), Eq. 4 (cosine distance + TV), and exactly the arithmetic of
``torch.optim.Adam``'s single-tensor update (``torch/optim/adam.py`` ``_single_tensor_adam``, not
capturable; β = (0.9, 0.999), ε = 1e-8, no weight decay) written out of place, so that ∇_x f, the Adam update
and the projection are traced and compiled together (:class:`gradleak.backends.fast.Compiled`) instead of a
compiled ∇_x d followed by ~4 ms of small eager operations per iteration (TV and its autograd, the autograd
chain through the parametrization, ``sign``, ``Adam.step``, the clamp). ``lr`` and ``t`` are 0-dim float64
tensors, so a learning-rate schedule does not recompile. The ``compiled`` step backend offers it
(:meth:`gradleak.backends.compiled.CompiledStep.fused_adam`) for the search's stages that fit; every other stage
runs the optimiser loop.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from gradleak.backends.fast import Compiled, Penalty, _mismatch, matching_function, restarts_function, variants
from gradleak.fl.protocol import Protocol

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, which the engine uses


def fused_adam_function(grad_fn: Callable, signed: bool, box: bool) -> Callable:
    """``(x, m, v, t, lr, labels, params, buffers, observed) -> (x', m', v', f (R,), ∇_x f)``, t the new step
    count (1 on the first step); ``grad_fn`` = :func:`restarts_function` of :func:`matching_function`."""

    def step(x, exp_avg, exp_avg_sq, t, lr, labels, params, buffers, observed):
        grad, value = grad_fn(x, labels, params, buffers, observed)
        g = grad.sign() if signed else grad
        exp_avg = torch.lerp(exp_avg, g, 1 - BETA1)
        exp_avg_sq = exp_avg_sq.mul(BETA2).addcmul(g, g, value=1 - BETA2)
        bias_correction1 = 1 - BETA1 ** t  # float64, as torch's Python-float step arithmetic
        bias_correction2_sqrt = (1 - BETA2 ** t).sqrt()
        step_size = (lr / bias_correction1).to(x.dtype)
        denom = exp_avg_sq.sqrt() / bias_correction2_sqrt.to(x.dtype) + EPS
        x = x - step_size * exp_avg / denom
        if box:
            x = x.clamp(0, 1)
        return x, exp_avg, exp_avg_sq, value, grad

    return step


class FusedAdam:
    """``step(x, m, v, t, lr, labels) -> (x', m', v', f)`` for one engine stage (see the module docstring);
    ``compile=True`` runs it compiled, checked against the eager function on the first call per shape."""

    def __init__(self, model: nn.Module, protocol: Protocol, params: dict[str, Tensor], buffers: dict[str, Tensor],
                 observed: list[Tensor], distance: Callable, trial_view: Callable | None, penalty: Penalty | None,
                 signed: bool, box: bool, compile: bool = False):
        names = list(params)

        def build(matmul: bool) -> Callable:
            return fused_adam_function(restarts_function(
                matching_function(model, protocol, names, distance, trial_view, False, penalty, matmul=matmul)), signed, box)
        const = ({n: p.detach() for n, p in params.items()}, {n: b.detach() for n, b in buffers.items()},
                 tuple(o.detach() for o in observed))
        self.run = Compiled(variants(build, model, compile), const, compile, _check, probed=lambda out: out[3:])

    @property
    def fallback(self) -> str | None:
        return self.run.fallback

    def __call__(self, x: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, t: Tensor, lr: Tensor,
                 labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.run(x, exp_avg, exp_avg_sq, t, lr, labels)[:4]

    def run_stage(self, x: Tensor, lrs: list[float], labels: Tensor,
                  each: Callable[[int, Tensor], None] = lambda i, loss: None) -> tuple[Tensor, list[Tensor]]:
        """A whole Adam stage from pixels ``x`` with the learning rate ``lrs[i]`` at iteration i (the same
        numbers as ``torch.optim.Adam`` under the schedule: its state starts at zero, the box after each step).
        Returns the final images and the per-iteration objective before each step (R,); ``each(i, loss)`` is
        called after every iteration (progress)."""
        x = x.detach()
        exp_avg, exp_avg_sq = torch.zeros_like(x), torch.zeros_like(x)
        losses: list[Tensor] = []
        for i, lr in enumerate(lrs):
            t = torch.tensor(float(i + 1), dtype=torch.float64, device=x.device)
            lr_t = torch.tensor(lr, dtype=torch.float64, device=x.device)
            x, exp_avg, exp_avg_sq, loss_now = self(x, exp_avg, exp_avg_sq, t, lr_t, labels.detach())
            losses.append(loss_now)
            each(i, loss_now)
        return x, losses


def _check(out: tuple, ref: tuple, rtol: float = 1e-4) -> str:
    """The compiled step against the eager one: f and ∇_x f to ``rtol`` of their largest magnitude (as
    FastStep's check); x', m', v' likewise, except where |∇_x f| is itself within that tolerance of 0, where
    the Adam direction (≈ sign ∇_x f on the first steps, signed or not) is not determined by the check's
    precision."""
    x, m, v, value, grad = out
    rx, rm, rv, rvalue, rgrad = ref
    bad = _mismatch((value, grad), (rvalue, rgrad), rtol)
    if bad:
        return bad
    firm = rgrad.abs() > rtol * float(rgrad.abs().max())
    for name, a, b in (("images", x, rx), ("Adam first moment", m, rm), ("Adam second moment", v, rv)):
        scale = float(b.abs().max())
        err = float((a - b)[firm].abs().max()) if bool(firm.any()) else 0.0
        if not err <= rtol * scale + 1e-12:
            return f"{name}: max error {err:.3g} at scale {scale:.3g}"
    return ""
