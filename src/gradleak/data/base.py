"""The :class:`ImageSet` container and small helpers shared by every loader.

Conventions: images are ``float32`` tensors ``N x C x H x W`` with values in ``[0, 1]``; labels are
an ``int64`` tensor of length ``N``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from gradleak.errors import UserError, bad_value

# ITU-R BT.601 luma weights (the same ones Pillow uses for ``convert("L")``).
LUMA = (0.299, 0.587, 0.114)


@dataclass
class ImageSet:
    """A labelled image dataset held in memory.

    ``num_classes`` is the size of the label space (a classifier head), which can be larger than the
    number of labels present, e.g. on one side of a split.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    name: str
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.ndim != 1 or len(self.images) != len(self.labels):
            raise ValueError(f"ImageSet {self.name}: images must be N x C x H x W and labels N, got "
                             f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | Tensor) -> ImageSet:
        """A new ImageSet with the given rows (copied), same classes and name."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return ImageSet(self.images[idx], self.labels[idx], self.num_classes, self.name,
                        list(self.class_names))


def resize(images: Tensor, resolution: int) -> Tensor:
    """Resize ``N x C x H x W`` images to ``resolution x resolution`` (bilinear, antialiased)."""
    if tuple(images.shape[-2:]) == (resolution, resolution):
        return images
    out = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.clamp_(0.0, 1.0)


def to_channels(images: Tensor, channels: int) -> Tensor:
    """Convert 1- or 3-channel images to ``channels`` (repeat grey, or luminance of RGB)."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.repeat(1, 3, 1, 1)
    if have == 3 and channels == 1:
        w = torch.tensor(LUMA, dtype=images.dtype).view(1, 3, 1, 1)
        return (images * w).sum(dim=1, keepdim=True).clamp_(0.0, 1.0)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def pick_split(split: object, aliases: Mapping[str, str]) -> str:
    """Map a user split name through ``aliases`` (user name -> canonical name) or raise UserError."""
    if isinstance(split, str) and split.lower() in aliases:
        return aliases[split.lower()]
    raise bad_value("data.split", split, ", ".join(aliases))


def take_first(data: ImageSet, limit: int | None) -> ImageSet:
    """The first ``limit`` rows of ``data`` (all of it when ``limit`` is None)."""
    return data if limit is None or limit >= len(data) else data.subset(range(limit))


def missing_path(path: str | Path, allowed: str, key: str = "data.root") -> UserError:
    """One-line error for a file or directory that does not exist."""
    return UserError(f"{key}: no such file or directory: {str(path)!r}; allowed: {allowed}")
