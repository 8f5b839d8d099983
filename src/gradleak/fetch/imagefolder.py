"""Turning extracted photographs into an image-folder dataset: classes, a split by photograph, crops.

Split (fixed, no photograph on both sides): photograph ``p`` of dataset ``d`` goes to ``test`` when
``int(sha256(f"{d}:{p}")[:8], 16) / 2**32 < test_fraction`` with ``p`` = ``<package>-<version>/<path>`` (at
least one photograph on each side when there are two or more), else ``train``. The hash depends only on the
dataset name, the pinned package version and the photograph's path inside the package, so adding or
removing other files never moves a photograph.

Crops of a photograph (all on the photograph's side): the centre square of the full short side, plus
``crops`` random squares (side ``s`` = short side × exp(U(log min_scale, 0)), position uniform), drawn
from a ``numpy`` generator seeded by the same hash — the same photograph always gives the same crops.
Each crop is resized (Pillow, Lanczos — antialiased) to every resolution and written as PNG:
``images/<res>/<split>/<class>/<photo>__c<k>.png``.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .spec import Fetchable, Take

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Photo:
    """One source photograph: ``rel`` its path under ``extracted/<source key>/``."""

    rel: str
    path: Path
    label: str


def _hash(dataset: str, rel: str) -> int:
    return int(hashlib.sha256(f"{dataset}:{rel}".encode()).hexdigest()[:16], 16)


def split_of(dataset: str, rel: str, test_fraction: float) -> str:
    """``train`` or ``test`` for one photograph (see the module docstring)."""
    u = (_hash(dataset, rel) >> 32) / 2**32
    return "test" if u < test_fraction else "train"


def assign_splits(dataset: str, photos: list[Photo], test_fraction: float) -> dict[str, str]:
    """rel -> split; when the hash puts every photograph on one side, the one nearest the threshold moves."""
    sides = {p.rel: split_of(dataset, p.rel, test_fraction) for p in photos}
    if len(photos) >= 2 and 0 < test_fraction < 1 and len(set(sides.values())) == 1:
        only = next(iter(sides.values()))
        u = {p.rel: (_hash(dataset, p.rel) >> 32) / 2**32 for p in photos}
        move = min(u, key=u.get) if only == "train" else max(u, key=u.get)
        sides[move] = "train" if only == "test" else "test"
    return sides


def class_of(take: Take, source_name: str, rel: str) -> str:
    """A file's class name by the ``take.classes`` rule (see :class:`~gradleak.fetch.spec.Take`)."""
    p = PurePosixPath(rel)
    rule = take.classes
    if rule == "parent":
        name = p.parent.name
    elif rule == "source":
        name = source_name
    elif rule == "stem":
        name = re.sub(r"[\d_\-\s]+$", "", p.stem) or p.stem
    elif rule == "label":
        idx = int(p.stem.rsplit("_", 1)[-1])
        name = take.label_names[idx] if take.label_names else f"{idx:04d}"
    elif rule.startswith("fixed:"):
        name = rule[6:]
    else:
        raise ValueError(f"unknown class rule {rule!r}")
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name) or "unnamed"


def crop_boxes(dataset: str, rel: str, w: int, h: int, crops: int, min_scale: float) -> list[tuple[int, int, int, int]]:
    """The centre square plus ``crops`` seeded multi-scale squares, as (left, top, right, bottom)."""
    s = min(w, h)
    boxes = [((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)]
    rng = np.random.default_rng(_hash(dataset, rel))
    for _ in range(crops):
        side = max(8, int(round(s * math.exp(rng.uniform(math.log(min_scale), 0.0)))))
        left = int(rng.integers(0, w - side + 1))
        top = int(rng.integers(0, h - side + 1))
        boxes.append((left, top, left + side, top + side))
    return boxes


def _slug(rel: str) -> str:
    p = PurePosixPath(rel)
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", p.stem)[:60]
    return f"{stem}-{hashlib.sha256(rel.encode()).hexdigest()[:6]}"


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def build_images(spec: Fetchable, photos: list[Photo], out: Path) -> tuple[list[Path], list[dict]]:
    """Write the crops of every photograph under ``out/images``; returns (files written, per-photo records)."""
    from PIL import Image

    sides = assign_splits(spec.name, photos, spec.test_fraction)
    written: list[Path] = []
    records: list[dict] = []
    for photo in sorted(photos, key=lambda p: p.rel):
        with Image.open(photo.path) as im:
            im.load()
            img = im.convert("RGB")
        boxes = crop_boxes(spec.name, photo.rel, img.width, img.height, spec.crops, spec.min_scale)
        split = sides[photo.rel]
        for k, box in enumerate(boxes):
            crop = img.crop(box)
            for res in spec.resolutions:
                path = out / "images" / str(res) / split / photo.label / f"{_slug(photo.rel)}__c{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)  # inside the build's temp dir: no fsync per file
                path.write_bytes(_png(crop.resize((res, res), Image.Resampling.LANCZOS)))
                written.append(path)
        records.append({"photo": photo.rel, "class": photo.label, "split": split, "size": [img.width, img.height],
                        "crops": [list(b) for b in boxes]})
    return written, records
