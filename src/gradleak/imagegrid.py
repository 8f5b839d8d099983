"""Image grids (Pillow only): originals vs. reconstructions, and generic labelled rows of images.

Layout (all sizes in pixels, ``PAD`` between everything)::

    PAD | label column | PAD-separated cells of width cell_w | PAD

``cell_w`` is the widest upscaled image or caption over the whole grid, so columns line up across
lines. A line is as tall as its tallest image, plus ``caption height`` when it has captions.
Rows with more than ``max_per_row`` images wrap onto further lines (for the reconstruction grid the
original/reconstruction pair wraps together, so each reconstruction stays under its original).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from gradleak.atomic import atomic_save_image

__all__ = ["PAD", "tensor_to_pil", "reconstruction_grid", "image_rows"]

PAD = 4
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
LABEL_TEXT = (90, 90, 90)

ImageLike = Tensor | Sequence[Tensor]


@lru_cache(maxsize=1)
def _font():
    return ImageFont.load_default()


def _text_w(text: str) -> int:
    if not text:
        return 0
    left, _, right, _ = _font().getbbox(text)
    return int(right - min(left, 0))


@lru_cache(maxsize=1)
def _text_h() -> int:
    """One line of text: a fixed height, so the layout does not depend on the glyphs used."""
    _, top, _, bottom = _font().getbbox("Ag|dB0")
    return int(bottom) + 2


def tensor_to_pil(image: Tensor, scale: int = 1) -> Image.Image:
    """One image (C x H x W with C in {1, 3}, or H x W) in [0, 1] -> RGB :class:`PIL.Image.Image`.

    NaN becomes 0, values are clamped to [0, 1]; upscaled ``scale`` times with nearest neighbour."""
    t = image.detach().to("cpu", torch.float32)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"expected an image C x H x W with C in (1, 3), got shape {tuple(image.shape)}")
    t = torch.nan_to_num(t, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)
    arr = (t * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)  # uint8 -> "L" / "RGB"
    pil = pil.convert("RGB")
    if scale != 1:
        if scale < 1 or int(scale) != scale:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        pil = pil.resize((pil.width * int(scale), pil.height * int(scale)), Image.Resampling.NEAREST)
    return pil


def _images(batch: ImageLike | None) -> list[Tensor]:
    if batch is None:
        return []
    if isinstance(batch, Tensor):
        if batch.dim() == 3 and batch.shape[0] not in (1, 3):  # N x H x W greyscale batch
            batch = batch.unsqueeze(1)
        if batch.dim() == 3:  # a single image
            return [batch]
        if batch.dim() != 4:
            raise ValueError(f"expected images N x C x H x W, got shape {tuple(batch.shape)}")
        return list(batch)
    return list(batch)


@dataclass
class _Line:
    label: str
    cells: list[Image.Image]
    captions: list[str] | None = None


def _chunks(n: int, size: int) -> list[range]:
    size = max(1, int(size))
    return [range(i, min(i + size, n)) for i in range(0, max(n, 1), size)] if n else []


def _compose(lines: list[_Line]) -> Image.Image:
    if not lines or not any(line.cells for line in lines):
        raise ValueError("nothing to draw: no images given")
    cap_h = _text_h() + PAD // 2
    label_w = max(_text_w(line.label) for line in lines)
    label_col = label_w + PAD if label_w else 0
    cell_w = max(
        [c.width for line in lines for c in line.cells]
        + [_text_w(t) for line in lines for t in (line.captions or [])]
    )
    ncols = max(len(line.cells) for line in lines)
    heights = [
        (max((c.height for c in line.cells), default=0) + (cap_h if line.captions else 0)) for line in lines
    ]
    width = PAD + label_col + ncols * (cell_w + PAD)
    height = PAD + sum(h + PAD for h in heights)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    y = PAD
    for line, h in zip(lines, heights):
        img_h = h - (cap_h if line.captions else 0)
        if line.label:
            ty = y + max(0, (img_h - _text_h()) // 2)
            draw.text((PAD + label_w - _text_w(line.label), ty), line.label, fill=LABEL_TEXT, font=font)
        for j, cell in enumerate(line.cells):
            x = PAD + label_col + j * (cell_w + PAD)
            canvas.paste(cell, (x + (cell_w - cell.width) // 2, y))
            if line.captions and j < len(line.captions) and line.captions[j]:
                text = line.captions[j]
                draw.text((x + (cell_w - _text_w(text)) // 2, y + img_h + PAD // 2), text, fill=TEXT, font=font)
        y += h + PAD
    return canvas


def _save(canvas: Image.Image, path: str | os.PathLike | None) -> Image.Image:
    if path is not None:
        atomic_save_image(canvas, Path(path), format="PNG")
    return canvas


def reconstruction_grid(
    originals: ImageLike,
    reconstructions: ImageLike,
    captions: list[str] | None,
    path: str | os.PathLike | None,
    scale: int = 4,
    *,
    max_per_row: int = 8,
    labels: tuple[str, str] = ("original", "reconstruction"),
) -> Image.Image:
    """Originals on top, reconstructions below (matched order), a caption under each reconstruction.

    Tensors are N x C x H x W in [0, 1], C in {1, 3}. More than ``max_per_row`` images wrap onto
    further original/reconstruction line pairs. Writes a PNG to ``path`` (atomically) unless it is
    None; returns the :class:`PIL.Image.Image`."""
    orig = [tensor_to_pil(t, scale) for t in _images(originals)]
    rec = [tensor_to_pil(t, scale) for t in _images(reconstructions)]
    if captions is not None and len(captions) != len(rec):
        raise ValueError(f"{len(captions)} captions for {len(rec)} reconstructions")
    lines: list[_Line] = []
    for r in _chunks(max(len(orig), len(rec)), max_per_row):
        lines.append(_Line(labels[0], orig[r.start:r.stop]))
        caps = None if captions is None else [str(c) for c in captions[r.start:r.stop]]
        lines.append(_Line(labels[1], rec[r.start:r.stop], caps))
    return _save(_compose(lines), path)


def image_rows(
    rows: list[ImageLike],
    row_labels: list[str] | None,
    path: str | os.PathLike | None,
    scale: int = 4,
    *,
    captions: list[list[str] | None] | None = None,
    max_per_row: int = 8,
) -> Image.Image:
    """Generic labelled rows of images, e.g. one row per restart/iteration of an optimisation path.

    ``rows[i]`` is N_i x C x H x W (or a list of C x H x W); ``row_labels[i]`` is drawn at the left
    of its first line; ``captions[i]`` (optional) holds one caption per image of row i. Rows longer
    than ``max_per_row`` wrap. Writes a PNG to ``path`` unless None; returns the image."""
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} labels for {len(rows)} rows")
    if captions is not None and len(captions) != len(rows):
        raise ValueError(f"{len(captions)} caption lists for {len(rows)} rows")
    lines: list[_Line] = []
    for i, row in enumerate(rows):
        cells = [tensor_to_pil(t, scale) for t in _images(row)]
        caps = None if captions is None else captions[i]
        if caps is not None and len(caps) != len(cells):
            raise ValueError(f"row {i}: {len(caps)} captions for {len(cells)} images")
        label = "" if row_labels is None else str(row_labels[i])
        for k, r in enumerate(_chunks(len(cells), max_per_row) or [range(0)]):
            lines.append(_Line(label if k == 0 else "", cells[r.start:r.stop],
                               None if caps is None else [str(c) for c in caps[r.start:r.stop]]))
    return _save(_compose(lines), path)
