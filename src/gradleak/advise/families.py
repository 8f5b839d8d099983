"""Defense families for ``gradleak advise``: each a strength axis, registered by name.

A family says how one number (its strength) becomes a client setting — a defense chain, a batch size or a
wrapped model — what that setting costs in upload size, and how its axis is searched
(:func:`gradleak.advise.search.find_threshold`). The grids are the coarse stage, weakest first; continuous
axes are refined by bisection. Adding a family is one ``@family`` definition here (or in a module imported
by this one).

Upload size (bits per upload of d parameters in L tensors): float32 32·d; top-k keeps (1 − s)·d values with
their indices, (1 − s)·d·(32 + ⌈log2 d⌉); uniform quantisation b·d plus a float32 scale per tensor (32·L); signSGD
d bits. Clipping, noise, Soteria, PRECODE and the batch size do not change the size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from gradleak.advise.search import log_axis, sparsity_axis
from gradleak.registry import Registry

FAMILIES = Registry("defense family")


def _identity(v: float) -> float:
    return v


@dataclass(frozen=True)
class Family:
    """One defense family and its strength axis. ``change(v, ctx)`` → the setting's changes to the audited
    client: ``{"defense": [...], "batch_size": int, "precode": int}`` (any subset); ``ctx`` holds the declared
    setting (rounds, dataset size, δ) for DP accounting."""

    name: str
    axis: str  # the parameter the search moves
    grid: tuple[float, ...]  # coarse grid, weakest first
    strength: Callable[[float], float]  # grows with the defense's strength
    change: Callable[[float, dict], dict]
    label: Callable[[float], str]
    continuous: bool = False
    integer: bool = False
    to_axis: Callable[[float], float] = _identity
    from_axis: Callable[[float], float] = _identity
    tol: float = 0.05
    bits: Callable[[float, int, int], float] = field(default=lambda v, d, L: 32.0 * d)
    doc: str = ""
    #: a second, fixed axis: the ``advise`` key whose list of values gives one search per value (DP: the clip
    #: bound ``dp_clip``), and how one of its values reads
    variant_key: str = ""
    variant_label: Callable[[float], str] = field(default=lambda v: f"{v:g}")

    def contexts(self, ctx: dict) -> list[dict]:
        """One context per search: ``ctx`` itself, or one per value of the family's second axis."""
        if not self.variant_key:
            return [ctx]
        vals = ctx[self.variant_key]
        return [{**ctx, self.variant_key: float(v)} for v in (vals if isinstance(vals, (list, tuple)) else [vals])]

    def variant(self, ctx: dict) -> str:
        """``C = 1`` for the DP family searched at clip bound 1; empty for a one-axis family."""
        return self.variant_label(ctx[self.variant_key]) if self.variant_key else ""

    def describe(self, v: float, ctx: dict) -> str:
        """The label of value ``v`` searched at ``ctx`` (with the second axis's value when there is one)."""
        return self.label(v) + (f", {self.variant(ctx)}" if self.variant_key else "")


def family(f: Family) -> Family:
    """Register ``f`` under its name."""
    FAMILIES.register(f.name)(f)
    return f


def _one_clip(ctx: dict) -> float:
    """The clip bound of one DP search (``advise.dp_clip`` holds a sequence; each search gets one value)."""
    c = ctx.get("dp_clip", 4.0)
    return float(c[0] if isinstance(c, (list, tuple)) else c)


_LOG = log_axis()
_SPARSE = sparsity_axis()

# ε from 10⁶ down: Fed-CDP's per-coordinate noise σC dwarfs a small batch's gradient already at ε ≈ 10²
# (measured on digits / LeNet, batch 4), so a grid starting at 64 only ever finds "safe at the weakest value".
family(Family(
    "dp", "epsilon", (1e6, 1e4, 1e3, 100.0, 16.0, 4.0, 1.0), strength=lambda e: -e, continuous=True,
    to_axis=_LOG[0], from_axis=_LOG[1], tol=0.35,
    change=lambda e, ctx: {"defense": [{"name": "fedcdp", "clip": _one_clip(ctx), "epsilon": float(e),
                                        "delta": ctx["delta"], "rounds": ctx["rounds"],
                                        "dataset_size": ctx["dataset_size"]}]},
    label=lambda e: f"DP ε = {e:.3g}", variant_key="dp_clip", variant_label=lambda c: f"C = {c:g}",
    doc="Fed-CDP (per-example per-layer clipping to C + Gaussian noise σC); σ from Opacus' RDP accountant for "
        "(ε, δ) over the declared rounds and sampling rate b / dataset_size; ε is searched once per clip bound C of "
        "advise.dp_clip (a fixed sequence: the second axis)"))

family(Family(
    "clip", "max_norm", (10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01), strength=lambda c: -c, continuous=True,
    to_axis=_LOG[0], from_axis=_LOG[1], tol=0.2,
    change=lambda c, ctx: {"defense": [{"name": "clip", "max_norm": float(c)}]},
    label=lambda c: f"clip C = {c:.3g}",
    doc="global ℓ2 clipping of the update (scale only: gradient matching by cosine is invariant to it)"))

family(Family(
    "topk", "sparsity", (0.5, 0.8, 0.9, 0.95, 0.99, 0.999), strength=lambda s: s, continuous=True,
    to_axis=_SPARSE[0], from_axis=_SPARSE[1], tol=0.25,
    change=lambda s, ctx: {"defense": [{"name": "topk", "sparsity": float(s)}]},
    label=lambda s: f"top-k s = {s:.4g}",
    bits=lambda s, d, L: (1 - s) * d * (32 + math.ceil(math.log2(max(d, 2)))),
    doc="keep the largest (1 − s) fraction of entries per tensor"))

family(Family(
    "quant", "bits", (8, 6, 4, 3, 2), strength=lambda b: -b, integer=True, continuous=True,
    change=lambda b, ctx: {"defense": [{"name": "quantize", "bits": int(b)}]},
    label=lambda b: f"{int(b)}-bit quantisation",
    bits=lambda b, d, L: b * d + 32 * L,
    doc="uniform stochastic quantisation per tensor"))

family(Family(
    "sign", "on", (1,), strength=float,
    change=lambda v, ctx: {"defense": [{"name": "sign"}]},
    label=lambda v: "signSGD", bits=lambda v, d, L: float(d),
    doc="the sign of every entry (one bit each)"))

family(Family(
    "soteria", "pruning_rate", (0.2, 0.4, 0.6, 0.8, 0.9, 0.95), strength=lambda r: r, continuous=True, tol=0.05,
    change=lambda r, ctx: {"defense": [{"name": "soteria", "pruning_rate": float(r)}]},
    label=lambda r: f"Soteria {r:.3g}",
    doc="Soteria: prune the representation layer's update where it reveals most of the input"))

family(Family(
    "precode", "bottleneck", (256,), strength=float,
    change=lambda k, ctx: {"precode": int(k)},
    label=lambda k: f"PRECODE (bottleneck {int(k)})",
    doc="a variational bottleneck in front of the classifier (attacked white-box)"))

family(Family(
    "batch", "batch_size", (1, 2, 4, 8, 16, 32), strength=float, continuous=True, integer=True,
    to_axis=_LOG[0], from_axis=_LOG[1], tol=0.3,
    change=lambda b, ctx: {"batch_size": int(b)},
    label=lambda b: f"batch {int(b)}",
    doc="the client's batch size (more images mixed into one update)"))


def parse_families(text: str) -> list[Family]:
    """``dp,clip,topk`` → the families; one-line UserError on an unknown or empty list."""
    from gradleak.errors import bad_value

    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise bad_value("--families", text, ", ".join(FAMILIES))
    for n in names:
        if n not in FAMILIES:
            raise bad_value("--families", n, ", ".join(FAMILIES))
    return [FAMILIES[n] for n in dict.fromkeys(names)]
