"""Gradient sparsification: Top-k and GIAS's per-layer gradient sparsity.

Top-k (Aji & Heafield, 2017; ROG paper §3, Example 3, φ_topk): keep the k entries of largest magnitude
and zero the rest. ``sparsity`` s ∈ [0, 1) is the fraction *removed*: a tensor of n entries keeps
k = ⌈(1 − s)·n⌉ entries (at least one), e.g. s = 0.95 keeps 5 %. ``scope="per_layer"`` selects k within
every parameter tensor separately; ``scope="global"`` selects k = ⌈(1 − s)·N⌉ over all N entries of the
upload joined (large layers then take most of the budget).

GIAS gradient sparsity (Jeon et al., 2021, §5.2 and footnote 1): "removing p % elements with the smallest
magnitudes at each layer" — per-layer Top-k with s = p. Ties are broken by ``torch.topk`` (deterministic).
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from gradleak.defenses.base import AttackerView, ClientContext, Defense, Params, check, register


def keep_count(n: int, sparsity: float) -> int:
    """k = ⌈(1 − s)·n⌉, at least 1: the number of entries Top-k keeps out of n."""
    return max(1, min(n, math.ceil((1.0 - sparsity) * n - 1e-9)))


def topk_mask(t: Tensor, k: int) -> Tensor:
    """Boolean mask of the k largest |t| entries (same shape as t)."""
    flat = t.reshape(-1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.abs().topk(k, sorted=False).indices] = True
    return mask.reshape(t.shape)


def sparsify(update: Params, sparsity: float, scope: str = "per_layer") -> Params:
    """φ_topk of the whole upload (see module docstring)."""
    if sparsity == 0:
        return {n: t.clone() for n, t in update.items()}
    if scope == "per_layer":
        return {n: t * topk_mask(t, keep_count(t.numel(), sparsity)) for n, t in update.items()}
    flat = torch.cat([t.reshape(-1) for t in update.values()])
    mask = topk_mask(flat, keep_count(flat.numel(), sparsity))
    out, i = {}, 0
    for n, t in update.items():
        out[n] = t * mask[i:i + t.numel()].reshape(t.shape)
        i += t.numel()
    return out


@register
class TopK(Defense):
    """Top-k sparsification φ_topk (ROG eq. in Example 3): keep the ⌈(1−s)n⌉ largest magnitudes,
    per layer or globally; ``sparsity`` s is the fraction removed."""

    name = "topk"

    def __init__(self, sparsity: Annotated[float, Field(ge=0, lt=1)] = 0.9,
                 scope: Literal["per_layer", "global"] = "per_layer", attacker_knows: bool = True):
        check(self.name, "sparsity", 0 <= sparsity < 1, sparsity, "a number in [0, 1)")
        check(self.name, "scope", scope in ("per_layer", "global"), scope, "per_layer | global")
        self.sparsity, self.scope, self.attacker_knows = float(sparsity), scope, attacker_knows

    @classmethod
    def attacker_view(cls, told: dict) -> AttackerView:
        return AttackerView(support=True)

    def apply(self, update: Params, ctx: ClientContext) -> Params:
        return sparsify(update, self.sparsity, self.scope)


@register
class GradientSparsity(Defense):
    """GIAS gradient sparsity (Jeon et al., 2021, §5.2, appendix F): at each layer remove the fraction
    ``sparsity`` of entries with the smallest magnitudes (= per-layer Top-k)."""

    name = "gradient_sparsity"

    def __init__(self, sparsity: Annotated[float, Field(ge=0, lt=1)] = 0.99, attacker_knows: bool = True):
        check(self.name, "sparsity", 0 <= sparsity < 1, sparsity, "a number in [0, 1)")
        self.sparsity, self.attacker_knows = float(sparsity), attacker_knows

    @classmethod
    def attacker_view(cls, told: dict) -> AttackerView:
        return AttackerView(support=True)

    def apply(self, update: Params, ctx: ClientContext) -> Params:
        return sparsify(update, self.sparsity, "per_layer")
