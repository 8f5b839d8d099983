"""Label recovery from the last layer's update.

For cross-entropy, ∂ℓ/∂b_k = softmax_k − 1[k = y] is negative only for the true class, and with
non-negative penultimate features the weight rows ∂ℓ/∂W_k share that sign.
- iDLG (Zhao et al., 2020), batch 1: y = argmin_k Σ_j ∂ℓ/∂W_{kj} (or the bias gradient when present).
- Batch label restoration (Yin et al., 2021, §3.2), batch B with distinct labels: the B classes with
  the most negative row sums of ∂ℓ/∂W of the last fully connected layer.
For FedAvg the update Δ = θ_0 − θ_τ points along the accumulated gradient, so the same rule applies.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gradleak.errors import UserError
from gradleak.fl.observation import Observation


def last_linear_names(model: nn.Module) -> tuple[str, str | None]:
    """Parameter names (weight, bias) of the model's last nn.Linear layer."""
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    if last is None:
        raise UserError("attack.labels: 'recover' needs a model with a final nn.Linear layer")
    bias = f"{last}.bias" if getattr(model.get_submodule(last), "bias", None) is not None else None
    return f"{last}.weight", bias


def class_scores(obs: Observation, model: nn.Module) -> Tensor:
    """Per-class evidence (lower = more likely present): row sums of the last layer's weight update."""
    w, b = last_linear_names(model)
    obs = obs.as_delta()
    scores = obs.update[w].sum(1)
    if b is not None:
        scores = scores + obs.update[b]
    return scores


def recover_labels(obs: Observation, model: nn.Module) -> Tensor:
    """iDLG for B = 1, Yin et al.'s batch label restoration for B > 1 (distinct labels assumed)."""
    scores = class_scores(obs, model)
    if obs.num_images > scores.numel():
        raise UserError(f"attack.labels: cannot recover {obs.num_images} distinct labels from {scores.numel()} classes")
    return scores.argsort()[: obs.num_images].sort().values


def label_accuracy(recovered: Tensor, true: Tensor) -> float:
    """Fraction of true labels recovered, order-free (multiset intersection / B)."""
    k = int(max(recovered.max(), true.max())) + 1
    a, b = torch.bincount(recovered, minlength=k), torch.bincount(true, minlength=k)
    return float(torch.minimum(a, b).sum()) / len(true)
