"""References (grey, public mean, random same-class image), margins over the best one, and the verdict."""
import json

import pytest
import torch

from gradleak.data import load_dataset
from gradleak.metrics import psnr, score_images, ssim
from gradleak.metrics.reference import (
    VerdictRule,
    calibrate,
    margins,
    reference_images,
    reference_scores,
    verdict,
)


@pytest.fixture(scope="module")
def digits():
    pub = load_dataset("digits", split="public", resolution=16, channels=1)
    priv = load_dataset("digits", split="private", resolution=16, channels=1, limit=6)
    return pub, priv


def _attack(recon, originals):
    s = score_images(recon, originals)
    return s, {"psnr": s["psnr"]["per_image"], "ssim": s["ssim"]["per_image"], "jaccard": None}


def test_perfect_is_recognisable_and_grey_is_none(digits):
    pub, priv = digits
    x, y = priv.images, priv.labels
    for recon, level in ((x.clone(), "recognisable"), (torch.full_like(x, 0.5), "none")):
        _, att = _attack(recon, x)
        out = calibrate(att, x, pub.images, pub.labels, y, seed=0)
        assert out["verdict"]["per_image"] == [level] * len(x) and out["verdict"]["batch"] == level
        json.dumps(out)
    # grey scores exactly the grey reference: zero margin over it, so never above the best reference
    _, att = _attack(torch.full_like(x, 0.5), x)
    m = calibrate(att, x, pub.images, pub.labels, y)["margins"]
    assert all(v <= 1e-9 for v in m["psnr"]["per_image"]) and all(v <= 1e-9 for v in m["ssim"]["per_image"])


def test_references_use_the_attacks_matched_originals(digits):
    pub, priv = digits
    x, y = priv.images, priv.labels
    g = torch.Generator().manual_seed(0)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    shuffle = torch.tensor([3, 0, 5, 1, 4, 2])
    s, att = _attack(noisy[shuffle], x)  # the attack returns its images in another order; matching undoes it
    assert torch.equal(shuffle[torch.tensor(s["order"])], torch.arange(6))
    refs = reference_scores(x, pub.images, pub.labels, y, seed=3)
    for i in range(6):  # reference i is scored against original i, the image the attack's per_image[i] is about
        assert refs["grey"]["psnr"][i] == pytest.approx(float(psnr(torch.full_like(x[i:i + 1], 0.5), x[i:i + 1])))
        j = refs["same_class"]["public_index"][i]
        assert int(pub.labels[j]) == int(y[i])  # a public image of the true label
        assert refs["same_class"]["ssim"][i] == pytest.approx(float(ssim(pub.images[j:j + 1], x[i:i + 1])))
        mean = pub.images.mean(0, keepdim=True)
        assert refs["public_mean"]["psnr"][i] == pytest.approx(float(psnr(mean, x[i:i + 1])), abs=1e-5)
    m = margins(att, refs)
    for i in range(6):
        best = max(refs[n]["psnr"][i] for n in ("grey", "public_mean", "same_class"))
        assert m["psnr"]["per_image"][i] == pytest.approx(att["psnr"][i] - best)
        assert refs[m["psnr"]["best_reference"][i]]["psnr"][i] == best
    # seeded: same seed, same pick; another seed, another pick
    again = reference_scores(x, pub.images, pub.labels, y, seed=3)
    assert again["same_class"]["public_index"] == refs["same_class"]["public_index"]
    other = reference_scores(x, pub.images, pub.labels, y, seed=4)
    assert other["same_class"]["public_index"] != refs["same_class"]["public_index"]


def test_missing_same_class_and_public(digits):
    pub, priv = digits
    x, y = priv.images, priv.labels
    keep = pub.labels != int(y[0])  # the public side lacks image 0's label
    refs = reference_scores(x, pub.images[keep], pub.labels[keep], y)
    assert refs["same_class"]["psnr"][0] is None and refs["same_class"]["public_index"][0] is None
    assert refs["same_class"]["psnr"][1] is not None and "same_class" in refs["unavailable"]
    m = margins({"psnr": [30.0] * 6, "ssim": [0.9] * 6, "jaccard": None}, refs)
    assert m["psnr"]["best_reference"][0] in ("grey", "public_mean") and m["jaccard"] is None
    only_grey = reference_scores(x)
    assert set(only_grey) == {"grey", "unavailable"} and set(only_grey["unavailable"]) == {"public_mean", "same_class"}
    with pytest.raises(ValueError, match="public images"):
        reference_images(x, torch.rand(3, 3, 16, 16))


def test_jaccard_margin_and_partial_level():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.4  # dark images
    tagger = lambda imgs: [["bright"] if float(im.mean()) > 0.3 else ["dark"] for im in imgs]  # noqa: E731
    refs = reference_scores(x, tagger=tagger)
    assert refs["grey"]["jaccard"] == [0.0, 0.0]  # grey (mean 0.5) is tagged "bright", the originals "dark"
    m = margins({"psnr": [refs["grey"]["psnr"][0] + 2.0, refs["grey"]["psnr"][1] - 1.0],
                 "ssim": [refs["grey"]["ssim"][0], refs["grey"]["ssim"][1]], "jaccard": [1.0, 0.0]}, refs)
    assert m["jaccard"]["per_image"] == [1.0, 0.0]
    v = verdict(m)
    assert v["per_image"] == ["partial", "none"] and v["batch"] == "partial"
    assert v["counts"] == {"none": 1, "partial": 1, "recognisable": 0}
    assert "3 dB" in v["rule"] and v["rule"].endswith(".") and ". " not in v["rule"]  # one sentence with its thresholds
    strict = VerdictRule(partial_psnr_db=5.0, partial_ssim=0.5)
    assert verdict(m, strict)["per_image"] == ["none", "none"]
