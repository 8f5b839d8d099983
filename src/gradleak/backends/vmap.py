"""``vmap``: the matching term's gradient as one ``torch.func`` function vmapped over restarts.

``vmap_r(grad_and_value_x(d ∘ U))`` with U written with ``torch.func.grad`` (the second-order term by nested
``torch.func.grad``; train-mode BatchNorm through :class:`gradleak.fl.functional_bn.FunctionalBatchNorm`), so
the R restarts fold into every layer's batch dimension (:class:`gradleak.backends.fast.FastStep`). It models one
client: a secure-aggregation upload (K clients' sum) runs ``loop``.
"""
from __future__ import annotations

from gradleak.backends.base import BACKENDS, FunctionalStep, MatchingProblem, Step, StepBackend


def one_client(problem: MatchingProblem) -> str:
    """Empty for a single client's upload; why not for an aggregate (the functional step models one client)."""
    if getattr(problem.obs, "aggregation", None) is not None:
        return "the upload is K clients' aggregate (secure aggregation): each client's slots re-run by autograd"
    return ""


@BACKENDS.register("vmap")
class Vmap(StepBackend):
    """torch.func over restarts, eager."""

    name = "vmap"

    def unsupported(self, problem: MatchingProblem) -> str:
        return one_client(problem)

    def step(self, problem: MatchingProblem) -> Step:
        return FunctionalStep(problem, compile=False)
