"""DCGAN generator and discriminator (Radford et al., 2016) at 32×32 or 64×64, optionally label-conditioned.

Generator: z ∈ R^k (concatenated with a one-hot label for the conditional variant) → 4×4 transposed
conv → BN → ReLU → [×2 up: 4×4 stride-2 transposed conv → BN → ReLU] … → 4×4 stride-2 transposed conv
→ tanh, widths ``[4w, 2w, w]`` at 32×32 and ``[8w, 4w, 2w, w]`` at 64×64. Output in (−1, 1).

Discriminator: the mirror image with LeakyReLU(0.2) and BN on the inner convs, a 4×4 valid conv to one
logit; the conditional variant adds a projection term ⟨embed(y), Σ_hw h⟩ (Miyato & Koyama, 2018).

Labels may be class indices (N,) or probabilities (N, K). All layers are out of place, so the
modules work with ``torch.func.functional_call`` and ``vmap`` (GI-w's per-image weight copies).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradleak.errors import bad_value

RESOLUTIONS = {32: 3, 64: 4}  # resolution -> number of ×2 up/down-samplings after/before 4×4


def _check(resolution: int, latent_dim: int, width: int, channels: int, num_classes: int) -> int:
    if resolution not in RESOLUTIONS:
        raise bad_value("prior.resolution", resolution, "32, 64")
    for key, v, lo in (("latent_dim", latent_dim, 1), ("width", width, 1), ("channels", channels, 1),
                       ("num_classes", num_classes, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise bad_value(f"prior.{key}", v, f"an integer >= {lo}")
    return RESOLUTIONS[resolution]


def one_hot(labels: Tensor, num_classes: int, dtype=torch.float32) -> Tensor:
    """Class indices (N,) → one-hot (N, K); probabilities (N, K) pass through."""
    if labels.dim() == 2:
        return labels.to(dtype)
    return F.one_hot(labels.long(), num_classes).to(dtype)


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN initialisation from the global RNG: conv weights N(0, 0.02), BN weight N(1, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()


class DCGANGenerator(nn.Module):
    """G_w: (N, latent_dim) [+ labels] → (N, channels, resolution, resolution) in (−1, 1)."""

    output_range = (-1.0, 1.0)

    def __init__(self, latent_dim: int = 64, width: int = 32, channels: int = 3, resolution: int = 32,
                 num_classes: int = 0):
        super().__init__()
        n_up = _check(resolution, latent_dim, width, channels, num_classes)
        self.latent_dim, self.width, self.channels = latent_dim, width, channels
        self.resolution, self.num_classes = resolution, num_classes
        ch = width * 2 ** (n_up - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim + num_classes, ch, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ch), nn.ReLU()]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.latent_dim,)

    def config(self) -> dict:
        return {"latent_dim": self.latent_dim, "width": self.width, "channels": self.channels,
                "resolution": self.resolution, "num_classes": self.num_classes}

    def reset_parameters(self) -> None:
        dcgan_init_(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        h = z.reshape(z.shape[0], -1)
        if self.num_classes:
            if labels is None:
                raise ValueError("conditional generator needs labels")
            h = torch.cat([h, one_hot(labels, self.num_classes, h.dtype)], 1)
        return self.net(h[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """D: (N, channels, resolution, resolution) in [−1, 1] [+ labels] → (N,) logits."""

    def __init__(self, width: int = 32, channels: int = 3, resolution: int = 32, num_classes: int = 0):
        super().__init__()
        n_down = _check(resolution, 1, width, channels, num_classes)
        self.width, self.channels, self.resolution, self.num_classes = width, channels, resolution, num_classes
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2)]
            ch *= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(ch, 1, 4, 1, 0)
        self.embed = nn.Embedding(num_classes, ch) if num_classes else None
        self.reset_parameters()

    def config(self) -> dict:
        return {"width": self.width, "channels": self.channels, "resolution": self.resolution,
                "num_classes": self.num_classes}

    def reset_parameters(self) -> None:
        dcgan_init_(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.features(x)
        out = self.head(h).reshape(-1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("conditional discriminator needs labels")
            e = one_hot(labels, self.num_classes, h.dtype) @ self.embed.weight
            out = out + (e * h.sum((2, 3))).sum(1)
        return out


@torch.no_grad()
def calibrate_bn(net: nn.Module, sample_inputs, batches: int = 16) -> None:
    """Recompute BN running statistics as the exact average over ``batches`` forward passes in train mode
    ("precise BN"), so the generator's eval mode (used by the attacks: one image per weight copy) matches
    what it produces on a batch. ``sample_inputs(i)`` returns the positional inputs of pass i."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    was_training = net.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    net.train()
    for i in range(batches):
        net(*sample_inputs(i))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    net.train(was_training)
