"""PRECODE (Scheliga et al., 2022; ROG §5.1): a variational bottleneck before the classifier head.

    z = features(x) ∈ R^F  →  encoder fc: [μ, h] = W_e z + b_e ∈ R^{2K},  σ = softplus(h − 5),
      log σ² = 2 log σ  →  b = μ + σ ⊙ ε  (reparameterised sample)
      →  decoder fc: ẑ = W_d b + b_d ∈ R^F  →  classifier(ẑ)

(σ through a shifted softplus, as in the PRECODE reference code, rather than exp of a raw log σ²: it
cannot overflow with un-normalised features such as LeNet's, and starts with small noise.)

The block is inserted into any base model whose ``classifier`` is an ``nn.Linear`` applied last in
``forward`` (all built-in models): the base's ``classifier`` is replaced by ``nn.Identity`` so
``base(x)`` returns z, and the original layer becomes this model's ``classifier`` (so
:func:`~gradleak.models.feature_layer`, Soteria and label recovery see the real head). Training adds
β·KL(q(b|z) ‖ N(0, I)) (PRECODE's β = 1e-3): every forward stores the batch-mean KL in ``model.vb.kl``;
:func:`kl_loss` returns it. The FL upload itself is gradleak's client loss (mean cross-entropy), so the
KL term shapes training, not the uploaded gradient.

Noise ε and the threat model. ``noise="seeded"`` (default): ε is a deterministic function of ``seed`` and
the batch shape — rows of a NumPy PCG64 stream ``default_rng(seed).standard_normal((B, K))`` (cached),
not a torch random op and not a buffer, so the same numbers appear in the client's forward, under
``functional_call`` and inside ``vmap`` (the attacker's batched re-run). Because the Observation's model
spec carries the options, an attacker who rebuilds the model from it knows ``seed`` and matches the
gradients through the block exactly (the ROG paper's white-box assumption). To model an attacker who
knows the architecture but NOT the client's noise, add the ``precode`` defense with
``attacker_knows: false``: the client then draws a secret seed (from the capture generator) and
recomputes its upload with it, while the published spec keeps the public seed — the attacker's forward
model uses different noise. ``noise="mean"`` (ε = 0, b = μ) is the attacker's natural fallback
(set ``model.vb.noise = "mean"``); ``noise="random"`` draws fresh torch noise every forward (training).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_choice, check_int

NOISE_MODES = ("seeded", "mean", "random")


class VariationalBottleneck(nn.Module):
    """Encoder fc → (μ, σ = softplus(h − 5)) → b = μ + σ ε → decoder fc. See the module docstring for ε."""

    def __init__(self, in_features: int, bottleneck: int = 256, seed: int = 0, noise: str = "seeded") -> None:
        super().__init__()
        self.in_features, self.bottleneck = in_features, bottleneck
        self.encoder = nn.Linear(in_features, 2 * bottleneck)
        self.decoder = nn.Linear(bottleneck, in_features)
        self.seed, self.noise = int(seed), noise
        self.kl: Tensor | None = None
        self._cache: dict[tuple[int, int, int], Tensor] = {}

    def __getstate__(self) -> dict:  # deepcopy/pickle: drop the last KL (a graph node) and the cache
        state = dict(self.__dict__)
        state["kl"], state["_cache"] = None, {}
        return state

    def noise_for(self, rows: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """ε (rows, K) from ``seed`` (cached; NumPy, so valid inside torch.func transforms)."""
        key = (self.seed, rows, self.bottleneck)
        if key not in self._cache:
            rng = np.random.default_rng(self.seed)
            self._cache = {key: torch.from_numpy(rng.standard_normal((rows, self.bottleneck)).astype(np.float32))}
        return self._cache[key].to(dtype=dtype, device=device)

    def forward(self, z: Tensor) -> Tensor:
        h = self.encoder(z)
        mu = h[..., : self.bottleneck]
        std = F.softplus(h[..., self.bottleneck:] - 5.0).clamp_min(1e-8)  # PRECODE's σ = softplus(h − 5)
        if self.noise == "mean":
            b = mu
        elif self.noise == "random":
            b = mu + std * torch.randn_like(mu)
        else:
            eps = self.noise_for(mu.shape[0] if mu.dim() > 1 else 1, mu.dtype, mu.device)
            b = mu + std * (eps if mu.dim() > 1 else eps[0])
        logvar = 2 * torch.log(std)
        self.kl = (0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1)).mean()
        return self.decoder(b)


class Precode(nn.Module):
    """A base model with a :class:`VariationalBottleneck` inserted before its classifier head."""

    def __init__(self, base: nn.Module, bottleneck: int = 256, seed: int = 0, noise: str = "seeded") -> None:
        super().__init__()
        head = getattr(base, "classifier", None)
        if not isinstance(head, nn.Linear):
            from gradleak.errors import bad_value

            raise bad_value("precode option base", getattr(base, "gradleak_name", type(base).__name__),
                            "a model whose `classifier` attribute is the final torch.nn.Linear")
        base.classifier = nn.Identity()
        self.base = base
        self.vb = VariationalBottleneck(head.in_features, bottleneck, seed, noise)
        self.classifier = head

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.vb(torch.flatten(self.base(x), 1)))

    def reset_parameters(self) -> None:
        """Re-initialise the base (its own ``reset_parameters`` or every submodule's) and the block."""
        own = getattr(self.base, "reset_parameters", None)
        if callable(own):
            own()
        else:
            for m in self.base.modules():
                if m is not self.base and callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
        self.vb.encoder.reset_parameters()
        self.vb.decoder.reset_parameters()
        self.classifier.reset_parameters()


def kl_loss(model: nn.Module) -> Tensor:
    """KL(q(b|z) ‖ N(0, I)) of the last forward of every PRECODE block in ``model`` (summed)."""
    kls = [m.kl for m in model.modules() if isinstance(m, VariationalBottleneck) and m.kl is not None]
    if not kls:
        raise ValueError("kl_loss: the model has no PRECODE block or has not run a forward pass yet")
    return torch.stack(kls).sum()


def precode_block(model: nn.Module) -> VariationalBottleneck | None:
    """The model's variational bottleneck, or None."""
    for m in model.modules():
        if isinstance(m, VariationalBottleneck):
            return m
    return None


def precode(num_classes: int, in_channels: int = 3, resolution: int = 32, base: str = "convnet",
            base_options: dict[str, Any] | None = None, bottleneck: int = 256, seed: int = 0,
            noise: str = "seeded", *, build: Callable[..., nn.Module]) -> Precode:
    """Registry factory ``precode`` (registered by :mod:`.registry`, which passes its ``build_model`` as
    ``build``): ``base`` names a registered model built with ``base_options``; ``bottleneck`` K (PRECODE's
    default 256), ``seed`` for the client's noise, ``noise`` mode."""
    from gradleak.errors import bad_value

    if not isinstance(base, str) or base.strip().lower() == "precode":
        raise bad_value("precode option base", base, "a registered model name other than precode")
    bottleneck = check_int("precode option bottleneck", bottleneck, 1)
    seed = check_int("precode option seed", seed, 0)
    noise = check_choice("precode option noise", noise, NOISE_MODES)
    if base_options is not None and not isinstance(base_options, dict):
        raise bad_value("precode option base_options", base_options, "a mapping of the base model's options")
    inner = build(base, num_classes, in_channels, resolution, **(base_options or {}))
    return Precode(inner, bottleneck, seed, noise)


__all__ = ["NOISE_MODES", "Precode", "VariationalBottleneck", "kl_loss", "precode", "precode_block"]
