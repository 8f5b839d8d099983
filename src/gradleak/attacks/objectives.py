"""Gradient distances d(·,·) and image priors R(·) that make up an attack's objective.

Every distance takes the trial upload as a list of tensors with a leading restart dimension R and the
observed upload as a list of tensors without it, and returns one loss per restart, shape (R,).
Registries map config names to functions, so a new distance is one function and one line.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Distance = Callable[[list[Tensor], list[Tensor]], Tensor]


def _flat(trial: list[Tensor], observed: list[Tensor]) -> tuple[Tensor, Tensor]:
    R = trial[0].shape[0]
    return torch.cat([t.reshape(R, -1) for t in trial], 1), torch.cat([o.reshape(1, -1) for o in observed], 1)


def l2_distance(trial: list[Tensor], observed: list[Tensor]) -> Tensor:
    """DLG (Zhu et al., 2019, eq. 4): d(g', g) = Σ_l ‖g'_l − g_l‖²."""
    t, o = _flat(trial, observed)
    return (t - o).pow(2).sum(1)


def cosine_distance(trial: list[Tensor], observed: list[Tensor]) -> Tensor:
    """InvertGrad (Geiping et al., 2020, eq. 4): d(g', g) = 1 − ⟨g', g⟩ / (‖g'‖ ‖g‖), all layers joined."""
    t, o = _flat(trial, observed)
    return 1 - (t * o).sum(1) / (t.norm(dim=1) * o.norm(dim=1)).clamp_min(1e-12)


DISTANCES: dict[str, Distance] = {"l2": l2_distance, "cosine": cosine_distance}


def total_variation(images: Tensor) -> Tensor:
    """Anisotropic TV of InvertGrad: mean |x_{i+1,j} − x_{i,j}| + mean |x_{i,j+1} − x_{i,j}|.

    ``images``: (R, B, C, H, W) → (R,) averaged over the batch."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean((-3, -2, -1))
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean((-3, -2, -1))
    return (dx + dy).mean(-1)
