"""Image attributes that a tagger can learn from public data alone (the non-class tags of the built-in tagger).

Each attribute is a function of the pixels (``N x C x H x W`` in [0, 1]), computed batched. Tone and colour:

* ``brightness`` — mean luma (BT.601) — for digits, how much ink (bold / thin strokes);
* ``colourfulness`` — Hasler & Süsstrunk (2003): √(σ_rg² + σ_yb²) + 0.3·√(μ_rg² + μ_yb²);
* ``colour`` — dominant colour: the hue sextant (red, yellow, green, cyan, blue, magenta) of the mean colour
  of the saturated pixels, or ``grey`` when fewer than 5 % of the pixels have saturation ≥ 0.25.

Layout, from the moments of the luma mass (coordinates in [0, 1]; robust to blur, unlike edge or contrast
statistics, so a blurred but faithful reconstruction keeps them):

* ``centre_x`` / ``centre_y`` — centre of mass (where the subject is);
* ``spread`` — √(μ20 + μ02), the subject's size;
* ``aspect`` — √(μ20 / μ02), wide or tall;
* ``slant`` — μ11 / μ02, the shear of the mass (left- or right-leaning strokes).

The continuous ones are binned into ``low`` / ``mid`` / ``high`` at the tertiles of the *public* split
(:func:`fit_bins`), so every tag is defined by public data; an attribute whose public values fall in a
single bin (e.g. colourfulness on grey digits) carries no information and is dropped. A tag reads
``"<attribute>:<value>"``, e.g. ``"slant:high"``, ``"colour:blue"``. (Edge density and contrast were tried
first and dropped: a few tenths of a dB of blur move them across a bin, so they measured sharpness, not content.)
"""
from __future__ import annotations

import torch
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)
HUES = ("red", "yellow", "green", "cyan", "blue", "magenta")
BINS = ("low", "mid", "high")
CONTINUOUS = ("brightness", "colourfulness", "centre_x", "centre_y", "spread", "aspect", "slant")


def luma(x: Tensor) -> Tensor:
    """(N, C, H, W) → (N, H, W) luma (grey images pass through)."""
    if x.shape[1] == 1:
        return x[:, 0]
    return (x[:, :3] * x.new_tensor(LUMA).reshape(1, 3, 1, 1)).sum(1)


def _rgb(x: Tensor) -> Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def colourfulness(x: Tensor) -> Tensor:
    """Hasler & Süsstrunk's colourfulness (0 for grey images)."""
    r, g, b = _rgb(x).unbind(1)
    rg, yb = r - g, (r + g) / 2 - b
    std = (rg.flatten(1).var(1, unbiased=False) + yb.flatten(1).var(1, unbiased=False)).sqrt()
    mean = (rg.flatten(1).mean(1).square() + yb.flatten(1).mean(1).square()).sqrt()
    return std + 0.3 * mean


def mass_moments(x: Tensor) -> dict[str, Tensor]:
    """Centre, spread, aspect and slant of the luma mass (see the module docstring); an all-black image gives
    centre 0.5 and zero spread, aspect 1, slant 0."""
    y = luma(x)
    H, W = y.shape[-2:]
    m = y.sum((1, 2))
    empty = m < 1e-8
    m = m.clamp_min(1e-8)
    xs, ys = torch.linspace(0, 1, W, dtype=y.dtype), torch.linspace(0, 1, H, dtype=y.dtype)
    cx = (y.sum(1) * xs).sum(1) / m
    cy = (y.sum(2) * ys).sum(1) / m
    dx, dy = xs[None, None, :] - cx[:, None, None], ys[None, :, None] - cy[:, None, None]
    mu20, mu02, mu11 = ((y * dx * dx).sum((1, 2)) / m, (y * dy * dy).sum((1, 2)) / m,
                        (y * dx * dy).sum((1, 2)) / m)
    eps = 1e-8
    return {"centre_x": cx.masked_fill(empty, 0.5), "centre_y": cy.masked_fill(empty, 0.5),
            "spread": (mu20 + mu02).clamp_min(0).sqrt().masked_fill(empty, 0.0),
            "aspect": ((mu20 + eps) / (mu02 + eps)).sqrt().masked_fill(empty, 1.0),
            "slant": (mu11 / (mu02 + eps)).masked_fill(empty, 0.0)}


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
    return {"brightness": luma(x).mean((1, 2)), "colourfulness": colourfulness(x), **mass_moments(x),
            "colour": dominant_colour(x)}


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
