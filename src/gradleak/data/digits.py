"""``digits``: scikit-learn's 8x8 handwritten digits, upsampled (1797 images, 10 classes).

The public/private split is fixed (stratified seeded permutation with seed 0, independent of the
``seed`` argument): each class is halved, so both sides contain every digit and no image is on both.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .base import ImageSet, pick_split, resize, take_first, to_channels

SPLITS = {"public": "public", "private": "private", "all": "all"}
NUM_CLASSES = 10


@lru_cache(maxsize=1)
def _raw() -> tuple[Tensor, Tensor]:
    """All digits as ``N x 1 x 8 x 8`` in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images).to(torch.float32).div_(16.0).clamp_(0.0, 1.0).unsqueeze(1)
    return images, torch.from_numpy(d.target).to(torch.int64)


@lru_cache(maxsize=1)
def split_indices() -> dict[str, Tensor]:
    """Fixed row indices of each side: ``{"public": ..., "private": ..., "all": ...}`` (sorted)."""
    _, labels = _raw()
    g = torch.Generator().manual_seed(0)
    public, private = [], []
    for c in range(NUM_CLASSES):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        public.append(idx[: len(idx) // 2])
        private.append(idx[len(idx) // 2:])
    return {"public": torch.cat(public).sort().values, "private": torch.cat(private).sort().values,
            "all": torch.arange(len(labels))}


@lru_cache(maxsize=4)
def _built(resolution: int, channels: int) -> tuple[Tensor, Tensor]:
    images, labels = _raw()
    return to_channels(resize(images, resolution), channels).contiguous(), labels


def load_digits_set(split: str = "private", resolution: int = 32, channels: int = 3,
                    root: str | None = None, seed: int = 0, limit: int | None = None) -> ImageSet:
    """Digits at ``resolution`` with 1 or 3 channels. ``root`` and ``seed`` are ignored (the split
    is fixed); ``limit`` keeps the first N images of the split."""
    side = pick_split(split, SPLITS)
    images, labels = _built(resolution, channels)
    idx = split_indices()[side]
    data = ImageSet(images[idx], labels[idx], NUM_CLASSES, "digits", [str(i) for i in range(10)])
    return take_first(data, limit)
