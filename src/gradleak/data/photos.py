"""``photos``: crops of the colour photographs bundled with scikit-image and scikit-learn.

Each of the 12 source photographs is one class (label = photo index, ``class_names`` = photo
names). From every photo a deterministic grid of square crops is cut at three scales (the full
short side, 1/2 and 1/4 of it; ``floor(H/side) x floor(W/side)`` crops per scale, centred in their
grid cells) and resized (antialiased bilinear) to ``resolution``: 306 crops in all, 21-31 per photo.

The split is fixed and BY SOURCE PHOTOGRAPH, so no photograph is on both sides:

* private (the victim's side, labels 0-5): astronaut, chelsea, coffee, rocket, china,
  immunohistochemistry -- 166 crops;
* public (the prior-training side, labels 6-11): flower, motorcycle, hubble_deep_field, retina,
  colorwheel, logo -- 140 crops.

Public and private therefore have DISJOINT label sets, while ``num_classes`` is always 12 (all
photos) so a victim classifier has the same head size whichever side it is built from.
``channels=1`` gives luminance (BT.601).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .base import ImageSet, pick_split, resize, take_first, to_channels

PRIVATE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "china", "immunohistochemistry")
PUBLIC_PHOTOS = ("flower", "motorcycle", "hubble_deep_field", "retina", "colorwheel", "logo")
PHOTOS = PRIVATE_PHOTOS + PUBLIC_PHOTOS
SCALES = (1.0, 0.5, 0.25)
SPLITS = {"public": "public", "private": "private", "all": "all"}


def read_photo(name: str) -> np.ndarray:
    """One source photograph as an ``H x W x 3`` uint8 array (bundled files only, no download)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(f"{name}.jpg"))
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()[..., :3]  # logo is RGBA (opaque): drop alpha


def crop_boxes(height: int, width: int, scales: tuple[float, ...] = SCALES) -> list[tuple[int, int, int]]:
    """Deterministic ``(top, left, side)`` square crops: per scale a grid of crops of side
    ``scale * min(H, W)``, each centred in its grid cell."""
    boxes = []
    for scale in scales:
        side = max(1, int(scale * min(height, width)))
        ny, nx = max(1, height // side), max(1, width // side)
        for i in range(ny):
            top = min(max(round((i + 0.5) * height / ny - side / 2), 0), height - side)
            for j in range(nx):
                left = min(max(round((j + 0.5) * width / nx - side / 2), 0), width - side)
                boxes.append((top, left, side))
    return boxes


@lru_cache(maxsize=4)
def _built(resolution: int, channels: int) -> tuple[Tensor, Tensor]:
    """All crops of all photos (in :data:`PHOTOS` order) and their photo labels."""
    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        photo = torch.from_numpy(np.array(read_photo(name), dtype=np.uint8))  # writable copy
        photo = photo.permute(2, 0, 1).unsqueeze(0).to(torch.float32).div_(255.0)
        for top, left, side in crop_boxes(photo.shape[2], photo.shape[3]):
            images.append(resize(photo[:, :, top:top + side, left:left + side], resolution))
            labels.append(label)
    stacked = to_channels(torch.cat(images), channels).contiguous()
    return stacked, torch.tensor(labels, dtype=torch.int64)


def load_photos(split: str = "private", resolution: int = 32, channels: int = 3,
                root: str | None = None, seed: int = 0, limit: int | None = None) -> ImageSet:
    """Photo crops of one side of the fixed by-photograph split (see the module docstring).
    ``root`` and ``seed`` are ignored; ``limit`` keeps the first N crops of the split."""
    side = pick_split(split, SPLITS)
    images, labels = _built(resolution, channels)
    if side == "all":
        keep = torch.ones_like(labels, dtype=torch.bool)
    else:
        keep = labels < len(PRIVATE_PHOTOS) if side == "private" else labels >= len(PRIVATE_PHOTOS)
    idx = keep.nonzero().flatten()
    data = ImageSet(images[idx], labels[idx], len(PHOTOS), "photos", list(PHOTOS))
    return take_first(data, limit)
