"""The threshold search of ``gradleak advise``: the weakest safe point of a strength axis.

The axis is a list of values ordered weakest → strongest. ``safe(v)`` is an expensive oracle (one audit of the
defended client). The search assumes *monotonicity* — a setting stronger than a safe one is safe — and checks
it where it looks:

1. **coarse grid**: every grid value is evaluated (these can run in parallel);
2. the candidate threshold is the weakest grid value from which every stronger grid value is safe;
   a safe value followed by a leaking stronger one is a *monotonicity violation*, reported (never hidden);
3. **bisection** (continuous axes only) between the last leaking grid value and the candidate, in the axis's
   own coordinate (log for ε, clip norms; log(1 − s) for sparsity), until the bracket is within ``tol``
   (relative to the bracket's start for log axes) or ``max_steps`` evaluations; each probe is also checked:
   a leaking probe stronger than a safe one is recorded as a violation.

The result names the threshold, the one-step-weaker value that leaks (the evidence that the threshold is
real), and every evaluation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass
class Threshold:
    """Outcome of :func:`find_threshold` for one axis."""

    threshold: float | None  # weakest safe value found (None: nothing on the axis was safe)
    weaker: float | None  # the strongest value seen to leak below the threshold (None: the weakest value is safe)
    monotone: bool
    violations: list[tuple[float, float]] = field(default_factory=list)  # (safe value, stronger leaking value)
    evaluated: dict[float, bool] = field(default_factory=dict)  # value → safe, in evaluation order
    bisection_steps: int = 0

    @property
    def found(self) -> bool:
        return self.threshold is not None


def _violations(values: Sequence[float], safe: dict[float, bool], order: Callable[[float], float]):
    """Pairs (safe value, stronger leaking value) among evaluated points."""
    pts = sorted(values, key=order)
    out = []
    for i, a in enumerate(pts):
        if safe[a]:
            out += [(a, b) for b in pts[i + 1:] if not safe[b]]
    return out


def find_threshold(grid: Sequence[float], safe: Callable[[float], bool] | None = None, *,
                   evaluate_many: Callable[[list[float]], list[bool]] | None = None,
                   strength: Callable[[float], float] = float, continuous: bool = False,
                   to_axis: Callable[[float], float] = float, from_axis: Callable[[float], float] = float,
                   tol: float = 0.05, max_steps: int = 6, integer: bool = False) -> Threshold:
    """Weakest safe value on ``grid`` (ordered weakest first), refined by bisection on continuous axes.

    ``safe(v)`` or ``evaluate_many([v, ...])`` (the batch form, so a grid runs in parallel) is the oracle.
    ``strength(v)``: a number that grows with the defense's strength (e.g. ``-ε``); ``to_axis`` / ``from_axis``:
    the coordinate bisection halves in; ``tol``: stop when the bracket's width in that coordinate is ≤ tol;
    ``integer``: the axis takes integers (bits, batch sizes): probes are rounded, and the search stops when no
    integer lies strictly inside the bracket."""
    if not grid:
        raise ValueError("find_threshold: empty grid")
    many = evaluate_many or (lambda vs: [safe(v) for v in vs])
    grid = sorted(dict.fromkeys(grid), key=strength)
    result: dict[float, bool] = dict(zip(grid, map(bool, many(list(grid)))))
    # weakest grid index from which everything stronger is safe
    k = len(grid)
    while k > 0 and result[grid[k - 1]]:
        k -= 1
    steps = 0
    if k == len(grid):
        thr, weaker = None, grid[-1]
    else:
        thr, weaker = grid[k], (grid[k - 1] if k > 0 else None)
        if continuous and weaker is not None:
            lo, hi = to_axis(weaker), to_axis(thr)  # lo leaks, hi is safe
            while abs(hi - lo) > tol and steps < max_steps:
                mid = from_axis((lo + hi) / 2)
                if integer:
                    mid = int(round(mid))
                    if mid in result:  # no untried integer strictly inside the bracket
                        break
                ok = bool(many([mid])[0])
                result[mid] = ok
                steps += 1
                if ok:
                    hi, thr = to_axis(mid), mid
                else:
                    lo, weaker = to_axis(mid), mid
    viol = _violations(list(result), result, strength)
    return Threshold(threshold=thr, weaker=weaker, monotone=not viol, violations=viol, evaluated=result,
                     bisection_steps=steps)


def log_axis() -> tuple[Callable[[float], float], Callable[[float], float]]:
    """(to, from) for a positive axis bisected in log space (ε, clip norms)."""
    return math.log, math.exp


def sparsity_axis() -> tuple[Callable[[float], float], Callable[[float], float]]:
    """(to, from) for a sparsity s ∈ (0, 1) bisected in log(1 − s) (0.9 → 0.99 is one decade)."""
    return (lambda s: -math.log(1 - s)), (lambda a: 1 - math.exp(-a))
