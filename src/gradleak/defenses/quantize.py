"""Gradient quantisation: deterministic uniform quantiser φ_q, QSGD φ_qsgd and signSGD φ_sign.

ROG paper (Yue et al., 2023), §3, Example 2, eq. (6): each entry is mapped to

    Q(g_i) = (κ / s) · ‖g‖_p · sign(g_i) · ξ_i(g, s),      ξ_i ∈ {0, 1, …, s},

i.e. to one of the 2s + 1 levels {−s, …, 0, …, s} · κ‖g‖_p / s. The server receives the level indices
and the scale κ‖g‖_p and sees the *dequantised* values Q(g_i), which is what the Observation stores.

* φ_q (deterministic uniform): ξ_i = round(s·|g_i| / (κ‖g‖_p)), clamped to [0, s] (nearest level).
* φ_qsgd (QSGD, Alistarh et al., 2017; eq. 7): with r_i = s·|g_i| / (κ‖g‖_p) and l = ⌊r_i⌋,
  ξ_i = l + 1 with probability p_i = r_i − l, else l (stochastic rounding). Then E[Q(g_i)] = g_i
  (unbiased) whenever r_i ≤ s, which holds for κ ≥ ‖g‖_∞ / ‖g‖_p — always for κ ≥ 1; with a smaller κ
  entries beyond the top level are clamped to it (biased).

What "b-bit" means: one sign bit and b − 1 magnitude bits, so s = 2^(b−1) − 1 magnitude levels above
zero and 2s + 1 = 2^b − 1 representable values; **3-bit → s = 3, 7 levels {−3,…,3}·κ‖g‖_p/3**
(one of the 8 codes is unused, as the symmetric level set has an odd count). ``bits = 1`` would give
s = 0 (everything zero); it is taken as s = 1 (ternary {−1, 0, 1}·κ‖g‖_p, 1.58 bits) — for a true 1-bit
upload use ``sign``. ``levels`` overrides s directly.

The norm ‖g‖_p (``norm``: p ≥ 1 or ``inf``; default ∞ for φ_q — levels spread over the layer's range —
and 2 for QSGD as in Alistarh et al.) and κ (``kappa`` > 0, default 1) are taken per parameter tensor
(``scope="per_layer"``, i.e. QSGD's bucketing by layer) or over the whole upload (``scope="global"``).

signSGD (Bernstein et al., 2018; ROG eq. 5): φ_sign(g) = sign(g) ∈ {−1, 0, +1}, no magnitude.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from gradleak.defenses.base import AttackerView, ClientContext, Defense, Params, check, register


def levels_for_bits(bits: int) -> int:
    """s for a b-bit quantiser: 2^(b−1) − 1 (3 bits → 3), and 1 for b = 1 (see module docstring)."""
    return max(1, 2 ** (bits - 1) - 1)


def _norm(t: Tensor, p: float) -> Tensor:
    return t.abs().max() if math.isinf(p) else t.norm(p)


def quantize_tensor(t: Tensor, s: int, p: float = math.inf, kappa: float = 1.0, stochastic: bool = False,
                    generator: torch.Generator | None = None) -> Tensor:
    """Q(t) of eq. (6): deterministic nearest level, or QSGD's stochastic rounding (eq. 7). Dequantised."""
    scale = kappa * _norm(t, p)
    if scale == 0:
        return torch.zeros_like(t)
    r = s * t.abs() / scale
    if stochastic:
        low = r.floor()
        u = torch.rand(t.shape, generator=generator, dtype=t.dtype)
        xi = low + (u < (r - low)).to(t.dtype)
    else:
        xi = r.round()
    xi = xi.clamp(0, s)
    return scale / s * t.sign() * xi


def quantize(update: Params, s: int, p: float, kappa: float, scope: str, stochastic: bool,
             generator: torch.Generator | None = None) -> Params:
    if scope == "per_layer":
        return {n: quantize_tensor(t, s, p, kappa, stochastic, generator) for n, t in update.items()}
    flat = torch.cat([t.reshape(-1) for t in update.values()])
    q = quantize_tensor(flat, s, p, kappa, stochastic, generator)
    out, i = {}, 0
    for n, t in update.items():
        out[n] = q[i:i + t.numel()].reshape(t.shape)
        i += t.numel()
    return out


class _Quantizer(Defense):
    stochastic = False
    default_norm = math.inf

    def __init__(self, bits: Annotated[int, Field(ge=1)] = 3, levels: Annotated[int, Field(ge=1)] | None = None,
                 norm: Annotated[float, Field(ge=1)] | None = None, kappa: Annotated[float, Field(gt=0)] = 1.0,
                 scope: Literal["per_layer", "global"] = "per_layer", attacker_knows: bool = True):
        check(self.name, "bits", isinstance(bits, int) and bits >= 1, bits, "an integer >= 1")
        check(self.name, "levels", levels is None or levels >= 1, levels, "an integer >= 1 or null")
        norm = self.default_norm if norm is None else float(norm)
        check(self.name, "norm", norm >= 1, norm, "p >= 1 or inf")
        check(self.name, "kappa", kappa > 0 and math.isfinite(kappa), kappa, "a number > 0")
        check(self.name, "scope", scope in ("per_layer", "global"), scope, "per_layer | global")
        self.bits = int(bits)
        self.levels = int(levels) if levels is not None else levels_for_bits(self.bits)
        self.norm, self.kappa, self.scope, self.attacker_knows = norm, float(kappa), scope, attacker_knows

    @classmethod
    def attacker_view(cls, told: dict) -> AttackerView:
        return AttackerView(quantized=True, levels=told.get("levels"))

    def apply(self, update: Params, ctx: ClientContext) -> Params:
        return quantize(update, self.levels, self.norm, self.kappa, self.scope, self.stochastic,
                        ctx.generator if ctx is not None else None)


@register
class UniformQuantizer(_Quantizer):
    """Deterministic uniform s-level quantiser φ_q (ROG eq. 6): nearest of the 2s+1 levels
    {−s…s}·κ‖g‖_p/s; ``bits`` b gives s = 2^(b−1) − 1 (3-bit = 7 levels). Default norm ∞, per layer."""

    name = "quantize"


@register
class QSGD(_Quantizer):
    """QSGD φ_qsgd (Alistarh et al., 2017; ROG eq. 6–7): stochastic rounding between adjacent levels,
    unbiased for κ ≥ 1. Default norm 2 (as in QSGD), per layer (bucket = parameter tensor)."""

    name = "qsgd"
    stochastic = True
    default_norm = 2.0


@register
class SignSGD(Defense):
    """signSGD φ_sign (Bernstein et al., 2018; ROG eq. 5): the upload is sign(g) ∈ {−1, 0, +1}."""

    name = "sign"

    def __init__(self, attacker_knows: bool = True):
        self.attacker_knows = attacker_knows

    @classmethod
    def attacker_view(cls, told: dict) -> AttackerView:
        return AttackerView(sign=True)

    def apply(self, update: Params, ctx: ClientContext) -> Params:
        return {n: t.sign() for n, t in update.items()}
