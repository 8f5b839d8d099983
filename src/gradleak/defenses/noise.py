"""Additive Gaussian noise and norm clipping of the upload.

Gaussian noise (gradient perturbation; Zhu et al., 2019 §5; ROG §3 eq. 18 without clipping):
φ(g) = g + n, n_i ~ N(0, σ²) i.i.d. Parameterised either by σ directly or by a target signal-to-noise
ratio over the clean update,

    SNR_dB = 10·log10( ‖g‖² / E‖n‖² ) = 10·log10( ‖g‖² / (d·σ²) )  ⇒  σ = ‖g‖ / √(d · 10^(SNR_dB/10)),

with d the number of entries — over the whole upload (``scope="global"``) or for each parameter tensor
separately (``scope="per_layer"``, every layer then has the target SNR). The σ a target SNR gave is
reported in ``describe()`` (``sigma_used``).

Norm clipping (Abadi et al., 2016, applied to the whole upload): φ(g) = g / max(1, ‖g‖₂ / C), over the
joined upload (``scope="global"``) or per parameter tensor (``scope="per_layer"``).
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from gradleak.defenses.base import AttackerView, ClientContext, Defense, Params, check, register


def sigma_for_snr(signal: Tensor, snr_db: float) -> float:
    """σ such that ‖signal‖² / (d σ²) = 10^(snr_db/10)."""
    power = float(signal.double().pow(2).mean())
    return math.sqrt(power / 10 ** (snr_db / 10))


def measured_snr_db(clean: Params, noisy: Params) -> float:
    """10·log10(‖clean‖² / ‖noisy − clean‖²) over the joined upload."""
    s = sum(float(t.double().pow(2).sum()) for t in clean.values())
    n = sum(float((noisy[k] - t).double().pow(2).sum()) for k, t in clean.items())
    return 10 * math.log10(s / n) if n > 0 else math.inf


def _joined(update: Params) -> Tensor:
    return torch.cat([t.reshape(-1) for t in update.values()])


@register
class GaussianNoise(Defense):
    """g + N(0, σ²I), with σ given or set from a target SNR in dB over the clean update."""

    name = "noise"

    def __init__(self, sigma: Annotated[float, Field(ge=0)] | None = None, snr_db: float | None = None,
                 scope: Literal["global", "per_layer"] = "global", attacker_knows: bool = True):
        check(self.name, "sigma", sigma is None or (sigma >= 0 and math.isfinite(sigma)), sigma, "a number >= 0")
        check(self.name, "sigma", (sigma is None) != (snr_db is None), sigma,
              "exactly one of sigma and snr_db (got both or neither)")
        check(self.name, "snr_db", snr_db is None or math.isfinite(snr_db), snr_db, "a finite number of dB")
        check(self.name, "scope", scope in ("global", "per_layer"), scope, "global | per_layer")
        self.sigma = None if sigma is None else float(sigma)
        self.snr_db = None if snr_db is None else float(snr_db)
        self.scope, self.attacker_knows = scope, attacker_knows
        self._report: dict = {}

    @classmethod
    def attacker_view(cls, told: dict) -> AttackerView:
        sigma = told.get("sigma") if told.get("sigma") is not None else told.get("sigma_used")
        return AttackerView(noise=True, noise_sigma=sigma if isinstance(sigma, (int, float)) else None)

    def apply(self, update: Params, ctx: ClientContext) -> Params:
        groups = [[n] for n in update] if self.scope == "per_layer" else [list(update)]
        out, used = {}, {}
        for names in groups:
            sigma = self.sigma if self.snr_db is None else sigma_for_snr(_joined({n: update[n] for n in names}), self.snr_db)
            for n in names:
                t = update[n]
                out[n] = t + sigma * torch.randn(t.shape, generator=ctx.generator, dtype=t.dtype)
            used[names[0] if self.scope == "per_layer" else "all"] = sigma
        if self.snr_db is not None:
            self._report = {"sigma_used": used["all"] if self.scope == "global" else used,
                            "measured_snr_db": measured_snr_db(update, out)}
        return out


def clip_update(update: Params, max_norm: float, scope: str = "global") -> Params:
    """g / max(1, ‖g‖/C) over the joined upload or per tensor."""
    if scope == "per_layer":
        return {n: t / max(1.0, float(t.norm()) / max_norm) for n, t in update.items()}
    norm = float(_joined(update).norm())
    f = 1.0 / max(1.0, norm / max_norm)
    return {n: t * f for n, t in update.items()}


@register
class Clip(Defense):
    """Norm clipping g / max(1, ‖g‖₂/C), global or per layer."""

    name = "clip"

    def __init__(self, max_norm: Annotated[float, Field(gt=0)] = 1.0,
                 scope: Literal["global", "per_layer"] = "global", attacker_knows: bool = True):
        check(self.name, "max_norm", max_norm > 0 and math.isfinite(max_norm), max_norm, "a number > 0")
        check(self.name, "scope", scope in ("global", "per_layer"), scope, "global | per_layer")
        self.max_norm, self.scope, self.attacker_knows = float(max_norm), scope, attacker_knows

    @classmethod
    def attacker_view(cls, told: dict) -> AttackerView:
        return AttackerView(clip=told.get("max_norm"))

    def apply(self, update: Params, ctx: ClientContext) -> Params:
        return clip_update(update, self.max_norm, self.scope)
