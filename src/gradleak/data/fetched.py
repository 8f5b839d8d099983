"""``fetched``: a dataset that ``gradleak data fetch NAME`` built in the cache, by name.

``root`` is the dataset name (``debian-photos``, ``dlib-faces``, ...; see ``gradleak data list``) or the
path of a fetched dataset directory. The images are read from ``<dataset>/images/<R>/<split>/`` — the
smallest built size ``R`` >= ``resolution`` (else the largest) — with gradleak's ``folder`` loader (class
subfolders; resized to ``resolution``). Splits: ``train`` (alias ``public``: the prior-training / tuning
side), ``test`` (alias ``private``: photographs never on the train side), ``all`` (both). The split is
fixed by photograph when the dataset is built (see :mod:`gradleak.fetch.imagefolder`); ``seed`` is unused.
The class list is the union of both sides, so labels agree between ``train`` and ``test``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from gradleak.cache import datasets_dir
from gradleak.errors import UserError, bad_value

from .base import ImageSet, pick_split
from .folder import is_image, read_image

SPLITS = {"train": "train", "public": "train", "test": "test", "private": "test", "all": "all"}


def fetched_dir(root: str | None) -> Path:
    """The dataset directory for a name or path; a one-line error naming the fetch command when absent."""
    if not root:
        raise bad_value("data.root", root, "the name of a fetched dataset (gradleak data list) or its directory")
    path = Path(root).expanduser()
    if not (path / "images").is_dir():
        named = datasets_dir() / str(root)
        if (named / "images").is_dir():
            path = named
        else:
            raise UserError(f"data.root: {root!r} is not a fetched image dataset (no {named}/images); allowed: "
                            f"a name fetched with 'gradleak data fetch {root}' or a fetched dataset directory")
    return path


def load_fetched(split: str = "train", resolution: int = 32, channels: int = 3, root: str | None = None,
                 seed: int = 0, limit: int | None = None) -> ImageSet:
    """Images of a fetched dataset (see the module docstring)."""
    del seed
    side = pick_split(split, SPLITS)
    base = fetched_dir(root) / "images"
    sizes = sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())
    if not sizes:
        raise UserError(f"data.root: {str(base)!r} has no images/<size>/ folders; allowed: a fetched image dataset")
    size = next((s for s in sizes if s >= resolution), sizes[-1])
    sides = ("train", "test") if side == "all" else (side,)
    classes = sorted({p.name for s in ("train", "test") if (base / str(size) / s).is_dir()
                      for p in (base / str(size) / s).iterdir() if p.is_dir()})
    lookup = {c: i for i, c in enumerate(classes)}
    per_class: dict[str, list[Path]] = {}
    for s in sides:
        if (base / str(size) / s).is_dir():
            for p in (base / str(size) / s).rglob("*"):
                if is_image(p):
                    per_class.setdefault(p.parent.name, []).append(p)
    # round-robin over the classes (as ``folder`` does), so a small ``limit`` still covers many classes
    ranked = sorted((rank, c, p) for c, ps in per_class.items() for rank, p in enumerate(sorted(ps, key=lambda q: q.name)))
    files = [p for _, _, p in ranked][:limit]
    images = (torch.stack([read_image(f, resolution, channels) for f in files]) if files
              else torch.zeros(0, channels, resolution, resolution))
    labels = torch.tensor([lookup[f.parent.name] for f in files], dtype=torch.int64)
    return ImageSet(images, labels, max(len(classes), 1), "fetched", classes)
