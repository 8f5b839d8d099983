"""``photo-corpus``: every natural photograph bundled with the installed packages, except the private
split of ``photos``, as seeded random crops with augmentation (to train priors that travel).

The corpus (read from the packages' own files, no download; a photograph whose package is missing is
skipped) — one label per source scene, the two motorcycle views being one scene:

* colour: scikit-learn ``flower.jpg``; scikit-image ``motorcycle_left`` / ``motorcycle_right`` (one
  scene), ``hubble_deep_field``, ``retina``; matplotlib ``grace_hopper.jpg``;
* greyscale (repeated to RGB): scikit-image ``camera``, ``brick``, ``grass``, ``gravel``, ``coins``,
  ``clock`` (motion-blurred photo), ``moon``, ``page``, ``text``, ``cell``, ``microaneurysms``.

Left out: the private photographs of ``photos`` (astronaut, chelsea = ``cat``, coffee, rocket, china,
immunohistochemistry); drawings and synthetic images (``logo``, ``colorwheel``, ``checkerboard``,
``horse``, ``phantom``, matplotlib's ``Minduka_Present_Blue_Pack`` clip art); ``lfw_subset`` (25×25 faces,
below the 32 px resolution); and everything scikit-image / SciPy would have to download (``eagle``,
``scipy.datasets.face`` …).

Augmentation (fixed by ``seed``): from each photograph :data:`CROPS_PER_PHOTO` square crops at a random
scale (side log-uniform in [1/5, 1] of the short side — random scales and crops), a random horizontal
flip, and colour jitter (brightness ×U(0.8, 1.2), contrast ×U(0.8, 1.2), saturation ×U(0.7, 1.3)),
resized (antialiased) to ``resolution``. Scenes that yield several views (motorcycle) share the budget.

Splits: ``public`` / ``all`` — every scene (train the shipped prior on this); ``fold<k>-train`` /
``fold<k>-test`` for the leave-photographs-out evaluation (:data:`FOLDS`): the test side holds only the
held-out colour scenes of fold k, the train side everything else. ``num_classes`` is always the number
of scenes.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .base import ImageSet, pick_split, resize, take_first, to_channels

COLOUR = ("flower", "motorcycle", "hubble_deep_field", "retina", "grace_hopper")
GREY = ("camera", "brick", "grass", "gravel", "coins", "clock", "moon", "page", "text", "cell", "microaneurysms")
SCENES = COLOUR + GREY
#: held-out colour scenes of each leave-photographs-out fold
FOLDS = (("grace_hopper", "flower"), ("motorcycle",), ("hubble_deep_field", "retina"))
CROPS_PER_PHOTO = 48
MIN_SCALE = 0.2


def read_scene(name: str) -> list[np.ndarray]:
    """The views of one scene as ``H x W x 3`` uint8 arrays (bundled files only). Raises ImportError /
    OSError when the package or file is missing."""
    if name == "flower":
        from sklearn.datasets import load_sample_image

        return [np.asarray(load_sample_image("flower.jpg"))]
    if name == "grace_hopper":
        import matplotlib.cbook as cbook
        from PIL import Image

        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
            return [np.asarray(im.convert("RGB"))]
    import skimage.data

    if name == "motorcycle":
        left, right, _ = skimage.data.stereo_motorcycle()
        return [left, right]
    if name == "clock":
        a = skimage.data.clock()
    else:
        a = getattr(skimage.data, name)()
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return [a[..., :3]]


def _jitter(x: Tensor, g: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation jitter of one 1 x 3 x H x W image in [0, 1]."""
    u = torch.rand(3, generator=g)
    b, c, s = 0.8 + 0.4 * u[0], 0.8 + 0.4 * u[1], 0.7 + 0.6 * u[2]
    x = x * b
    lum = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = (x - lum.mean()) * c + lum.mean()
    lum = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = lum + (x - lum) * s
    return x.clamp(0.0, 1.0)


def augmented_crops(view: np.ndarray, count: int, resolution: int, g: torch.Generator) -> Tensor:
    """``count`` random-scale square crops of one view, flipped at random, colour-jittered, resized."""
    photo = torch.from_numpy(np.array(view, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    h, w = photo.shape[-2:]
    short = min(h, w)
    out = []
    for _ in range(count):
        scale = math.exp(math.log(MIN_SCALE) + float(torch.rand(1, generator=g)) * -math.log(MIN_SCALE))
        side = max(8, int(round(scale * short)))
        top = int(torch.randint(0, h - side + 1, (1,), generator=g))
        left = int(torch.randint(0, w - side + 1, (1,), generator=g))
        crop = photo[:, :, top:top + side, left:left + side]
        if float(torch.rand(1, generator=g)) < 0.5:
            crop = crop.flip(-1)
        out.append(_jitter(resize(crop, resolution), g))
    return torch.cat(out)


@lru_cache(maxsize=4)
def _built(resolution: int, channels: int, seed: int) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    g = torch.Generator().manual_seed(seed)
    images, labels, present = [], [], []
    for label, name in enumerate(SCENES):
        try:
            views = read_scene(name)
        except (ImportError, OSError, AttributeError):
            continue
        present.append(name)
        per = [CROPS_PER_PHOTO // len(views) + (i < CROPS_PER_PHOTO % len(views)) for i in range(len(views))]
        for view, n in zip(views, per):
            images.append(augmented_crops(view, n, resolution, g))
            labels += [label] * n
    stacked = to_channels(torch.cat(images), channels).contiguous()
    return stacked, torch.tensor(labels, dtype=torch.int64), tuple(present)


SPLITS = {"public": "public", "all": "public",
          **{f"fold{k}-{side}": f"fold{k}-{side}" for k in range(len(FOLDS)) for side in ("train", "test")}}


def load_photo_corpus(split: str = "public", resolution: int = 32, channels: int = 3, root: str | None = None,
                      seed: int = 0, limit: int | None = None) -> ImageSet:
    """The augmented corpus (see the module docstring); ``root`` is ignored, ``seed`` fixes the crops."""
    side = pick_split(split, SPLITS)
    images, labels, _present = _built(resolution, channels, seed)
    if side == "public":
        keep = torch.ones_like(labels, dtype=torch.bool)
    else:
        k, part = int(side[4:side.index("-")]), side.split("-")[1]
        held = torch.tensor([SCENES.index(n) for n in FOLDS[k]])
        keep = torch.isin(labels, held)
        keep = keep if part == "test" else ~keep
    idx = keep.nonzero().flatten()
    return take_first(ImageSet(images[idx], labels[idx], len(SCENES), "photo-corpus", list(SCENES)), limit)
