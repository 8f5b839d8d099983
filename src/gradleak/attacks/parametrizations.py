"""Parametrizations: how the unknown images are represented during the search.

A parametrization owns its variables, which carry a leading restart dimension R so that all restarts
are optimised as one batched problem, and maps them to images of shape (R, B, C, H, W) in [0, 1]-ish
pixel space. ``start`` may initialise from the previous stage's images (e.g. GI-z/x starts pixels from
the generator's output).
"""
from __future__ import annotations

import torch
from torch import Tensor


class Parametrization:
    """Interface: ``start`` creates the variables, ``images`` decodes them, ``project`` runs after each step."""

    name = "base"

    def start(self, restarts: int, batch: int, shape: tuple[int, int, int], prev: Tensor | None,
              gen: torch.Generator) -> list[Tensor]:
        raise NotImplementedError

    def images(self) -> Tensor:
        raise NotImplementedError

    def project(self) -> None:
        """Called after each optimiser step (e.g. the [0, 1] box); default: nothing."""

    def select(self, keep: Tensor) -> list[Tensor]:
        """Keep only the restarts ``keep`` (indices into the leading restart dimension) and return the new
        variables, in :meth:`start`'s order (successive halving, :mod:`gradleak.attacks.budget`). A
        parametrization that does not implement it runs all its restarts to the end."""
        raise NotImplementedError


def keep_rows(t: Tensor, keep: Tensor, restarts: int) -> Tensor:
    """Rows of a restart-major tensor (leading dimension R, or R·k with the k rows of a restart together) that
    belong to the restarts ``keep``, detached."""
    per = t.shape[0] // restarts
    idx = (keep[:, None].to(t.device) * per + torch.arange(per, device=t.device)[None]).reshape(-1)
    return t.detach()[idx].clone()


class Pixels(Parametrization):
    """GI-x: the images themselves are the variables (DLG, iDLG, InvertGrad).

    ``init``: "randn" (InvertGrad's N(0, 1) in normalised space, i.e. N(0.5, 0.25²) in pixel space),
    "uniform" (DLG/ROG: U[0, 1]) or "previous" (continue from the last stage);
    ``box``: clamp to [0, 1] after each step (InvertGrad's boxed constraint)."""

    name = "pixels"

    def __init__(self, init: str = "randn", box: bool = False):
        if init not in ("randn", "uniform", "previous"):
            raise ValueError(f"Pixels init must be randn | uniform | previous, got {init!r}")
        self.init, self.box = init, box
        self.x: Tensor | None = None

    def start(self, restarts, batch, shape, prev, gen):
        size = (restarts, batch, *shape)
        if self.init == "previous" and prev is not None:
            x = prev.detach().clone()
        elif self.init == "uniform":
            x = torch.rand(size, generator=gen)
        else:
            x = 0.5 + 0.25 * torch.randn(size, generator=gen)
        self.x = x.requires_grad_()
        return [self.x]

    def images(self) -> Tensor:
        return self.x

    def select(self, keep):
        self.x = keep_rows(self.x, keep, self.x.shape[0]).requires_grad_()
        return [self.x]

    def project(self) -> None:
        if self.box:
            with torch.no_grad():
                self.x.clamp_(0, 1)


PARAMETRIZATIONS = {"pixels": Pixels}
