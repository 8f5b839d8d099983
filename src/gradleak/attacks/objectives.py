"""Gradient distances d(·,·) and image priors R(·) that make up an attack's objective.

Every distance takes the trial upload as a list of tensors with a leading restart dimension R and the
observed upload as a list of tensors without it, and returns one loss per restart, shape (R,).
Registries map config names to functions, so a new distance is one function and one line.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from gradleak.registry import Registry

DISTANCES = Registry("distance")
Distance = Callable[[list[Tensor], list[Tensor]], Tensor]


def _flat(trial: list[Tensor], observed: list[Tensor]) -> tuple[Tensor, Tensor]:
    R = trial[0].shape[0]
    return torch.cat([t.reshape(R, -1) for t in trial], 1), torch.cat([o.reshape(1, -1) for o in observed], 1)


@DISTANCES.register("l2")
def l2_distance(trial: list[Tensor], observed: list[Tensor]) -> Tensor:
    """DLG (Zhu et al., 2019, eq. 4): d(g', g) = Σ_l ‖g'_l − g_l‖²."""
    t, o = _flat(trial, observed)
    return (t - o).pow(2).sum(1)


@DISTANCES.register("cosine")
def cosine_distance(trial: list[Tensor], observed: list[Tensor]) -> Tensor:
    """InvertGrad (Geiping et al., 2020, eq. 4): d(g', g) = 1 − ⟨g', g⟩ / (‖g'‖ ‖g‖), all layers joined."""
    t, o = _flat(trial, observed)
    return 1 - (t * o).sum(1) / (t.norm(dim=1) * o.norm(dim=1)).clamp_min(1e-12)




def total_variation(images: Tensor) -> Tensor:
    """Anisotropic TV of InvertGrad: mean |x_{i+1,j} − x_{i,j}| + mean |x_{i,j+1} − x_{i,j}|.

    ``images``: (R, B, C, H, W) → (R,) averaged over the batch."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean((-3, -2, -1))
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean((-3, -2, -1))
    return (dx + dy).mean(-1)


# --- distances that see through gradient obfuscations (see gradleak.defenses) -------------------------

@DISTANCES.register("masked_cosine")
def masked_cosine_distance(trial: list[Tensor], observed: list[Tensor]) -> Tensor:
    """Cosine distance on the observed support: the trial upload is masked by the observed sparsity
    pattern (m = [g_obs ≠ 0]) before 1 − ⟨m⊙g', g⟩ / (‖m⊙g'‖ ‖g‖), all layers joined. Against Top-k /
    GIAS sparsity / Soteria the attacker thereby matches only what survived φ instead of asking the dummy
    gradient to be zero where the client's was merely dropped (ROG §3 Example 3; GIAS §5.2)."""
    masked = [t * (o != 0).to(t.dtype) for t, o in zip(trial, observed)]
    return cosine_distance(masked, observed)


TANH_BETA = 1.0


@DISTANCES.register("tanh_sign")
def tanh_sign_distance(trial: list[Tensor], observed: list[Tensor], beta: float = TANH_BETA) -> Tensor:
    """signSGD matching, ROG eq. (15): ‖tanh(β·g̃') − sign(g)‖², averaged over all entries (so it lives in
    [0, 4] like a cosine distance, and priors keep their weights). g̃' is each layer of the trial upload
    divided by its mean absolute value (per restart): the observed signs carry no magnitude and the raw
    gradient entries are ≪ 1, where tanh is linear and eq. (15) would degenerate to ‖sign(g)‖² − 2⟨g', sign g⟩;
    the normalisation makes the comparison scale-free (β = 1 by default). ``observed`` may be any
    upload; only its signs are used."""
    R = trial[0].shape[0]
    parts, n = [], 0
    for t, o in zip(trial, observed):
        tf = t.reshape(R, -1)
        scale = tf.abs().mean(1, keepdim=True).clamp_min(1e-20)
        parts.append((torch.tanh(beta * tf / scale) - o.reshape(1, -1).sign()).pow(2).sum(1))
        n += tf.shape[1]
    return torch.stack(parts).sum(0) / n


@DISTANCES.register("masked_l2")
def masked_l2_distance(trial: list[Tensor], observed: list[Tensor]) -> Tensor:
    """Σ ‖m ⊙ Δ' − Δ̃‖² with m = [Δ̃ ≠ 0]: eq. (14) on the entries that survived a sparsifying φ."""
    R = trial[0].shape[0]
    total = torch.zeros(R, dtype=trial[0].dtype)
    for t, o in zip(trial, observed):
        m = (o != 0).to(t.dtype)
        total = total + (t * m - o).reshape(R, -1).pow(2).sum(1)
    return total
