"""Differentiable perceptual distances for ROGS's inversion loss (eq. 20's LPIPS term), and what to use when
LPIPS's published weights are not installed.

Registry :data:`PERCEPTUAL` (``name → builder(shape, lpips_dir) → (distance, description)``); a distance maps
two (N, C, H, W) batches in [0, 1] to (N,) values and is differentiable in its first argument:

* ``lpips`` — LPIPS (AlexNet, v0.1, :mod:`gradleak.metrics.lpips`); needs the two weight files;
* ``enhancer`` — an LPIPS-style distance on the features of the shipped ROG enhancer's U-Net encoder
  (:data:`gradleak.nets.enhancer.BUILTIN_ENHANCERS`, trained on public data for restoration): each block's
  output unit-normalised over channels, squared difference summed over channels, spatial mean, summed over
  blocks (LPIPS with all linear-head weights equal to 1). Independent of the evaluation tagger;
* ``tagger`` — the same distance on the built-in tagger's conv stages. Optimising against the network that
  later scores Jaccard inflates that score, so it is never chosen by ``auto``;
* ``none`` — 0 (eq. 20 with λ2 = 0).

``auto`` takes the first available of lpips → enhancer → none and records why the others were skipped.
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from gradleak.errors import UserError, bad_value

Distance = Callable[[Tensor, Tensor], Tensor]


class Unavailable(Exception):
    """A perceptual network cannot be built here (the message says why)."""


def feature_distance(features: Callable[[Tensor], list[Tensor]]) -> Distance:
    """LPIPS-style distance with unit head weights on the taps returned by ``features``."""

    def dist(a: Tensor, b: Tensor) -> Tensor:
        total = a.new_zeros(a.shape[0])
        for fa, fb in zip(features(a), features(b)):
            na = fa / (fa.square().sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (na - nb).square().sum(1).mean((1, 2))
        return total

    return dist


def _lpips(shape, lpips_dir):
    from gradleak.metrics import lpips_status

    net, reason = lpips_status(lpips_dir, upsample=True)  # a loss, not a score: small images upsampled as before
    if net is None:
        raise Unavailable(reason or "LPIPS weights not found")
    for p in net.parameters():
        p.requires_grad_(False)
    return (lambda a, b: net(a, b)), "lpips (AlexNet v0.1, published weights)"


def _enhancer(shape, lpips_dir):
    from gradleak.nets.enhancer import auto_enhancer, load_enhancer

    name = auto_enhancer(int(shape[0]), int(shape[-1]))
    if name is None:
        raise Unavailable(f"no built-in ROG enhancer for {shape[0]}-channel images")
    net = load_enhancer(name).net
    for p in net.parameters():
        p.requires_grad_(False)
    if net.num_classes:
        raise Unavailable(f"built-in enhancer {name} is label-conditional")

    def features(x: Tensor) -> list[Tensor]:
        x = x if x.shape[1] == net.channels else x.mean(1, keepdim=True).expand(-1, net.channels, -1, -1)
        m = 2 ** net.depth
        ph, pw = (-x.shape[-2]) % m, (-x.shape[-1]) % m
        h = F.pad(x, (0, pw, 0, ph), mode="replicate") - 0.5 if ph or pw else x - 0.5
        taps = [net.inc(h)]
        for down in net.downs[:2]:  # the deeper blocks are 1×1–4×4 at these sizes
            taps.append(down(F.max_pool2d(taps[-1], 2)))
        return taps

    return feature_distance(features), f"enhancer features (U-Net encoder of the shipped ROG enhancer {name})"


def _tagger(shape, lpips_dir):
    from gradleak.metrics.semantic import load_tagger

    tagger = load_tagger("auto", shape=tuple(shape))
    if tagger is None or not hasattr(tagger.net, "features"):
        raise Unavailable(f"no built-in tagger for {shape[0]}-channel {shape[-1]}×{shape[-1]} images")

    def features(x: Tensor) -> list[Tensor]:
        return tagger.net.features(tagger.prepare(x))

    return feature_distance(features), (f"tagger features (built-in tagger {tagger.name}; the same network scores "
                                        "Jaccard, so Jaccard is inflated)")


def _none(shape, lpips_dir):
    return (lambda a, b: a.new_zeros(a.shape[0])), "none (λ2 term off)"


PERCEPTUAL: dict[str, Callable] = {"lpips": _lpips, "enhancer": _enhancer, "tagger": _tagger, "none": _none}
AUTO_ORDER = ("lpips", "enhancer", "none")


def build_perceptual(name: str, shape: tuple[int, int, int], lpips_dir: str | None = None) -> tuple[Distance, dict]:
    """The distance and a JSON record ``{"name", "description", "requested", "skipped": {name: why}}``."""
    if name != "auto" and name not in PERCEPTUAL:
        raise bad_value("attack.options.perceptual", name, "auto, " + ", ".join(PERCEPTUAL))
    order = AUTO_ORDER if name == "auto" else (name,)
    skipped: dict[str, str] = {}
    for n in order:
        try:
            dist, desc = PERCEPTUAL[n](shape, lpips_dir)
        except Unavailable as why:
            skipped[n] = str(why)
            continue
        return dist, {"name": n, "description": desc, "requested": name, "skipped": skipped}
    raise UserError(f"attack.options.perceptual: {name} is unavailable here: {skipped.get(name, '')}")


def describe_perceptual(record: dict) -> str:
    """One line for reports: what was used and, when LPIPS was skipped, why."""
    text = record["description"]
    if "lpips" in record.get("skipped", {}):
        text += f" — instead of LPIPS: {record['skipped']['lpips']}"
    return text


__all__ = ["PERCEPTUAL", "build_perceptual", "describe_perceptual", "feature_distance", "Unavailable"]
