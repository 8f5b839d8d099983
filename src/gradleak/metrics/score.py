"""Score a reconstructed batch against the private originals (JSON-ready summary)."""

from __future__ import annotations

import math

import torch

from .image import mse, psnr, ssim
from .lpips import LPIPS, LPIPS_REFERENCE_MIN_SIDE, lpips_distance
from .matching import apply_match, match

__all__ = ["score_images", "sanitize_images"]


def sanitize_images(x: torch.Tensor) -> torch.Tensor:
    """Map a reconstruction to valid images: NaN -> 0, +/-inf -> 1/0, then clamp to ``[0, 1]``."""
    x = x.detach().to(torch.float32)
    return torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


def _summary(values: torch.Tensor, higher_is_better: bool) -> dict:
    per = [float(v) for v in values.detach().to("cpu", torch.float64).tolist()]
    if not per:
        return {"mean": None, "best": None, "per_image": []}
    best = max(per) if higher_is_better else min(per)
    return {"mean": math.fsum(per) / len(per), "best": best, "per_image": per}


def score_images(
    recon: torch.Tensor,
    original: torch.Tensor,
    lpips_model: LPIPS | None = None,
    lpips_reason: str | None = None,
    *,
    match_by: str = "mse",
    clamp: bool = True,
) -> dict:
    """Match ``recon`` to ``original`` (see :func:`~gradleak.metrics.matching.match`) and score.

    Both are ``N x C x H x W`` in ``[0, 1]`` (``recon`` may hold more images than ``original``).
    With ``clamp=True`` (default) the reconstruction is first passed through
    :func:`sanitize_images` (NaN/inf replaced, values clamped to ``[0, 1]``), as attacks may
    overshoot the valid range.

    Returns a dict of Python floats/lists/str only::

        {"psnr": {"mean", "best", "per_image"},   # best = max, dB (capped at 100)
         "ssim": {...},                            # best = max
         "mse":  {...},                            # best = min
         "lpips": {...} or None,                   # best = min; None without a model
         "lpips_unavailable": reason or None,
         "lpips_upsample": bool or None,           # the model's resizing option (None without a model)
         "order": perm}                            # recon[perm[i]] matched to original[i]

    ``per_image`` lists follow the order of ``original``. When ``lpips_model`` is None,
    ``lpips_unavailable`` is ``lpips_reason`` (or a generic line if none was given); also when the
    model follows the reference (no resizing) and the images are smaller than AlexNet accepts.
    """
    original = original.detach().to(torch.float32)
    recon = sanitize_images(recon) if clamp else recon.detach().to(torch.float32)
    too_small = (lpips_model is not None and not lpips_model.upsample
                 and min(original.shape[-2:]) < LPIPS_REFERENCE_MIN_SIDE)
    with torch.no_grad():
        perm = match(recon, original, by=match_by, lpips_model=lpips_model)
        matched = apply_match(recon, perm)
        out: dict = {
            "psnr": _summary(psnr(matched, original), higher_is_better=True),
            "ssim": _summary(ssim(matched, original), higher_is_better=True),
            "mse": _summary(mse(matched, original), higher_is_better=False),
            "lpips": None,
            "lpips_unavailable": None,
            "lpips_upsample": None if lpips_model is None else bool(lpips_model.upsample),
            "order": [int(i) for i in perm.tolist()],
        }
        if too_small:
            h, w = original.shape[-2:]
            out["lpips_unavailable"] = (f"LPIPS unavailable: {h}x{w} images are below the {LPIPS_REFERENCE_MIN_SIDE} px "
                                        "the reference LPIPS accepts (set metrics.lpips_upsample: true to upsample)")
        elif lpips_model is not None:
            out["lpips"] = _summary(lpips_distance(lpips_model, matched, original), higher_is_better=False)
        else:
            out["lpips_unavailable"] = lpips_reason or "LPIPS unavailable: no LPIPS model given"
    return out
