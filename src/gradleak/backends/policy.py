"""Which step backend a search runs: the execution setting resolved, ``auto`` by measurement — in one place.

:func:`choose` takes the setting (:mod:`gradleak.backends.setting`: the search's own argument, else the one in
force) and the search's shape, and returns the built :class:`gradleak.backends.base.Step`:

* a backend that cannot compute the problem exactly (:meth:`~gradleak.backends.base.StepBackend.unsupported`,
  e.g. ``vmap``/``compiled`` on a secure-aggregation upload) runs ``loop``;
* ``auto`` runs ``loop`` unmeasured under a budget (:mod:`gradleak.attacks.budget` fits the schedule to the
  measured time itself), where only ``loop`` can run, and for searches under :data:`AUTO_MIN_ITERATIONS` iterations (the warm-up would
  dominate); otherwise it times a few evaluations of ``loop`` and ``vmap`` on random images (its own RNG: the
  search's draws are untouched), interleaved, after one warm-up round, and keeps the faster; when the search
  would still take :data:`AUTO_COMPILE_MIN_SECONDS` or more, it also compiles (minutes on a CPU) and times that.

The seconds per evaluation it measured come back with the step, for the run's record
(``metrics.json``: ``backend``, ``backend_timing``; ``benchmarks/speed.py``).
"""
from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from gradleak.backends import compiled, loop, vmap  # noqa: F401  (register the backends)
from gradleak.backends.base import BACKENDS, MatchingProblem, Step
from gradleak.backends.setting import check, current

AUTO_MIN_ITERATIONS = 50  # shorter searches: "auto" runs "loop" without measuring
AUTO_COMPILE_MIN_SECONDS = 600.0  # "auto" compiles only when the eager search would take at least this long
ROUNDS = 2  # measured rounds after the warm-up round


def choose(problem: MatchingProblem, setting: str | None, restarts: int, labels: Tensor | None,
           total_iterations: int, budgeted: bool = False) -> tuple[Step, dict[str, float]]:
    """The step for ``problem`` under ``setting`` (None: the one in force) and the seconds per evaluation measured
    by candidate ({} unless ``auto`` measured). ``restarts``: how many the search optimises together;
    ``labels``: the known labels (B,), None for learnt soft labels."""
    setting = current() if setting is None else check(setting)
    if setting == "auto" and (budgeted or total_iterations < AUTO_MIN_ITERATIONS
                              or BACKENDS["vmap"]().unsupported(problem)):
        setting = "loop"
    if setting != "auto":
        backend = BACKENDS[setting]()
        return (BACKENDS["loop"]() if backend.unsupported(problem) else backend).step(problem), {}
    return _measured(problem, restarts, labels, total_iterations)


def _measured(problem: MatchingProblem, R: int, labels: Tensor | None, total_iterations: int):
    obs = problem.obs
    dev = problem.observed[0].device
    gen = torch.Generator(device=dev).manual_seed(12345)
    x = torch.rand(R, obs.num_images, *obs.image_shape, generator=gen, device=dev)
    if problem.soft:
        y = torch.softmax(torch.randn(R, obs.num_images, obs.model_spec["num_classes"], generator=gen, device=dev), -1)
    else:
        y = labels.expand(R, *labels.shape)
    cands: dict[str, Step] = {"loop": BACKENDS["loop"]().step(problem), "vmap": BACKENDS["vmap"]().step(problem)}
    best: dict[str, float] = {}

    def measure(names: list[str]) -> None:
        for rnd in range(ROUNDS + 1):  # round 0 is the warm-up (first-call allocations, compilation)
            for name in [n for n in names if n in cands]:
                xi = x.clone().requires_grad_()
                t0 = time.perf_counter()
                try:  # the priors cost the same on every backend: the matching term alone is timed
                    cands[name].value_and_grads(xi, y, [xi], lambda images: 0.0)
                except Exception:  # noqa: BLE001 - a backend this model cannot run is not a candidate
                    if name == "loop":
                        raise
                    del cands[name]
                    continue
                dt = time.perf_counter() - t0
                if name == "compiled" and cands[name].name != "compiled":  # fell back to eager
                    del cands[name]
                    continue
                if rnd > 0:
                    best[name] = min(best.get(name, math.inf), dt)

    measure(["loop", "vmap"])
    if min(best.values()) * total_iterations >= AUTO_COMPILE_MIN_SECONDS:
        cands["compiled"] = BACKENDS["compiled"]().step(problem)
        measure(["compiled"])
    choice = min(best, key=best.get)
    return cands[choice], {k: round(v, 6) for k, v in best.items()}
