"""ROG: bicubic / autoencoder representations, the preset end to end, post-processing, the enhancement
network (U-Net, PatchGAN, degradations, training + file round trip) and the autoencoder."""
import json

import numpy as np
import pytest
import torch

import gradleak as gl
from gradleak.attacks.presets import ATTACKS, build_attack
from gradleak.attacks.rog import (ROG, PostSteps, AutoencoderLatent, Bicubic, equalize_hist, masked_l2_distance,
                                  normalize_maxabs, relative, rog_distance)
from gradleak.errors import UserError
from gradleak.models import build_model, init_model
from gradleak.nets.autoencoder import ConvAutoencoder, latent_layout, load_autoencoder
from gradleak.nets.enhancer import (BUILTIN_ENHANCERS, Enhancer, PatchDiscriminator, UNet, degrade, load_enhancer,
                                      read_pair, save_pair)


def _obs(defense=(), B=2, R=16, C=3, steps=2):
    x, y = gl.sample_batch(gl.load_dataset("photos", split="private", resolution=R, channels=C), B, seed=0,
                           distinct_labels=False)
    m = build_model("lenet", 12, C, R)
    init_model(m, 0)
    case = gl.Case(m, x, y, gl.Protocol(kind="fedavg", local_steps=steps, lr=5e-3),
                   gl.build_defenses(list(defense)), give_labels=True)
    return m, x, y, gl.capture(case)


# --- representations -------------------------------------------------------------------------------------

def test_bicubic_shapes_and_differentiable_decode():
    p = Bicubic(scale=4)
    g = torch.Generator().manual_seed(0)
    (z,) = p.start(3, 2, (3, 32, 32), None, g)
    assert z.shape == (3, 2, 3, 8, 8) and z.requires_grad
    x = p.images()
    assert x.shape == (3, 2, 3, 32, 32)
    x.pow(2).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # decoding is exactly F.interpolate(bicubic, align_corners=False)
    ref = torch.nn.functional.interpolate(z.detach().reshape(6, 3, 8, 8), size=(32, 32), mode="bicubic",
                                          align_corners=False)
    assert torch.allclose(p.images().detach().reshape(6, 3, 32, 32), ref)
    # non-divisible sizes: ceil(H/s) low-res, decoded back to H×W; the scale is configurable
    p2 = Bicubic(scale=3)
    (z2,) = p2.start(1, 1, (1, 20, 20), None, g)
    assert z2.shape[-2:] == (7, 7) and p2.images().shape[-2:] == (20, 20)
    # uniform init: the encoded U(0,1) image, same generator state → same start
    a = Bicubic().start(1, 1, (3, 16, 16), None, torch.Generator().manual_seed(5))[0]
    b = Bicubic().start(1, 1, (3, 16, 16), None, torch.Generator().manual_seed(5))[0]
    assert torch.equal(a, b)


def test_autoencoder_latent_parametrization_and_layout():
    ae = ConvAutoencoder(channels=3, resolution=16, latent_dim=32, downsample=4, width=4)
    assert ae.latent_shape == (2, 4, 4)
    p = AutoencoderLatent(ae)
    (z,) = p.start(2, 3, (3, 16, 16), None, torch.Generator().manual_seed(0))
    assert z.shape == (2, 3, 2, 4, 4)
    x = p.images()
    assert x.shape == (2, 3, 3, 16, 16) and 0 <= float(x.detach().min()) and float(x.detach().max()) <= 1
    x.sum().backward()
    assert z.grad.abs().sum() > 0 and all(q.grad is None for q in ae.parameters())
    with pytest.raises(UserError, match="latent_dim"):
        latent_layout(64, 100, 4)
    with pytest.raises(UserError, match="downsample"):
        latent_layout(64, 256, 3)
    with pytest.raises(UserError, match="autoencoder"):
        p.start(1, 1, (3, 32, 32), None, torch.Generator())


# --- objective --------------------------------------------------------------------------------------------

def test_distances_and_auto_choice():
    obs_t = [torch.tensor([1.0, 0.0, -2.0])]
    trial = [torch.tensor([[1.0, 5.0, -1.0], [0.0, 0.0, 0.0]])]
    assert torch.allclose(masked_l2_distance(trial, obs_t), torch.tensor([1.0, 5.0]))
    rel = relative(masked_l2_distance, obs_t)
    assert torch.allclose(rel(trial, obs_t), torch.tensor([1.0, 5.0]) / 5.0)
    assert rog_distance(_obs()[3]) == "l2"
    assert rog_distance(_obs([{"name": "sign"}])[3]) == "tanh_sign"
    assert rog_distance(_obs([{"name": "topk", "sparsity": 0.9}])[3]) == "masked_l2"
    assert rog_distance(_obs([{"name": "quantize", "bits": 3}])[3]) == "l2"
    hidden = _obs([{"name": "topk", "sparsity": 0.9, "attacker_knows": False}])[3]
    assert rog_distance(hidden) == "masked_l2"  # estimated from the upload


# --- the preset ----------------------------------------------------------------------------------------

def test_rog_preset_end_to_end(tmp_path):
    m, x, y, obs = _obs()
    assert "rog" in ATTACKS
    atk = build_attack("rog", iterations=3, restarts=2, enhancer="none")
    rec = atk(obs, labels=obs.labels, model=m, progress=False)
    assert rec.images.shape == x.shape and rec.all_images.shape == (2, *x.shape)
    assert rec.iterations == 3 and len(rec.trace) == 3 * 2 and rec.attack == "rog"
    steps = rec.get(PostSteps)
    assert rec.distance == "l2" and steps.enhancer is None and list(steps.steps) == ["raw"]
    assert torch.equal(steps.steps["raw"], rec.images)
    assert steps.describe() == {"intermediates": ["raw"]} and steps.draw(tmp_path, x, [0, 1]) == []
    losses = [r["loss"] for r in rec.trace if r["restart"] == rec.best_restart]
    assert all(np.isfinite(losses))
    # cosine schedule: the learning rate reaches 0 at the end → identical reruns
    rec2 = build_attack("rog", iterations=3, restarts=2, enhancer="none")(obs, labels=obs.labels, model=m,
                                                                        progress=False)
    assert torch.equal(rec.images, rec2.images)
    # with an enhancer: raw search output and enhanced images are both kept
    net = UNet(3, width=4)
    save_pair(tmp_path / "e" / "enhancer", net.state_dict(), {"kind": "enhancer", "arch": net.config(),
                                                               "resolution": 16})
    hook_calls = []
    rog = ROG(iterations=2, enhancer=str(tmp_path / "e"), post=lambda im, o, lab: hook_calls.append(1) or im * 0.5)
    rec3 = rog(obs, labels=obs.labels, model=m, progress=False)
    steps = rec3.get(PostSteps)
    assert steps.enhancer == str(tmp_path / "e") and list(steps.steps) == ["raw", "enhanced"] and hook_calls == [1]
    assert steps.describe() == {"intermediates": ["raw", "enhanced"], "enhancer": str(tmp_path / "e")}
    assert torch.allclose(rec3.images, steps.steps["enhanced"] * 0.5)
    assert torch.allclose(steps.steps["enhanced"], steps.steps["raw"], atol=1e-6)  # zero-initialised head: identity
    # pixels (no projection) and autoencoder representations run through the same preset
    assert build_attack("rog", iterations=2, representation="pixels", enhancer="none")(
        obs, labels=obs.labels, model=m, progress=False).images.shape == x.shape
    ae = ConvAutoencoder(3, 16, 32, 4, 4)
    save_pair(tmp_path / "ae" / "autoencoder", ae.state_dict(), {"kind": "autoencoder", "arch": ae.config()})
    rec4 = build_attack("rog", iterations=2, representation="autoencoder", autoencoder=str(tmp_path / "ae"),
                        enhancer="none")(obs, labels=obs.labels, model=m, progress=False)
    assert rec4.images.shape == x.shape


def test_rog_sign_postprocessing():
    m, x, y, obs = _obs([{"name": "sign"}])
    rec = ROG(iterations=2, enhancer="none")(obs, labels=obs.labels, model=m, progress=False)
    steps = rec.get(PostSteps).steps
    assert rec.distance == "tanh_sign" and "normalized" in steps
    assert torch.equal(rec.images, steps["normalized"].clamp(0, 1))
    assert not torch.equal(rec.images, steps["raw"])


def test_histogram_equalization_range_and_reference():
    from skimage.exposure import equalize_hist as sk_eq

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 12, 12, generator=g) * 3 + 1  # any range in
    e = equalize_hist(x)
    assert e.shape == x.shape and float(e.min()) >= 0 and float(e.max()) <= 1
    ref = sk_eq(x[0, 1].numpy().astype(np.float64), nbins=256)
    assert np.allclose(e[0, 1].numpy(), ref, atol=1e-5)
    assert torch.all(equalize_hist(torch.full((1, 1, 4, 4), 0.3)) == 0.5)  # constant image
    n = normalize_maxabs(x)
    assert float(n.min()) >= 0 and float(n.max()) <= 1 + 1e-6
    # equalisation only sees the order of the values: normalising first changes nothing
    assert torch.allclose(equalize_hist(n), e, atol=1e-4)


def test_bad_options_one_line_errors():
    for opts, key in (({"representation": "wavelet"}, "attack.options.representation"),
                      ({"iterations": 0}, "attack.options.iterations"),
                      ({"enhancer": "/no/such/enhancer"}, "attack.options.enhancer"),
                      ({"representation": "autoencoder"}, "attack.options.autoencoder"),
                      ({"distance": "cosinus"}, "attack.options.distance"),
                      ({"sign_postprocess": "x"}, "attack.options.sign_postprocess")):
        with pytest.raises(UserError) as err:
            build_attack("rog", **opts)
        assert key in str(err.value) and "\n" not in str(err.value)


# --- enhancement network ------------------------------------------------------------------------------

def test_unet_patchgan_shapes():
    net = UNet(3, width=4, depth=4)
    for side in (16, 32, 40, 64):
        x = torch.rand(2, 3, side, side)
        assert net(x).shape == x.shape
    # starts as the identity (zero-initialised output layer, residual)
    assert torch.allclose(net(x), x, atol=1e-6)
    cond = UNet(1, width=4, num_classes=10)
    out = cond(torch.rand(3, 1, 32, 32), torch.tensor([0, 5, 9]))
    assert out.shape == (3, 1, 32, 32)
    with pytest.raises(UserError, match="label-conditional"):
        cond(torch.rand(1, 1, 32, 32))
    D = PatchDiscriminator(3, width=4)
    logits = D(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64))
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1  # one logit per patch
    assert D(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)).shape[:2] == (1, 1)


def test_degradation_deterministic_with_seed():
    x = torch.rand(4, 3, 32, 32)
    a = degrade(x, torch.Generator().manual_seed(3))
    b = degrade(x, torch.Generator().manual_seed(3))
    c = degrade(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert float((a - x).abs().mean()) > 0.005  # it does degrade


def test_enhancer_file_round_trip_and_refusals(tmp_path):
    net = UNet(3, width=4, num_classes=12)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_pair(tmp_path / "enh", net.state_dict(), {"kind": "enhancer", "arch": net.config(), "resolution": 32})
    assert sorted(f.name for f in tmp_path.iterdir()) == ["enh.json", "enh.safetensors"]
    enh = load_enhancer(tmp_path / "enh.safetensors")
    x, lab = torch.rand(2, 3, 32, 32), torch.tensor([1, 7])
    with torch.no_grad():
        assert torch.allclose(enh(x, lab), net.eval()(x, lab).clamp(0, 1))
    # 1-channel enhancer on RGB images: per channel
    gray = Enhancer(UNet(1, width=4), {"arch": {}}, "g")
    assert gray(torch.rand(2, 3, 16, 16)).shape == (2, 3, 16, 16)
    # a file of the wrong kind, a missing file, a corrupt file: one-line UserErrors
    ae = ConvAutoencoder(3, 16, 32, 4, 4)
    save_pair(tmp_path / "ae", ae.state_dict(), {"kind": "autoencoder", "arch": ae.config()})
    with pytest.raises(UserError, match="not a gradleak enhancer"):
        load_enhancer(tmp_path / "ae")
    with pytest.raises(UserError, match="attack.options.enhancer"):
        load_enhancer(tmp_path / "missing", "attack.options.enhancer")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "gradleak-rog", "kind": "enhancer"}))
    with pytest.raises(UserError, match=r"bad\.safetensors. header length: declares .* bytes; allowed: at most"):
        read_pair(tmp_path / "bad", "enhancer", "enhancer")
    ae2 = load_autoencoder(tmp_path / "ae")
    assert all(torch.equal(a, b) for a, b in zip(ae.state_dict().values(), ae2.state_dict().values()))


def test_builtin_enhancers_load():
    from gradleak.nets.enhancer import auto_enhancer, builtin_enhancer_path

    for name in BUILTIN_ENHANCERS:
        path = builtin_enhancer_path(name)
        assert path.is_file() and path.stat().st_size <= 3 * 2 ** 20, name
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["command"].startswith("gradleak train-enhancer") and "seed" in meta
        enh = load_enhancer(name)
        assert enh(torch.rand(1, meta["channels"], 32, 32)).shape == (1, meta["channels"], 32, 32)
    assert auto_enhancer(3, 64) == "photos64" and auto_enhancer(1, 32) == "digits32"
    # other shapes: the nearest same-channel one, or the grey one per channel — unless exact (ROG's auto)
    assert auto_enhancer(3, 32) == "photos64" and auto_enhancer(3, 16) == "photos64"
    assert auto_enhancer(3, 32, exact=True) is None and auto_enhancer(3, 64, exact=True) == "photos64"
    assert auto_enhancer(1, 32, exact=True) == "digits32" and auto_enhancer(1, 64, exact=True) is None


def test_rog_auto_enhancer_only_at_its_training_shape():
    """ROG's ``enhancer: auto`` enhances only images of the shape a built-in enhancer was trained at (the 64 px
    photos64 lowered ROG's output on 32 px photographs, docs/defaults.md)."""
    from types import SimpleNamespace

    assert ROG().resolve_enhancer(SimpleNamespace(image_shape=(3, 32, 32))) is None
    assert ROG().resolve_enhancer(SimpleNamespace(image_shape=(3, 64, 64))).name == "photos64"
    assert ROG(enhancer="photos64").resolve_enhancer(SimpleNamespace(image_shape=(3, 32, 32))).name == "photos64"


def test_train_enhancer_and_autoencoder_cli(tmp_path, cli):
    r = cli("train-enhancer", "--data", "digits", "--channels", "1", "--resolution", "16", "--width", "2",
            "--disc-width", "2", "--steps", "2", "--batch-size", "2", "--out", str(tmp_path / "e"), "--no-progress",
            "--threads", "1")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "e" / "enhancer.json").read_text())
    assert meta["seed"] == 0 and "train-enhancer" in meta["command"] and (tmp_path / "e" / "samples.png").is_file()
    assert load_enhancer(tmp_path / "e").net.channels == 1
    r = cli("train-autoencoder", "--data", "digits", "--channels", "1", "--resolution", "16", "--latent-dim", "32",
            "--width", "2", "--steps", "2", "--batch-size", "2", "--out", str(tmp_path / "a"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert load_autoencoder(tmp_path / "a").latent_dim == 32
    r = cli("train-autoencoder", "--data", "digits", "--resolution", "16", "--latent-dim", "30",
            "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "latent_dim" in r.stderr
    r = cli("train-enhancer", "--data", "digits", "--resolution", "40", "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "train-enhancer.resolution" in r.stderr and not (tmp_path / "c").exists()


def test_rog_sign_postprocess_auto_equalises_only_the_tv_free_search(monkeypatch):
    """signSGD upload: ``sign_postprocess: auto`` histogram-equalises the paper's TV-free output (§4.3) but only
    max-abs normalises when a TV prior is on (equalising the smooth output lost ≈ 2 dB, docs/defaults.md)."""
    import gradleak.attacks.rog as rog_mod

    calls = []
    real = rog_mod.equalize_hist
    monkeypatch.setattr(rog_mod, "equalize_hist", lambda x, *a, **k: calls.append(1) or real(x, *a, **k))
    m = init_model(build_model("lenet", 10, 3, 16), 0)
    x, y = torch.rand(2, 3, 16, 16), torch.arange(2)
    obs = gl.capture(gl.Case(m, x, y, gl.Protocol(), gl.build_defenses([{"name": "sign"}]), give_labels=True,
                             model_spec=m.gradleak_spec))
    for tv, equalised in ((0.0, True), (0.3, False)):
        calls.clear()
        rec = ROG(iterations=2, tv=tv, enhancer="none")(obs, labels=y, model=m, progress=False)
        assert rec.distance == "tanh_sign" and list(rec.get(PostSteps).steps) == ["raw", "normalized"]
        assert bool(calls) == equalised, tv
