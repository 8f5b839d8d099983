"""The one interface every step backend implements.

The search (:mod:`gradleak.attacks.engine`) minimises d(U_θ(x, y), g_obs) + Σ_k λ_k R_k(x) over images x
given by a parametrization. What differs between backends is only how the gradient-matching term

    d_r = d( view(U_θ(x_r, y_r)), g_obs ),   r = 1…R restarts,

and its gradient are computed: U_θ is the client's own update (itself a gradient), so ∇_x d_r is a
second-order quantity. A backend is a registered :class:`StepBackend`: given the :class:`MatchingProblem` (the
victim, θ_0, the observed upload, the distance and the attacker's view of a defense) it states whether it can
compute it (:meth:`StepBackend.unsupported`) and builds the per-iteration :class:`Step`. Which backend runs is
the execution setting (:mod:`gradleak.backends.setting`), resolved once by :func:`gradleak.backends.policy.choose`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

import torch
from torch import Tensor, nn

from gradleak.registry import Registry

if TYPE_CHECKING:
    from gradleak.fl.observation import Observation

BACKENDS = Registry("backend")

Distance = Callable[[list[Tensor], list[Tensor]], Tensor]
Regularizer = Callable[[Tensor], "Tensor | float"]  # images (R, B, C, H, W) -> (R,) or 0.0


@dataclass
class MatchingProblem:
    """What a step computes: ``distance(trial_view(U_θ(x, y)), observed)`` per restart, for the upload ``obs``
    read as Δ = θ_0 − θ_τ. ``soft``: the labels are learnt soft labels (R, B, K), whose gradient is wanted too."""

    model: nn.Module
    obs: "Observation"
    observed: list[Tensor]
    distance: Distance
    trial_view: Callable[[list[Tensor]], list[Tensor]] | None = None
    soft: bool = False

    @property
    def names(self) -> list[str]:
        return list(self.obs.parameters)


class Step:
    """One backend's step for one search. ``name`` is the backend that really runs (a ``compiled`` step that had
    to fall back to eager torch.func reports ``vmap``)."""

    name: str = ""

    def matching(self, images: Tensor, labels: Tensor, eager: bool = False) -> Tensor:
        """d per restart (R,) for images (R, B, C, H, W) and labels (R, B) or (R, B, K). ``eager``: a one-off
        evaluation, never compile for it."""
        raise NotImplementedError

    def value_and_grads(self, images: Tensor, labels: Tensor, variables: list[Tensor],
                        regularizer: Regularizer) -> tuple[Tensor, tuple]:
        """The objective d + regularizer(images) per restart (R,), detached, and its gradient w.r.t.
        ``variables`` (what ``images``/``labels`` were computed from; None where one does not reach)."""
        raise NotImplementedError

    def fused_adam(self, signed: bool, box: bool, penalty: Callable[[Tensor], Tensor] | None):
        """A whole Adam iteration on pixels as one function (:class:`gradleak.backends.fused.FusedAdam`), where
        this backend has one; None otherwise (the search runs its optimiser loop)."""
        return None

    @property
    def one_off_eager(self) -> bool:
        """Whether a one-off evaluation should run eagerly (its compilation would cost more than it saves)."""
        return False

    def timings(self) -> dict[str, float]:
        """Seconds per call of what this step timed against each other (compiled variants), for the record."""
        return {}


class StepBackend:
    """A registered way of computing the matching term (``@BACKENDS.register(name)``)."""

    name: ClassVar[str] = ""

    def unsupported(self, problem: MatchingProblem) -> str:
        """Empty if this backend computes ``problem`` exactly, else why not (the policy then runs ``loop``)."""
        return ""

    def step(self, problem: MatchingProblem) -> Step:
        raise NotImplementedError


class FunctionalStep(Step):
    """The steps built on :class:`gradleak.backends.fast.FastStep` (torch.func, optionally compiled): ∇_x d (and
    ∇_y d for soft labels) comes from torch.func and is chained through the parametrization by autograd, together
    with the first-order regularizers."""

    def __init__(self, problem: MatchingProblem, compile: bool):
        from gradleak.backends.fast import FastStep

        obs = problem.obs
        self.problem = problem
        self.fast = FastStep(problem.model, obs.protocol, obs.parameters, obs.buffers, problem.observed,
                             problem.distance, problem.trial_view, soft=problem.soft, compile=compile)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.fast.backend

    def matching(self, images: Tensor, labels: Tensor, eager: bool = False) -> Tensor:
        return (self.fast.eager_step if eager else self.fast)(images, labels)[0]

    def value_and_grads(self, images, labels, variables, regularizer):
        d, g_x, g_y = self.fast(images, labels)
        outs, gouts = [images], [g_x]
        if g_y is not None and labels.requires_grad:
            outs.append(labels)
            gouts.append(g_y)
        reg = regularizer(images)
        if isinstance(reg, Tensor):
            d = d + reg.detach()
            if reg.requires_grad:
                outs.append(reg.sum())
                gouts.append(torch.ones((), dtype=reg.dtype, device=reg.device))
        outs_req = [(o, g) for o, g in zip(outs, gouts) if o.requires_grad]
        if not outs_req:
            return d, tuple(None for _ in variables)
        grads = torch.autograd.grad([o for o, _ in outs_req], variables, [g for _, g in outs_req], allow_unused=True)
        return d, grads
