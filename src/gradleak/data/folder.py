"""``folder``: any directory of images at ``root`` (e.g. ImageNet val, your own photos).

Two layouts are accepted:

* label file: ``root/labels.csv`` or ``root/labels.txt`` with lines ``filename,label`` (or
  ``filename label``); the label is an integer class index or a class name (names are sorted to give
  indices). Paths are relative to ``root``; blank lines, ``#`` comments and a ``filename,...`` header
  are skipped. The label file wins when both layouts are present.
* class subfolders: ``root/<class>/...`` -- label = index of the subfolder in sorted order.

Images are read with Pillow (``RGB`` or ``L``), centre-cropped to a square and resized
(antialiased bilinear) to ``resolution``. ``limit`` reads only the first N files: in file-name
order for a label file, round-robin over the classes for subfolders (so a small limit still covers
many classes). Split ``all``, or ``public``/``private``: a deterministic half split of those files
by a permutation seeded with ``seed`` (public = first half).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gradleak.errors import UserError, bad_value

from .base import ImageSet, missing_path, pick_split

SPLITS = {"all": "all", "public": "public", "private": "private"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
LABEL_FILES = ("labels.csv", "labels.txt")
HEADER_WORDS = {"filename", "file", "image", "path", "name"}
ALLOWED = "a directory with class subfolders of images, or images plus labels.csv/labels.txt"


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def scan_subfolders(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files (round-robin over classes), labels and class names of the subfolder layout."""
    per_class: list[list[Path]] = []
    names: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.rglob("*") if is_image(p))
        if files:
            per_class.append(files)
            names.append(sub.name)
    order = sorted((rank, label) for label, files in enumerate(per_class) for rank in range(len(files)))
    return [per_class[label][rank] for rank, label in order], [label for _, label in order], names


def parse_label_file(path: Path) -> tuple[list[str], list[str]]:
    """``(filenames, label strings)`` from a label file, in file order."""
    files, labels = [], []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"data.root: {str(path)!r} is not UTF-8 text (byte {err.start}); allowed: {ALLOWED}") from None
    for num, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in (line.split(",", 1) if "," in line else line.split(None, 1))]
        if not files and parts[0].lower() in HEADER_WORDS:
            continue
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise UserError(f"data.root: {str(path)!r} line {num}: got {raw!r}; allowed: 'filename,label'")
        files.append(parts[0])
        labels.append(parts[1])
    if not files:
        raise UserError(f"data.root: {str(path)!r} has no 'filename,label' lines; allowed: {ALLOWED}")
    return files, labels


def scan_label_file(root: Path, path: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files (sorted by name), labels and class names of the label-file layout."""
    names, raw = parse_label_file(path)
    if all(r.lstrip("-").isdigit() for r in raw):
        indices = [int(r) for r in raw]
        if min(indices) < 0:
            raise UserError(f"data.root: {str(path)!r} has a negative label {min(indices)}; allowed: labels >= 0")
        classes = [str(i) for i in range(max(indices) + 1)]
    else:
        classes = sorted(set(raw))
        lookup = {c: i for i, c in enumerate(classes)}
        indices = [lookup[r] for r in raw]
    pairs = sorted(zip(names, indices))
    return [root / n for n, _ in pairs], [i for _, i in pairs], classes


def read_image(path: Path, resolution: int, channels: int) -> Tensor:
    """One image as ``C x R x R`` float32 in [0, 1]: centre square crop, then resize."""
    if not path.is_file():
        raise missing_path(path, ALLOWED)
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    from gradleak.safefile import open_image

    try:
        with open_image(path, "data.root") as img:  # size checked before decoding (gradleak.limits.IMAGE_PIXELS)
            img.draft(mode, (resolution, resolution))  # fast JPEG decode at reduced size
            img = img.convert(mode)
            w, h = img.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            img = img.crop((left, top, left + s, top + s)).resize((resolution, resolution),
                                                                   Image.Resampling.BILINEAR)
    except UserError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # bomb: over 2x MAX_IMAGE_PIXELS
        raise UserError(f"data.root: cannot read image {str(path)!r} ({' '.join(str(err).split())}); "
                        f"allowed: images Pillow can open") from None
    arr = torch.from_numpy(np.array(img, dtype=np.uint8)).to(torch.float32).div_(255.0)
    return arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1)


def load_folder(split: str = "private", resolution: int = 32, channels: int = 3,
                root: str | None = None, seed: int = 0, limit: int | None = None) -> ImageSet:
    """Images from the folder ``root`` (see the module docstring for layouts, limit and split)."""
    side = pick_split(split, SPLITS)
    if root is None:
        raise bad_value("data.root", None, ALLOWED)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise missing_path(base, ALLOWED)
    label_file = next((base / n for n in LABEL_FILES if (base / n).is_file()), None)
    files, labels, classes = scan_label_file(base, label_file) if label_file else scan_subfolders(base)
    if not files:
        raise UserError(f"data.root: no images found in {str(base)!r}; allowed: {ALLOWED}")
    files, labels = files[:limit], labels[:limit]
    if side != "all":
        perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
        half = len(files) // 2
        keep = sorted(perm[:half] if side == "public" else perm[half:])
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    if files:
        images = torch.stack([read_image(f, resolution, channels) for f in files])
    else:
        images = torch.zeros(0, channels, resolution, resolution)
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64), len(classes), "folder", classes)
