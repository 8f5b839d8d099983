"""``compiled``: the ``vmap`` step traced (functionalized ``make_fx``) and compiled by Inductor, checked against
the eager step on its first call per shape and every 100th after (:class:`gradleak.backends.fast.Compiled`), with
an eager fallback. Compiling the nested ``torch.func.grad`` step is correct; compiling a step that calls
``torch.autograd.grad(create_graph=True)`` is not (it silently drops the second-order term), which is why only
the torch.func function is ever compiled. Stages on plain pixels with Adam, known labels and no prior but TV run
each whole iteration as one compiled function (:meth:`CompiledStep.fused_adam`, :mod:`gradleak.backends.fused`).
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from gradleak.backends.base import BACKENDS, FunctionalStep, MatchingProblem, Step
from gradleak.backends.vmap import Vmap


class CompiledStep(FunctionalStep):
    def __init__(self, problem: MatchingProblem):
        super().__init__(problem, compile=True)
        self.fused: dict = {}  # FusedAdam steps by (signed, box), reused by restarts' chunks and later stages

    @property
    def name(self) -> str:  # type: ignore[override]
        """"compiled"; "vmap" if the matching step, or a fused step, could not compile."""
        if self.fast.backend == "compiled" and any(f.fallback is not None for f in self.fused.values()):
            return "vmap"
        return self.fast.backend

    def fused_adam(self, signed: bool, box: bool, penalty: Callable[[Tensor], Tensor] | None):
        key = (signed, box)
        if key not in self.fused:
            from gradleak.backends.fused import FusedAdam

            p, obs = self.problem, self.problem.obs
            self.fused[key] = FusedAdam(p.model, obs.protocol, obs.parameters, obs.buffers, p.observed, p.distance,
                                        p.trial_view, penalty, *key, compile=self.fast.compile)
        return self.fused[key]

    @property
    def one_off_eager(self) -> bool:
        return bool(self.fused)  # the matching step itself was never compiled: do not compile it for one call

    def compiled_steps(self) -> list:
        """The steps that ran compiled (each with its :class:`gradleak.backends.fast.Compiled` as ``run``): the
        fused iterations where they ran, else the compiled matching step."""
        return list(self.fused.values()) or [self.fast]

    def timings(self) -> dict[str, float]:
        """Seconds per call of the compiled variants timed against each other (``compiled/conv``,
        ``compiled/matmul-conv``), the fused step's where it ran."""
        out: dict[str, float] = {}
        for step in self.compiled_steps():
            for timing in step.run.timings.values():
                out.update({f"compiled/{name}": round(t, 6) for name, t in timing.items()})
        return out


@BACKENDS.register("compiled")
class Compiled(Vmap):
    """The torch.func step compiled by Inductor (eager fallback, checked); runs what ``vmap`` runs."""

    name = "compiled"

    def step(self, problem: MatchingProblem) -> Step:
        return CompiledStep(problem)
