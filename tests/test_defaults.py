"""The search presets' defaults must not regress to the under-reporting ones (issue 27).

The defaults were derived on real photographs against the peer tool (benchmarks/defaults_vs_peer.py,
docs/defaults.md). Those runs take minutes; here a tiny photograph-like batch (smooth colour gradients plus an
occluding patch — piecewise-smooth like a photo, unlike uniform noise) is built in the test, and
InvertGrad with its current defaults must beat the pre-issue-27 defaults (TV 1e-4, lr 0.025) by a clear
margin at the same iteration count. The runs are deterministic (fixed seeds, CPU); the margin measured when
the test was written is stated beside the threshold.
"""
from __future__ import annotations

import torch

from gradleak.attacks.presets import InvertGrad
from gradleak.case import Case, capture
from gradleak.fl.protocol import Protocol
from gradleak.metrics import score_images
from gradleak.models import build_model, init_model

OLD = {"tv": 1e-4, "lr": 0.025}  # gradleak invertgrad before issue 27


def photo_like(batch: int, res: int, seed: int) -> torch.Tensor:
    """``batch`` RGB images in [0, 1]: per channel a random low-frequency cosine ramp, plus one flat patch."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, res), torch.linspace(0, 1, res), indexing="ij")
    out = []
    for _ in range(batch):
        img = torch.zeros(3, res, res)
        for c in range(3):
            a = torch.rand(4, generator=g)
            img[c] = 0.5 + 0.25 * torch.cos(6.28 * (a[0] * xx + a[1] * yy + a[2])) + 0.2 * (a[3] - 0.5)
        x0, y0 = (torch.rand(2, generator=g) * res * 0.5).long().tolist()
        img[:, y0:y0 + res // 3, x0:x0 + res // 3] = torch.rand(3, 1, 1, generator=g)
        out.append(img.clamp(0, 1))
    return torch.stack(out)


def _psnr(attack: InvertGrad, seed: int) -> float:
    model = init_model(build_model("lenet", 10, 3, 16), seed)
    x, y = photo_like(2, 16, seed), torch.arange(2)
    obs = capture(Case(model, x, y, Protocol(), give_labels=True, model_spec=model.gradleak_spec))
    rec = attack(obs, labels=obs.labels, seed=seed, model=model, progress=False)
    return score_images(rec.images, x)["psnr"]["mean"]


def test_invertgrad_defaults_beat_the_old_ones_on_photo_like_images():
    its = 100
    new = [_psnr(InvertGrad(iterations=its), s) for s in (0, 1)]
    old = [_psnr(InvertGrad(iterations=its, **OLD), s) for s in (0, 1)]
    margin = sum(new) / 2 - sum(old) / 2
    # measured when written (TV 0.5, lr 0.05 vs TV 1e-4, lr 0.025): +1.81 and +2.90 dB on seeds 0 and 1
    # (mean +2.35; seeds 2 and 3, not used here: +1.43, +3.46)
    assert margin >= 1.0, (new, old)


def _rog_psnr(attack, seed: int) -> float:
    from gradleak.defenses.base import build_defenses

    model = init_model(build_model("lenet", 10, 3, 32), seed)
    x, y = photo_like(2, 32, seed), torch.arange(2)
    case = Case(model, x, y, Protocol(), build_defenses([{"name": "quantize", "bits": 4}]), give_labels=True,
                model_spec=model.gradleak_spec)
    rec = attack(capture(case), labels=y, seed=seed, model=model, progress=False)
    return score_images(rec.images, x)["psnr"]["mean"]


def test_rog_defaults_beat_the_paper_setting_on_photo_like_images():
    """ROG under a 4-bit quantised upload: the defaults (300 iterations, TV 0.3, no enhancer at 32 px) against
    the pre-issue-27 ones (the paper's 100 iterations, TV 0; ``enhancer: auto`` then applied ``photos64``)."""
    from gradleak.attacks.rog import ROG

    new = [_rog_psnr(ROG(), s) for s in (0, 1)]
    old = [_rog_psnr(ROG(iterations=100, tv=0.0, enhancer="photos64"), s) for s in (0, 1)]
    margin = sum(new) / 2 - sum(old) / 2
    # measured when written: +2.76 and +3.40 dB on seeds 0 and 1 (seeds 2 and 3, not used here: +4.52, +4.05)
    assert margin >= 1.5, (new, old)
