"""Tests for gradleak.metrics (image metrics vs scikit-image, LPIPS loading/net, matching, scoring)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import gradleak.metrics.lpips as lpips_module
import torch.nn.functional as F
from skimage import data as skdata
from skimage.metrics import mean_squared_error as sk_mse
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from gradleak.metrics import (
    ALEXNET_FILE,
    LIN_FILE,
    LPIPS,
    LPIPS_ENV_VAR,
    PSNR_CAP_DB,
    apply_match,
    load_lpips,
    lpips_distance,
    lpips_status,
    match,
    mse,
    psnr,
    score_images,
    ssim,
)


# ----------------------------------------------------------------------------- helpers
def _astronaut_batch(n: int, size: int, channels: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    img = skdata.astronaut().astype(np.float64) / 255.0  # 512 x 512 x 3
    out = []
    for _ in range(n):
        y, x = rng.integers(0, 512 - size, size=2)
        crop = img[y:y + size, x:x + size]
        if channels == 1:
            crop = crop.mean(axis=2, keepdims=True)
        out.append(torch.from_numpy(crop).permute(2, 0, 1))
    return torch.stack(out).float()


def _noisy(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def _sk_ssim_batch(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    res = []
    for x, y in zip(a, b):
        xn = x.permute(1, 2, 0).double().numpy()
        yn = y.permute(1, 2, 0).double().numpy()
        res.append(sk_ssim(xn, yn, data_range=1.0, channel_axis=-1))
    return np.array(res)


@pytest.fixture
def no_lpips_env(monkeypatch, tmp_path):
    """Isolate LPIPS search: no env var, an empty gradleak cache, an empty private torch hub dir."""
    monkeypatch.delenv(LPIPS_ENV_VAR, raising=False)
    monkeypatch.setenv("GRADLEAK_CACHE", str(tmp_path / "gradleak-cache"))
    import gradleak.metrics.lpips as lpips_mod  # an installed lpips package would supply alex.pth

    monkeypatch.setattr(lpips_mod, "_lpips_package_weights", lambda: None)
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    # the lpips package (installed beside breaching, say) would supply the heads: not part of these tests
    monkeypatch.setattr(lpips_module, "_lpips_package_weights", lambda: None)
    return hub


def _write_fake_weights(d, seed: int = 0) -> LPIPS:
    """Write random weights with the published key layouts; returns the net that produced them."""
    torch.manual_seed(seed)
    net = LPIPS(random_init_for_tests=True)
    with torch.no_grad():
        for lin in net.lins:  # LPIPS heads are non-negative in the published weights
            lin.model[1].weight.abs_()
    alex = {f"features.{k}": v.clone() for k, v in net.features.state_dict().items()}
    # torchvision's file also holds the classifier; it must be ignored
    alex["classifier.1.weight"] = torch.randn(4096, 9216 // 64)
    alex["classifier.1.bias"] = torch.randn(4096)
    lins = {f"lin{i}.model.1.weight": lin.model[1].weight.clone() for i, lin in enumerate(net.lins)}
    d.mkdir(parents=True, exist_ok=True)
    torch.save(alex, d / ALEXNET_FILE)
    torch.save(lins, d / LIN_FILE)
    return net


# ----------------------------------------------------------------------------- mse / psnr
def test_mse_psnr_match_skimage():
    a = _astronaut_batch(4, 32, 3, seed=1)
    b = _noisy(a, 0.05, seed=2)
    m, p = mse(a, b), psnr(a, b)
    assert m.shape == (4,) and p.shape == (4,)
    for i in range(4):
        x, y = a[i].double().numpy(), b[i].double().numpy()
        assert m[i].item() == pytest.approx(sk_mse(x, y), rel=1e-5)
        assert p[i].item() == pytest.approx(sk_psnr(x, y, data_range=1.0), abs=1e-4)


def test_psnr_identical_is_capped():
    a = torch.rand(3, 1, 16, 16)
    p = psnr(a, a.clone())
    assert torch.all(torch.isfinite(p))
    assert torch.allclose(p, torch.full((3,), PSNR_CAP_DB, dtype=p.dtype))
    assert torch.all(mse(a, a) == 0)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        mse(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 9))
    with pytest.raises(ValueError):
        ssim(torch.rand(2, 3, 8, 8), torch.rand(3, 8, 8))
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 1, 6, 6), torch.rand(1, 1, 6, 6))  # smaller than the 7x7 window


# ----------------------------------------------------------------------------- ssim
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.3])
def test_ssim_matches_skimage_astronaut(channels, sigma):
    a = _astronaut_batch(5, 48, channels, seed=channels)
    b = _noisy(a, sigma, seed=int(sigma * 100))
    ours = ssim(a, b).double().numpy()
    ref = _sk_ssim_batch(a, b)
    assert ours.shape == (5,)
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    np.testing.assert_allclose(ours, ref, atol=1e-6)  # float64 inside: essentially exact


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage_random_nonsquare(channels):
    g = torch.Generator().manual_seed(7)
    a = torch.rand(4, channels, 20, 33, generator=g)
    b = torch.rand(4, channels, 20, 33, generator=g)
    c = (0.7 * a + 0.3 * b)  # correlated pair
    for x, y in ((a, b), (a, c)):
        np.testing.assert_allclose(ssim(x, y).double().numpy(), _sk_ssim_batch(x, y), atol=1e-6)


def test_ssim_grayscale_equals_2d_skimage_and_identity():
    a = _astronaut_batch(2, 32, 1, seed=3)
    b = _noisy(a, 0.1, seed=4)
    ref = [sk_ssim(a[i, 0].double().numpy(), b[i, 0].double().numpy(), data_range=1.0) for i in range(2)]
    np.testing.assert_allclose(ssim(a, b).double().numpy(), ref, atol=1e-6)
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-6)


def test_ssim_is_differentiable():
    a = torch.rand(2, 3, 16, 16)
    b = torch.rand(2, 3, 16, 16, requires_grad=True)
    ssim(a, b).sum().backward()
    assert b.grad is not None and torch.isfinite(b.grad).all()


# ----------------------------------------------------------------------------- LPIPS
def _reference_lpips(net: LPIPS, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Independent functional re-statement of the LPIPS pipeline (3-channel, >= 64 px input)."""
    sd = net.features.state_dict()
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(x):
        x = ((2 * x - 1) - shift) / scale
        h1 = F.relu(F.conv2d(x, sd["0.weight"], sd["0.bias"], stride=4, padding=2))
        h2 = F.relu(F.conv2d(F.max_pool2d(h1, 3, 2), sd["3.weight"], sd["3.bias"], padding=2))
        h3 = F.relu(F.conv2d(F.max_pool2d(h2, 3, 2), sd["6.weight"], sd["6.bias"], padding=1))
        h4 = F.relu(F.conv2d(h3, sd["8.weight"], sd["8.bias"], padding=1))
        h5 = F.relu(F.conv2d(h4, sd["10.weight"], sd["10.bias"], padding=1))
        return [h1, h2, h3, h4, h5]

    total = 0
    for lin, fa, fb in zip(net.lins, taps(a), taps(b)):
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + (lin.model[1].weight[0, :, 0, 0].view(1, -1, 1, 1) * (na - nb) ** 2).sum(1).mean((1, 2))
    return total


def test_lpips_loads_from_dir_arg(no_lpips_env, tmp_path):
    src = _write_fake_weights(tmp_path / "w")
    model, reason = lpips_status(tmp_path / "w")
    assert reason is None and isinstance(model, LPIPS)
    assert model.weights_loaded and not model.random_init_for_tests
    assert model.source["alexnet"].endswith(ALEXNET_FILE) and model.source["lin"].endswith(LIN_FILE)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert isinstance(load_lpips(tmp_path / "w"), LPIPS)


def test_lpips_loads_from_env_var(no_lpips_env, tmp_path, monkeypatch):
    _write_fake_weights(tmp_path / "envdir")
    assert load_lpips() is None
    monkeypatch.setenv(LPIPS_ENV_VAR, str(tmp_path / "envdir"))
    model, reason = lpips_status()
    assert reason is None and isinstance(model, LPIPS)


def test_lpips_loads_from_hub_cache(no_lpips_env):
    _write_fake_weights(no_lpips_env / "checkpoints")
    assert isinstance(load_lpips(), LPIPS)


def test_lpips_explicit_paths(no_lpips_env, tmp_path):
    _write_fake_weights(tmp_path / "x")
    m = load_lpips(alexnet_path=tmp_path / "x" / ALEXNET_FILE, lin_path=tmp_path / "x" / LIN_FILE)
    assert isinstance(m, LPIPS)


def test_lpips_status_names_missing_files(no_lpips_env, tmp_path):
    model, reason = lpips_status(tmp_path / "empty")
    assert model is None and load_lpips(tmp_path / "empty") is None
    assert reason.startswith("LPIPS unavailable")
    assert ALEXNET_FILE in reason and LIN_FILE in reason
    assert str(no_lpips_env / "checkpoints") in reason and LPIPS_ENV_VAR in reason
    # only one missing -> only that one named as missing
    d = tmp_path / "half"
    _write_fake_weights(d)
    (d / LIN_FILE).unlink()
    _, reason = lpips_status(d)
    assert f"missing {LIN_FILE};" in reason and f"missing {ALEXNET_FILE}" not in reason


def test_lpips_bad_file_gives_reason(no_lpips_env, tmp_path):
    d = tmp_path / "bad"
    _write_fake_weights(d)
    torch.save({"lin0.model.1.weight": torch.zeros(1, 3, 1, 1)}, d / LIN_FILE)
    model, reason = lpips_status(d)
    assert model is None and LIN_FILE in reason
    (d / ALEXNET_FILE).write_bytes(b"not a checkpoint")
    model, reason = lpips_status(d)
    assert model is None and ALEXNET_FILE in reason and "cannot read" in reason


def test_lpips_distance_properties(no_lpips_env, tmp_path):
    _write_fake_weights(tmp_path / "w")
    model = load_lpips(tmp_path / "w")
    a = _astronaut_batch(3, 64, 3, seed=5)
    b = _noisy(a, 0.2, seed=6)
    d_same = lpips_distance(model, a, a.clone())
    d_diff = lpips_distance(model, a, b)
    assert d_same.shape == (3,) and torch.allclose(d_same, torch.zeros(3), atol=1e-6)
    assert torch.all(d_diff > 1e-6)
    # agrees with an independent functional implementation of the pipeline
    assert torch.allclose(d_diff, _reference_lpips(model, a, b), rtol=1e-4, atol=1e-6)
    # symmetric, more noise -> larger distance
    assert torch.allclose(lpips_distance(model, b, a), d_diff, rtol=1e-5)
    assert torch.all(lpips_distance(model, a, _noisy(a, 0.02, seed=6)) < d_diff)


def test_lpips_grayscale_and_small_images(no_lpips_env, tmp_path):
    _write_fake_weights(tmp_path / "w")
    model = load_lpips(tmp_path / "w", upsample=True)
    g = _astronaut_batch(2, 32, 1, seed=8)  # 32x32 grayscale -> repeated and upsampled to 64
    h = _noisy(g, 0.2, seed=9)
    d = lpips_distance(model, g, h)
    assert d.shape == (2,) and torch.all(d > 0)
    up = lambda x: F.interpolate(x.repeat(1, 3, 1, 1), size=(64, 64), mode="bilinear", align_corners=False)  # noqa: E731
    assert torch.allclose(d, lpips_distance(model, up(g), up(h)), rtol=1e-5)
    assert torch.allclose(lpips_distance(model, g, g), torch.zeros(2), atol=1e-6)


def test_lpips_reference_default_does_not_resize(no_lpips_env, tmp_path):
    _write_fake_weights(tmp_path / "w")
    ref = load_lpips(tmp_path / "w")  # default: the reference lpips package's behaviour
    assert ref.upsample is False and load_lpips(tmp_path / "w", upsample=True).upsample is True
    g = _astronaut_batch(2, 32, 3, seed=8)
    h = _noisy(g, 0.2, seed=9)
    d = lpips_distance(ref, g, h)  # 32x32 runs through AlexNet as it is (taps of 7x7 ... 1x1)
    assert torch.allclose(d, _reference_lpips(ref, g, h), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(d, lpips_distance(load_lpips(tmp_path / "w", upsample=True), g, h), rtol=1e-3)
    # 31 px is the smallest side AlexNet's taps accept; smaller images are refused, not silently resized
    lpips_distance(ref, g[..., :31, :31], h[..., :31, :31])
    with pytest.raises(ValueError, match="lpips_upsample"):
        lpips_distance(ref, g[..., :30, :30], h[..., :30, :30])
    with pytest.raises(RuntimeError):
        _reference_lpips(ref, g[..., :30, :30], h[..., :30, :30])  # the plain pipeline fails there too
    s = score_images(h, g, lpips_model=ref)
    assert s["lpips_upsample"] is False and s["lpips"]["per_image"] == pytest.approx(d.tolist(), rel=1e-5)
    small = score_images(h[..., :16, :16], g[..., :16, :16], lpips_model=ref)
    assert small["lpips"] is None and "lpips_upsample" in small["lpips_unavailable"]
    assert score_images(h, g)["lpips_upsample"] is None


def test_lpips_refuses_unloaded_weights():
    with pytest.raises(RuntimeError):
        lpips_distance(LPIPS(), torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    # the explicitly-marked test constructor is allowed (numbers mean nothing)
    test_net = LPIPS(random_init_for_tests=True)
    assert lpips_distance(test_net, torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)).shape == (1,)


def test_lpips_params_frozen_but_input_grad_flows():
    net = LPIPS(random_init_for_tests=True)
    assert not any(p.requires_grad for p in net.parameters())
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    lpips_distance(net, x, torch.rand(1, 3, 64, 64)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- matching
@pytest.mark.parametrize("by", ["mse", "psnr", "ssim"])
def test_match_recovers_shuffled_batch(by):
    orig = _astronaut_batch(8, 32, 3, seed=11)
    shuffle = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    recon = _noisy(orig[shuffle], 0.05, seed=12)
    perm = match(recon, orig, by=by)
    assert perm.dtype == torch.long and perm.shape == (8,)
    # recon[j] = orig[shuffle[j]] -> original i sits at j where shuffle[j] == i
    assert torch.equal(shuffle[perm], torch.arange(8))
    assert torch.equal(apply_match(recon, perm), recon[perm])
    assert torch.equal(apply_match(orig[shuffle], perm), orig)
    assert mse(apply_match(recon, perm), orig).max() < 0.01


def test_match_lpips_and_extra_recons(no_lpips_env, tmp_path):
    _write_fake_weights(tmp_path / "w")
    model = load_lpips(tmp_path / "w")
    orig = _astronaut_batch(4, 32, 3, seed=13)
    decoys = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    recon = torch.cat([decoys[:1], orig.flip(0), decoys[1:]])  # 6 recons for 4 originals
    perm = match(recon, orig, by="lpips", lpips_model=model)
    assert perm.tolist() == [4, 3, 2, 1]
    assert match(recon, orig).tolist() == [4, 3, 2, 1]
    with pytest.raises(ValueError):
        match(recon[:3], orig)
    with pytest.raises(ValueError):
        match(recon, orig, by="lpips")  # no model
    with pytest.raises(ValueError):
        match(recon, orig, by="l1")


def test_match_handles_nan_recon():
    orig = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    recon = orig[[2, 0, 1]].clone()
    recon[0] = float("nan")
    perm = match(recon, orig)
    assert sorted(perm.tolist()) == [0, 1, 2]
    assert perm[0].item() == 1 and perm[1].item() == 2


# ----------------------------------------------------------------------------- score
def test_score_images_without_lpips():
    orig = _astronaut_batch(5, 32, 3, seed=21)
    shuffle = torch.tensor([3, 0, 4, 1, 2])
    recon = _noisy(orig, 0.05, seed=22)[shuffle]
    recon[1] = orig[0]  # one perfect reconstruction
    res = score_images(recon, orig, lpips_reason="LPIPS unavailable: test")
    json.dumps(res)  # JSON-able
    assert set(res) == {"psnr", "ssim", "mse", "lpips", "lpips_unavailable", "lpips_upsample", "order"}
    assert res["order"] == [1, 3, 4, 0, 2]
    assert res["lpips"] is None and res["lpips_unavailable"] == "LPIPS unavailable: test"
    for key in ("psnr", "ssim", "mse"):
        s = res[key]
        assert isinstance(s["mean"], float) and isinstance(s["best"], float)
        assert len(s["per_image"]) == 5 and all(isinstance(v, float) for v in s["per_image"])
        assert s["mean"] == pytest.approx(sum(s["per_image"]) / 5)
    assert res["psnr"]["best"] == PSNR_CAP_DB and res["psnr"]["per_image"][0] == PSNR_CAP_DB
    assert res["ssim"]["best"] == pytest.approx(1.0) and res["mse"]["best"] == 0.0
    matched = apply_match(recon, torch.tensor(res["order"]))
    expected = _sk_ssim_batch(matched, orig)
    np.testing.assert_allclose(res["ssim"]["per_image"], expected, atol=1e-5)
    assert score_images(recon, orig)["lpips_unavailable"].startswith("LPIPS unavailable")


def test_score_images_with_lpips_and_clamping(no_lpips_env, tmp_path):
    _write_fake_weights(tmp_path / "w")
    model = load_lpips(tmp_path / "w")
    orig = _astronaut_batch(3, 32, 1, seed=31)
    recon = orig.flip(0) * 1.5 - 0.2  # out of range
    recon[0, 0, 0, 0] = float("nan")
    res = score_images(recon, orig, lpips_model=model)
    json.dumps(res)
    assert res["order"] == [2, 1, 0]
    assert res["lpips_unavailable"] is None
    lp = res["lpips"]
    assert lp["best"] == min(lp["per_image"]) and all(v > 0 for v in lp["per_image"])
    assert all(math.isfinite(v) for k in ("psnr", "ssim", "mse") for v in res[k]["per_image"])
    assert res["psnr"]["best"] == max(res["psnr"]["per_image"])
    assert res["mse"]["best"] == min(res["mse"]["per_image"])
