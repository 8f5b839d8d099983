"""Image attributes that a tagger can learn from public data alone (the non-class tags of the built-in tagger).

Each attribute is a function of the pixels (``N x C x H x W`` in [0, 1]), computed batched:

* ``brightness`` — mean luma (BT.601);
* ``contrast`` — standard deviation of luma;
* ``edges`` — edge density: fraction of pixels whose Sobel gradient magnitude of luma exceeds 0.25;
* ``colourfulness`` — Hasler & Süsstrunk (2003): √(σ_rg² + σ_yb²) + 0.3·√(μ_rg² + μ_yb²);
* ``centre_x`` / ``centre_y`` — horizontal / vertical centre of the luma mass, in [0, 1];
* ``colour`` — dominant colour: the hue sextant (red, yellow, green, cyan, blue, magenta) of the mean colour
  of the saturated pixels, or ``grey`` when fewer than 5 % of the pixels have saturation ≥ 0.25.

The continuous ones are binned into ``low`` / ``mid`` / ``high`` at the tertiles of the *public* split
(:func:`fit_bins`), so every tag is defined by public data; an attribute whose public values fall in a
single bin (e.g. colourfulness on grey digits) carries no information and is dropped. A tag reads
``"<attribute>:<value>"``, e.g. ``"edges:high"``, ``"colour:blue"``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)
HUES = ("red", "yellow", "green", "cyan", "blue", "magenta")
BINS = ("low", "mid", "high")
CONTINUOUS = ("brightness", "contrast", "edges", "colourfulness", "centre_x", "centre_y")


def luma(x: Tensor) -> Tensor:
    """(N, C, H, W) → (N, H, W) luma (grey images pass through)."""
    if x.shape[1] == 1:
        return x[:, 0]
    return (x[:, :3] * x.new_tensor(LUMA).reshape(1, 3, 1, 1)).sum(1)


def _rgb(x: Tensor) -> Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def edge_density(x: Tensor, threshold: float = 0.25) -> Tensor:
    """Fraction of pixels whose Sobel gradient magnitude (of luma, replicate padding) exceeds ``threshold``."""
    y = F.pad(luma(x)[:, None], (1, 1, 1, 1), mode="replicate")
    kx = x.new_tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]).reshape(1, 1, 3, 3) / 4
    gx, gy = F.conv2d(y, kx), F.conv2d(y, kx.transpose(-1, -2))
    return ((gx.square() + gy.square()).sqrt() > threshold).float().mean((1, 2, 3))


def colourfulness(x: Tensor) -> Tensor:
    """Hasler & Süsstrunk's colourfulness (0 for grey images)."""
    r, g, b = _rgb(x).unbind(1)
    rg, yb = r - g, (r + g) / 2 - b
    std = (rg.flatten(1).var(1, unbiased=False) + yb.flatten(1).var(1, unbiased=False)).sqrt()
    mean = (rg.flatten(1).mean(1).square() + yb.flatten(1).mean(1).square()).sqrt()
    return std + 0.3 * mean


def mass_centre(x: Tensor) -> tuple[Tensor, Tensor]:
    """Centre of the luma mass (column, row) in [0, 1]; 0.5 for an all-black image."""
    y = luma(x)
    H, W = y.shape[-2:]
    total = y.sum((1, 2)).clamp_min(1e-8)
    cols = (y.sum(1) * torch.linspace(0, 1, W, dtype=y.dtype)).sum(1) / total
    rows = (y.sum(2) * torch.linspace(0, 1, H, dtype=y.dtype)).sum(1) / total
    empty = y.sum((1, 2)) < 1e-8
    return cols.masked_fill(empty, 0.5), rows.masked_fill(empty, 0.5)


def dominant_colour(x: Tensor, min_saturation: float = 0.25, min_fraction: float = 0.05) -> list[str]:
    """Hue sextant of the mean colour of the saturated pixels, or ``grey`` (see the module docstring)."""
    rgb = _rgb(x)
    mx, mn = rgb.amax(1), rgb.amin(1)
    sat = (mx - mn) / mx.clamp_min(1e-8)
    mask = (sat >= min_saturation).float()
    frac = mask.mean((1, 2))
    mean = (rgb * mask[:, None]).sum((2, 3)) / mask.sum((1, 2)).clamp_min(1)[:, None]
    r, g, b = mean.unbind(1)
    hue = torch.atan2(3 ** 0.5 * (g - b), 2 * r - g - b)  # radians, red = 0
    sextant = torch.round(torch.remainder(hue, 2 * torch.pi) / (torch.pi / 3)).long() % 6
    return ["grey" if float(f) < min_fraction else HUES[int(s)] for f, s in zip(frac, sextant)]


def attribute_values(x: Tensor) -> dict[str, Tensor | list[str]]:
    """Every attribute of every image: continuous ones as (N,) tensors, ``colour`` as a list of names."""
    x = x.detach().float().clamp(0, 1)
    y = luma(x)
    cx, cy = mass_centre(x)
    return {"brightness": y.mean((1, 2)), "contrast": y.flatten(1).std(1, unbiased=False), "edges": edge_density(x),
            "colourfulness": colourfulness(x), "centre_x": cx, "centre_y": cy, "colour": dominant_colour(x)}


def fit_bins(public: Tensor) -> dict[str, list[float]]:
    """Tertile cut points of each continuous attribute on public images; attributes whose public values all
    fall in one bin are left out."""
    vals = attribute_values(public)
    cuts: dict[str, list[float]] = {}
    for name in CONTINUOUS:
        v = vals[name].double()
        q = [float(t) for t in torch.quantile(v, v.new_tensor([1 / 3, 2 / 3]))]
        if len(set(_bin_index(v, q).tolist())) > 1:
            cuts[name] = q
    return cuts


def _bin_index(v: Tensor, cuts: list[float]) -> Tensor:
    return torch.bucketize(v.double().contiguous(), torch.tensor(cuts, dtype=torch.float64), right=True)


def attribute_tags(x: Tensor, cuts: dict[str, list[float]], colours: bool = True) -> list[list[str]]:
    """The attribute tags of each image given the public cut points (and ``colour:<name>`` when ``colours``)."""
    vals = attribute_values(x)
    out: list[list[str]] = [[] for _ in range(x.shape[0])]
    for name, c in cuts.items():
        for i, b in enumerate(_bin_index(vals[name], c).tolist()):
            out[i].append(f"{name}:{BINS[b]}")
    if colours:
        for i, c in enumerate(vals["colour"]):
            out[i].append(f"colour:{c}")
    return out


def attribute_vocabulary(cuts: dict[str, list[float]], colours_seen: list[str]) -> list[str]:
    """All attribute tags: three bins per kept continuous attribute, then the colours seen in public data
    (left out entirely when only one colour was seen)."""
    tags = [f"{n}:{b}" for n in cuts for b in BINS]
    if len(set(colours_seen)) > 1:
        tags += [f"colour:{c}" for c in ("grey", *HUES) if c in set(colours_seen)]
    return tags
