"""The prior interface every generative prior is loaded into (:class:`Prior`), and :func:`match_shape`.

Kept apart from :mod:`gradleak.priors.prior` (which knows every file format and loads them) so that each format
module (DCGAN, StyleGAN2, BigGAN, ProGAN, …) can build a :class:`Prior` without importing the loader back.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradleak.devices import generator as device_generator
from gradleak.errors import UserError
from gradleak.priors.dcgan import calibrate_bn

LUMA = (0.299, 0.587, 0.114)


class Prior:
    """A generator and the conventions the attacks need (see the module docstring)."""

    def __init__(self, net: nn.Module, latent_shape: tuple[int, ...], *, output_range=(-1.0, 1.0),
                 num_classes: int = 0, adapt: Callable[[str], bool] | None = None,
                 sampler: Callable[[int, torch.Generator], Tensor] | None = None, name: str = "",
                 meta: dict | None = None, reinit: Callable[[nn.Module], None] | None = None,
                 equalized_lr: bool = False):
        self.net = net.eval()
        # True when the generator's layers already use StyleGAN's equalised learning rate (unit-scale stored
        # weights): GI-w then steps the weights as they are instead of relative to each tensor's RMS
        self.equalized_lr = bool(equalized_lr)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.output_range = (float(output_range[0]), float(output_range[1]))
        self.num_classes = int(num_classes or 0)
        self._adapt = adapt
        self._sampler = sampler
        self._reinit = reinit
        self.name = name
        self.meta = dict(meta or {})

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def __repr__(self) -> str:
        return f"Prior({self.name!r}, latent {self.latent_shape}, {type(self.net).__name__})"

    # --- latents and weights -------------------------------------------------------------------------
    def sample_latent(self, n: int, generator: torch.Generator) -> Tensor:
        """Initial latents (n, *latent_shape): N(0, I) unless the generator defines its own sampler."""
        if self._sampler is not None:
            return self._sampler(n, generator).reshape(n, *self.latent_shape).detach().clone()
        return torch.randn(n, *self.latent_shape, generator=generator)

    def adapt_names(self) -> list[str]:
        """Names of the parameters GI-w searches (per image); the rest stay fixed."""
        return [n for n, _ in self.net.named_parameters() if self._adapt is None or self._adapt(n)]

    def generate(self, latent: Tensor, labels: Tensor | None = None) -> Tensor:
        """Raw generator output for latents (N, *latent_shape)."""
        if self.conditional:
            if labels is None:
                raise UserError(f"prior {self.name!r} is label-conditional: the attack needs labels "
                                "(attack.labels: oracle or recover)")
            return self.net(latent, labels)
        return self.net(latent)

    def untrained(self, generator: torch.Generator) -> "Prior":
        """The same architecture freshly initialised from ``generator`` (deep image prior, GI-w-untrained);
        BN running statistics are recalibrated on random latents so eval mode is well scaled."""
        net = copy.deepcopy(self.net)
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self._reinit is not None:
                self._reinit(net)
            else:
                for m in net.modules():
                    if hasattr(m, "reset_parameters") and m is not net:
                        m.reset_parameters()
            g = device_generator(seed + 1)
            K = self.num_classes

            def inputs(_i):
                z = self.sample_latent(64, g)
                return (z, torch.randint(0, K, (64,), generator=g)) if K else (z,)

            calibrate_bn(net, inputs, batches=4)
        return Prior(net, self.latent_shape, output_range=self.output_range, num_classes=self.num_classes,
                     adapt=self._adapt, sampler=self._sampler, name=f"{self.name} (untrained)",
                     meta={**self.meta, "untrained": True}, reinit=self._reinit, equalized_lr=self.equalized_lr)

    # --- output → victim pixel space ------------------------------------------------------------------
    def to_pixels(self, raw: Tensor, shape: tuple[int, int, int]) -> Tensor:
        """(N, C_g, H_g, W_g) generator output → (N, C, H, W) in the victim's [0, 1] space (not clamped,
        so gradients flow; the engine clamps the final reconstruction)."""
        lo, hi = self.output_range
        x = (raw - lo) / (hi - lo)
        return match_shape(x, shape)


def match_shape(x: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Channels (grey ↔ RGB) and resolution of (N, C, H, W) images to ``shape`` = (C, H, W)."""
    C, H, W = (int(s) for s in shape)
    have = x.shape[1]
    if have != C:
        if have == 1:
            x = x.expand(-1, C, -1, -1)
        elif have == 3 and C == 1:
            x = (x * x.new_tensor(LUMA).reshape(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise UserError(f"prior: generator gives {have} channels, the victim takes {C}; allowed: 1 ↔ 3")
    if tuple(x.shape[-2:]) != (H, W):
        shrink = x.shape[-2] > H or x.shape[-1] > W
        x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False, antialias=shrink)
    return x


# --- loading -----------------------------------------------------------------------------------------
