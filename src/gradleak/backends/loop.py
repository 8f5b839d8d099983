"""``loop``: the client's update re-run by autograd, restart after restart (the reference every backend equals).

U_θ(x_r, y_r) is :func:`gradleak.fl.client.client_update` with ``create_graph=True`` per restart (through
:func:`gradleak.fl.secagg.observed_rerun`, which also covers secure aggregation's K clients), d is evaluated on
it and ∇ d w.r.t. the search's variables is one ``torch.autograd.grad`` through everything — the textbook
computation of Zhu et al. (2019) / Geiping et al. (2020). It runs every problem; the other backends are checked
against it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradleak.backends.base import BACKENDS, MatchingProblem, Step, StepBackend


class LoopStep(Step):
    name = "loop"

    def __init__(self, problem: MatchingProblem):
        self.problem = problem

    def matching(self, images: Tensor, labels: Tensor, eager: bool = False) -> Tensor:
        from gradleak.fl.secagg import observed_rerun

        p = self.problem
        trial = observed_rerun(p.model, p.obs, images, labels, "loop")  # one client, or K (secure aggregation)
        trial = [trial[n] for n in p.names]
        if p.trial_view is not None:
            trial = p.trial_view(trial)
        return p.distance(trial, p.observed)

    def value_and_grads(self, images, labels, variables, regularizer):
        per = self.matching(images, labels) + regularizer(images)
        return per.detach(), torch.autograd.grad(per.sum(), variables, allow_unused=True)


@BACKENDS.register("loop")
class Loop(StepBackend):
    """Autograd per restart; every problem."""

    name = "loop"

    def step(self, problem: MatchingProblem) -> Step:
        return LoopStep(problem)
