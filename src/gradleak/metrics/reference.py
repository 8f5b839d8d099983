"""Reference scores, margins over them, and a graded verdict: what a reconstruction's numbers mean.

A raw PSNR says little on its own: on the built-in photographs a flat grey image (every pixel 0.5)
already scores 10.9–12.2 dB and SSIM ≈ 0.3. Following the ROG paper (Yue et al., 2023, §6, Table 2),
which calibrates its scores against random noise and a same-class image, every reconstruction is scored
beside images that carry no information about the private batch:

* ``grey`` — the constant image 0.5 (no information at all);
* ``public_mean`` — the mean image of the public split (what an attacker knows without any update);
* ``same_class`` — a random public image of the true label of each private image (seeded); only where
  the public split holds that label (on the built-in ``photos`` the two sides share no label).

All references are scored against the **same matched originals, in the same order**, as the attack's
``per_image`` lists (``original[i]``), so margins are per image: Δmetric[i] = attack[i] − max over the
available references of reference[i] (higher is better for PSNR, SSIM and Jaccard).

The verdict (:class:`VerdictRule`) grades each image from those margins only — never from a raw PSNR —
and the batch takes the highest level any of its images reaches (one leaked image is a leak).
Every function here is pure: tensors and lists in, JSON-ready dicts out.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

from .image import psnr, ssim
from .semantic import jaccard

__all__ = ["REFERENCES", "LEVELS", "VerdictRule", "reference_images", "reference_scores", "margins", "verdict",
           "calibrate"]

REFERENCES = ("grey", "public_mean", "same_class")
LEVELS = ("none", "partial", "recognisable")
Level = Literal["none", "partial", "recognisable"]
METRICS = ("psnr", "ssim", "jaccard")

_DESCRIPTIONS = {
    "grey": "constant image 0.5 (no information)",
    "public_mean": "mean image of the public split",
    "same_class": "a random public image of the true label (seeded)",
}


@dataclass(frozen=True)
class VerdictRule:
    """Thresholds on the margins over the best reference (ΔPSNR in dB, ΔSSIM)."""

    recognisable_psnr_db: float = 3.0
    recognisable_ssim: float = 0.10
    partial_psnr_db: float = 1.0
    partial_ssim: float = 0.05

    def sentence(self) -> str:
        """The rule in one sentence (printed in the report and metrics.json)."""
        return (f"An image is recognisable when it beats the best reference (grey, public mean, random same-class "
                f"image) by at least {self.recognisable_psnr_db:g} dB PSNR and {self.recognisable_ssim:g} SSIM, "
                f"partial when it beats it by at least {self.partial_psnr_db:g} dB PSNR or "
                f"{self.partial_ssim:g} SSIM, and none otherwise; the batch takes the highest level of its images.")

    def level(self, d_psnr: float, d_ssim: float) -> Level:
        if d_psnr >= self.recognisable_psnr_db and d_ssim >= self.recognisable_ssim:
            return "recognisable"
        if d_psnr >= self.partial_psnr_db or d_ssim >= self.partial_ssim:
            return "partial"
        return "none"


def _check_public(originals: Tensor, public_images: Tensor | None, public_labels: Tensor | None) -> None:
    if public_images is None:
        return
    if public_images.dim() != 4 or tuple(public_images.shape[1:]) != tuple(originals.shape[1:]):
        raise ValueError(f"public images must be N x {tuple(originals.shape[1:])} like the originals; got "
                         f"{tuple(public_images.shape)}")
    if public_labels is not None and public_labels.shape != (public_images.shape[0],):
        raise ValueError(f"public labels must be ({public_images.shape[0]},); got {tuple(public_labels.shape)}")


def reference_images(originals: Tensor, public_images: Tensor | None = None, public_labels: Tensor | None = None,
                     true_labels: Tensor | None = None, seed: int = 0) -> dict[str, tuple[Tensor, list[int | None]]]:
    """``{name: (images B x C x H x W, public index per image or None)}`` for the available references.

    ``same_class`` picks, for original i, a uniformly random public image whose label is
    ``true_labels[i]`` (``torch.Generator`` seeded with ``seed``); rows without one hold the grey image
    and index ``None`` (their scores are reported as ``None``)."""
    _check_public(originals, public_images, public_labels)
    b = originals.shape[0]
    grey = torch.full_like(originals, 0.5, dtype=torch.float32)
    out: dict[str, tuple[Tensor, list[int | None]]] = {"grey": (grey, [None] * b)}
    if public_images is None or public_images.shape[0] == 0:
        return out
    pub = public_images.to(torch.float32)
    out["public_mean"] = (pub.mean(0, keepdim=True).expand_as(grey).clone(), [None] * b)
    if public_labels is None or true_labels is None:
        return out
    g = torch.Generator().manual_seed(int(seed))
    images, idx = grey.clone(), []
    for i, y in enumerate(true_labels.tolist()):
        pool = (public_labels == int(y)).nonzero().flatten()
        if pool.numel() == 0:
            idx.append(None)
            continue
        j = int(pool[int(torch.randint(pool.numel(), (1,), generator=g))])
        images[i] = pub[j]
        idx.append(j)
    if any(j is not None for j in idx):
        out["same_class"] = (images, idx)
    return out


def reference_scores(originals: Tensor, public_images: Tensor | None = None, public_labels: Tensor | None = None,
                     true_labels: Tensor | None = None, *, seed: int = 0,
                     tagger: Callable[[Tensor], Sequence[Sequence[str]]] | None = None) -> dict:
    """Scores of every reference against ``originals`` (the attack's matched originals, in its order).

    Returns ``{name: {"description", "psnr": [...], "ssim": [...], "jaccard": [...] or None,
    "public_index": [...]}, ..., "unavailable": {name: reason}}``; per-image entries are ``None`` where a
    reference does not exist for that image. ``tagger`` (images → tag lists) adds the Jaccard index of
    the tags (ROGS eq. 21)."""
    originals = originals.detach().to(torch.float32)
    refs = reference_images(originals, public_images, public_labels, true_labels, seed)
    orig_tags = tagger(originals) if tagger is not None else None
    out: dict = {}
    for name, (images, idx) in refs.items():
        with torch.no_grad():
            p, s = psnr(images, originals).tolist(), ssim(images, originals).tolist()
        jac = None
        if tagger is not None:
            jac = [jaccard(a, b) for a, b in zip(orig_tags, tagger(images))]
        have = [name != "same_class" or j is not None for j in idx]
        out[name] = {
            "description": _DESCRIPTIONS[name],
            "psnr": [float(v) if h else None for v, h in zip(p, have)],
            "ssim": [float(v) if h else None for v, h in zip(s, have)],
            "jaccard": None if jac is None else [float(v) if h else None for v, h in zip(jac, have)],
            "public_index": idx,
        }
    out["unavailable"] = {}
    if "public_mean" not in out:
        out["unavailable"]["public_mean"] = "no public split images given"
    if "same_class" not in out:
        out["unavailable"]["same_class"] = ("no public image shares a label with the private batch"
                                            if public_images is not None and public_labels is not None
                                            and true_labels is not None else "no public labels or true labels given")
    elif any(j is None for j in out["same_class"]["public_index"]):
        out["unavailable"]["same_class"] = "some private labels have no public image (their entries are null)"
    return out


def _summary(values: list[float]) -> dict:
    return {"mean": math.fsum(values) / len(values) if values else None,
            "min": min(values) if values else None, "per_image": values}


def margins(attack: dict[str, Sequence[float] | None], references: dict) -> dict:
    """Per-image margins of the attack over the best reference, per metric.

    ``attack``: ``{"psnr": per_image, "ssim": per_image, "jaccard": per_image or None}`` (the attack's
    matched scores). Returns ``{metric: {"mean", "min", "per_image", "best_reference": [name, ...]}}``
    for PSNR and SSIM, and for Jaccard when both the attack and the references have tags (else None)."""
    out: dict = {}
    names = [n for n in REFERENCES if n in references]
    for metric in METRICS:
        vals = attack.get(metric)
        if vals is None or any(references[n].get(metric) is None for n in names):
            out[metric] = None
            continue
        per, best = [], []
        for i, v in enumerate(vals):
            cands = [(references[n][metric][i], n) for n in names if references[n][metric][i] is not None]
            top, who = max(cands)
            per.append(float(v) - float(top))
            best.append(who)
        out[metric] = {**_summary(per), "best_reference": best}
    return out


def verdict(margin: dict, rule: VerdictRule = VerdictRule()) -> dict:
    """Graded level per image and for the batch from :func:`margins` (PSNR and SSIM margins).

    Returns ``{"rule": sentence, "thresholds": {...}, "per_image": [level, ...], "batch": level,
    "counts": {level: n}}``."""
    dp, ds = margin["psnr"]["per_image"], margin["ssim"]["per_image"]
    per = [rule.level(a, b) for a, b in zip(dp, ds)]
    batch = max(per, key=LEVELS.index) if per else "none"
    return {"rule": rule.sentence(), "thresholds": asdict(rule), "per_image": per, "batch": batch,
            "counts": {lv: per.count(lv) for lv in LEVELS}}


def calibrate(attack: dict[str, Sequence[float] | None], originals: Tensor, public_images: Tensor | None = None,
              public_labels: Tensor | None = None, true_labels: Tensor | None = None, *, seed: int = 0,
              tagger: Callable[[Tensor], Sequence[Sequence[str]]] | None = None,
              rule: VerdictRule = VerdictRule()) -> dict:
    """References, margins and verdict in one JSON-ready dict:
    ``{"reference": ..., "margins": ..., "verdict": ...}`` (see the functions above)."""
    refs = reference_scores(originals, public_images, public_labels, true_labels, seed=seed, tagger=tagger)
    m = margins(attack, refs)
    return {"reference": refs, "margins": m, "verdict": verdict(m, rule)}
