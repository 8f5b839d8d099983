"""Match reconstructed images to originals when the batch order is unknown.

A gradient-inversion attacker recovers a batch of images but not which reconstruction belongs
to which private image. Scoring therefore first solves a linear assignment (Hungarian
algorithm, :func:`scipy.optimize.linear_sum_assignment`) on a pairwise cost matrix so that the
total cost over matched pairs is minimal.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .image import mse, ssim

__all__ = ["MATCH_BY", "pairwise_cost", "match", "apply_match"]

#: Supported matching criteria. ``psnr`` is monotone in ``mse`` and gives the same matching.
MATCH_BY = ("mse", "psnr", "ssim", "lpips")

# max number of image pairs evaluated at once by pairwise ssim / lpips (bounds memory)
_PAIR_CHUNK = 256


def _pairwise_by(fn, recon: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``out[i, j] = fn(original[i], recon[j])`` for every pair, evaluated in chunks."""
    n, m = original.shape[0], recon.shape[0]
    ii, jj = torch.meshgrid(torch.arange(n), torch.arange(m), indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    vals = []
    for s in range(0, ii.numel(), _PAIR_CHUNK):
        i, j = ii[s:s + _PAIR_CHUNK], jj[s:s + _PAIR_CHUNK]
        vals.append(fn(recon[j.to(recon.device)], original[i.to(original.device)]).detach().to("cpu", torch.float64))
    return torch.cat(vals).reshape(n, m)


def pairwise_cost(recon: torch.Tensor, original: torch.Tensor, by: str = "mse", lpips_model=None) -> torch.Tensor:
    """Cost matrix ``C[i, j]`` (float64, CPU) of matching ``recon[j]`` to ``original[i]``.

    ``by``: ``"mse"``/``"psnr"`` (cost = MSE), ``"ssim"`` (cost = -SSIM), ``"lpips"`` (cost =
    LPIPS distance; needs ``lpips_model``). Lower is better.
    """
    if by not in MATCH_BY:
        raise ValueError(f"match by: got {by!r}; allowed: {', '.join(MATCH_BY)}")
    if recon.dim() != 4 or original.dim() != 4 or recon.shape[1:] != original.shape[1:]:
        raise ValueError(
            f"recon and original must be N x C x H x W with equal C, H, W; got "
            f"{tuple(recon.shape)} and {tuple(original.shape)}"
        )
    with torch.no_grad():
        if by in ("mse", "psnr"):
            a = original.detach().to("cpu", torch.float64).flatten(1)
            b = recon.detach().to("cpu", torch.float64).flatten(1)
            # exact pairwise mean squared difference (no |a|^2+|b|^2-2ab cancellation)
            cost = torch.stack([(a[i:i + 1] - b).pow(2).mean(dim=1) for i in range(a.shape[0])]) \
                if a.shape[0] else torch.zeros(0, b.shape[0], dtype=torch.float64)
        elif by == "ssim":
            cost = -_pairwise_by(ssim, recon, original)
        else:
            if lpips_model is None:
                raise ValueError("match by 'lpips' needs an LPIPS model (see load_lpips)")
            from .lpips import lpips_distance

            cost = _pairwise_by(lambda x, y: lpips_distance(lpips_model, x, y), recon, original)
    return cost


def match(recon: torch.Tensor, original: torch.Tensor, by: str = "mse", lpips_model=None) -> torch.Tensor:
    """Best one-to-one assignment of reconstructions to originals.

    Returns a ``LongTensor`` ``perm`` of length ``len(original)`` such that ``recon[perm[i]]``
    is matched to ``original[i]``. ``recon`` may hold more images than ``original`` (extra
    reconstructions stay unmatched) but not fewer. Non-finite costs (e.g. a diverged
    reconstruction full of NaN) are treated as worse than any finite cost.
    """
    if recon.shape[0] < original.shape[0]:
        raise ValueError(
            f"need at least as many reconstructions as originals; got {recon.shape[0]} < {original.shape[0]}"
        )
    cost = pairwise_cost(recon, original, by=by, lpips_model=lpips_model).numpy()
    if cost.size == 0:
        return torch.zeros(0, dtype=torch.long)
    finite = np.isfinite(cost)
    if not finite.all():
        big = (np.abs(cost[finite]).max() if finite.any() else 0.0) * 2.0 + 1.0
        cost = np.where(finite, cost, big)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(original.shape[0], dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm)


def apply_match(recon: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Reorder reconstructions so that ``apply_match(recon, perm)[i]`` pairs with ``original[i]``."""
    perm = torch.as_tensor(perm, dtype=torch.long)
    return recon[perm.to(recon.device)]
