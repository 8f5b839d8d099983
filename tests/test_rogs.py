"""ROGS (semantic reconstruction) and the semantic similarity metric: Jaccard (eq. 21), the tagger interface and
the built-in tagger, the latent inversion (eq. 19–20), the perceptual fallback, the BigGAN loader, reports."""
import json

import pytest
import torch
from torch import nn

import gradleak as gl
from gradleak.attacks.perceptual import PERCEPTUAL, build_perceptual, feature_distance
from gradleak.attacks.presets import build_attack
from gradleak.attacks.rogs import (BUILTIN_CONDITIONAL, ROGS, SemanticPath, builtin_conditional_path, invert,
                                   load_conditional)
from gradleak.errors import UserError
from gradleak.nets.attributes import attribute_tags, dominant_colour, fit_bins
from gradleak.metrics.semantic import (BUILTIN_TAGGERS, ModelTagger, builtin_tagger_path, jaccard, load_tagger,
                                       semantic_scores)
from gradleak.models import build_model, init_model
from gradleak.priors import DCGANGenerator, Prior, load_prior
from gradleak.priors.biggan import BigGAN, BigGANConfig, SNConv2d, SNLinear


# --- Jaccard (eq. 21) --------------------------------------------------------------------------------------

def test_jaccard_properties():
    assert jaccard({"a", "b"}, {"a", "b"}) == 1.0
    assert jaccard({"a"}, {"b"}) == 0.0
    assert jaccard(["a", "b", "c"], ["b", "c", "d"]) == pytest.approx(2 / 4)
    assert jaccard(["a", "a", "b"], ["a"]) == pytest.approx(1 / 2)        # sets: duplicates do not count
    assert jaccard([], []) == 1.0 and jaccard(["a"], []) == 0.0
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = {f"t{int(i)}" for i in torch.randint(0, 6, (3,), generator=g)}
        b = {f"t{int(i)}" for i in torch.randint(0, 6, (4,), generator=g)}
        j = jaccard(a, b)
        assert j == jaccard(b, a) and 0.0 <= j <= 1.0
        assert j == len(a & b) / len(a | b)
        assert jaccard(a, a | b) >= j                                      # adding the other's tags never lowers it


# --- tagger interface --------------------------------------------------------------------------------------

class _Fixed(nn.Module):
    """Outputs the same logits for every image."""

    tag_names = ["cat", "dog", "grass", "night"]

    def __init__(self, logits=(2.0, -1.0, 0.5, 0.1)):
        super().__init__()
        self.register_buffer("z", torch.tensor(logits))

    def forward(self, x):
        return self.z.expand(x.shape[0], -1)


def test_model_tagger_threshold_and_top_k():
    x = torch.rand(2, 3, 8, 8)
    t = ModelTagger(_Fixed(), _Fixed.tag_names)                      # sigmoid: .88, .27, .62, .52
    assert t(x) == [["cat", "grass", "night"]] * 2                       # ≥ 0.5, most probable first
    assert ModelTagger(_Fixed(), _Fixed.tag_names, threshold=0.6)(x)[0] == ["cat", "grass"]
    assert ModelTagger(_Fixed(), _Fixed.tag_names, top_k=2)(x)[0] == ["cat", "grass"]
    assert ModelTagger(_Fixed(), _Fixed.tag_names, threshold=0.0)(x)[0] == ["cat", "grass", "night", "dog"]
    assert ModelTagger(_Fixed(), _Fixed.tag_names, threshold=1.0)(x)[0] == []
    p = ModelTagger(_Fixed(), _Fixed.tag_names).probabilities(x)
    torch.testing.assert_close(p[0], torch.sigmoid(torch.tensor([2.0, -1.0, 0.5, 0.1])))
    for bad in (dict(threshold=1.5), dict(threshold=float("nan")), dict(top_k=0), dict(top_k=True)):
        with pytest.raises(UserError) as e:
            ModelTagger(_Fixed(), _Fixed.tag_names, **bad)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="one per tag name"):
        ModelTagger(_Fixed(), ["a", "b"])(x)


def test_semantic_scores_pairs_and_summary():
    class ByBrightness:
        name = "bright"

        def __call__(self, images):
            return [["bright" if float(v) > 0.5 else "dark", "thing"] for v in images.mean((1, 2, 3))]

    orig = torch.cat([torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)])
    rec = torch.cat([torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4)])
    s = semantic_scores(ByBrightness(), rec, orig)
    assert s["jaccard"]["per_image"] == [1.0, pytest.approx(1 / 3)]
    assert s["jaccard"]["mean"] == pytest.approx(2 / 3) and s["jaccard"]["best"] == 1.0
    assert s["tags"][1] == {"original": ["dark", "thing"], "reconstruction": ["bright", "thing"],
                            "jaccard": pytest.approx(1 / 3)}
    assert s["tagger"]["name"] == "bright"


def test_load_tagger_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_tagger_mod.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    tag_names = ['bright', 'dark']\n"
        "    input_channels = 1\n"
        "    def forward(self, x):\n"
        "        m = x.mean((1, 2, 3))\n"
        "        return torch.stack([m - 0.5, 0.5 - m], 1) * 20\n"
        "def factory():\n    return Net()\n"
        "def plain():\n    return lambda images: [['x']] * len(images)\n"
        "def broken():\n    raise RuntimeError('nope')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    t = load_tagger("my_tagger_mod:factory", top_k=1)
    assert t(torch.cat([torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)])) == [["bright"], ["dark"]]
    assert load_tagger("my_tagger_mod:plain")(torch.rand(2, 1, 4, 4)) == [["x"], ["x"]]
    for bad in ("my_tagger_mod:broken", "no_such_module_xyz:factory", "not-a-tagger"):
        with pytest.raises(UserError) as e:
            load_tagger(bad)
        assert "\n" not in str(e.value) and "metrics.tagger" in str(e.value)
    assert load_tagger("none") is None
    assert load_tagger("auto", shape=(3, 17, 17)) is None               # no built-in tagger for this shape


# --- attributes and the built-in tagger --------------------------------------------------------------------

def test_attributes_bins_and_colours():
    g = torch.Generator().manual_seed(0)
    grey = torch.rand(30, 1, 16, 16, generator=g) * torch.linspace(0.1, 1, 30).reshape(30, 1, 1, 1)
    cuts = fit_bins(grey)
    assert "brightness" in cuts and "colourfulness" not in cuts          # constant on grey images: dropped
    tags = attribute_tags(torch.cat([torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16)]), cuts, colours=False)
    assert "brightness:low" in tags[0] and "brightness:high" in tags[1]
    red, blue = torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    red[:, 0], blue[:, 2] = 0.9, 0.9
    assert dominant_colour(torch.cat([red, blue, torch.full((1, 3, 8, 8), 0.5)])) == ["red", "blue", "grey"]


@pytest.mark.parametrize("name", sorted(BUILTIN_TAGGERS))
def test_builtin_tagger_ships_and_tags_private_images(name):
    path = builtin_tagger_path(name)
    assert path.is_file() and path.stat().st_size <= 2 ** 20
    meta = json.loads(path.with_suffix(".json").read_text())
    assert "train-tagger" in meta["command"] and "seed" in meta and meta["split"] == "public"
    tagger = load_tagger(name)
    data = gl.load_dataset(meta["dataset"], split="private", resolution=meta["resolution"], channels=meta["channels"])
    x, y = data.images[:40], data.labels[:40]
    tags = tagger(x)
    acc = sum(f"class:{data.class_names[int(c)]}" in t for c, t in zip(y, tags)) / len(y)
    assert acc >= 0.8, acc                                                # its classes, on the victim's side
    assert all(len(t) <= len(meta["arch"]["groups"]) for t in tags)       # at most one tag per group at 0.5
    noise = torch.rand(8, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    j_noise = sum(jaccard(a, b) for a, b in zip(tagger(noise), tags[:8])) / 8
    j_self = sum(jaccard(a, b) for a, b in zip(tagger(x[:8]), tags[:8])) / 8
    assert j_self == 1.0 and j_noise < 0.5
    # auto: the dataset's tagger, with the images converted (grey digits drawn as RGB get the same tags)
    rgb = load_tagger("auto", shape=(3, 32, 32), dataset=meta["dataset"])
    assert rgb is not None and rgb(x[:8].repeat(1, 3, 1, 1)) == tags[:8]
    assert load_tagger("auto", shape=(3, 32, 32), dataset="photos") is None


def test_train_tagger_cli(tmp_path, cli):
    r = cli("train-tagger", "--data", "digits", "--resolution", "16", "--width", "4", "--steps", "3", "--seed", "1",
            "--out", tmp_path / "t", "--no-progress")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "t" / "tagger.json").read_text())
    assert meta["seed"] == 1 and "train-tagger" in meta["command"] and meta["held_out"]["images"] > 0
    assert meta["tag_names"][:10] == [f"class:{i}" for i in range(10)]
    t = load_tagger(tmp_path / "t", top_k=3)
    assert all(len(tags) <= 3 for tags in t(torch.rand(2, 1, 16, 16)))
    r = cli("train-tagger", "--data", "digits", "--holdout", "1.5", "--out", tmp_path / "u", "--no-progress")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "holdout" in r.stderr


# --- the inversion (eq. 19–20) -----------------------------------------------------------------------------

def _tiny_prior(K=3, seed=0):
    torch.manual_seed(seed)
    g = DCGANGenerator(latent_dim=8, width=4, channels=1, resolution=32, num_classes=K).eval()
    return Prior(g, (8,), num_classes=K, name="tiny")


def test_invert_reduces_objective_and_records_path():
    prior = _tiny_prior()
    y = torch.tensor([0, 2, 1])
    with torch.no_grad():
        target = prior.to_pixels(prior.generate(torch.randn(3, 8, generator=torch.Generator().manual_seed(9)), y),
                                 (1, 32, 32))
    conv = nn.Conv2d(1, 4, 3)
    perc = feature_distance(lambda x: [conv(x)])
    start = invert(prior, target, y, iterations=0, seed=1, perceptual=perc)
    inv = invert(prior, target, y, iterations=60, lr=0.05, seed=1, perceptual=perc)
    assert inv.images.shape == target.shape and inv.latents.shape == (3, 8)
    assert (inv.losses < start.losses).all(), (inv.losses, start.losses)
    assert inv.trace[-1]["loss"] < inv.trace[0]["loss"]
    steps = [it for it, _ in inv.path]
    assert steps[0] == 0 and steps[-1] == 60 and steps == sorted(steps) and len(steps) >= 4
    torch.testing.assert_close(inv.path[0][1], start.images)            # same seed → same random start
    torch.testing.assert_close(inv.path[-1][1], inv.images)
    # the loss is eq. (20): λ1 ‖G − X̂‖₂ + λ2 · perceptual
    with torch.no_grad():
        l2 = (inv.images - target).flatten(1).norm(dim=1)
        torch.testing.assert_close(inv.losses, l2 + perc(inv.images, target), atol=1e-4, rtol=1e-4)
    # the sphere constraint keeps every latent at its starting norm; unconstrained latents move off it
    z0 = prior.sample_latent(3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(inv.latents.norm(dim=1), z0.norm(dim=1))
    free = invert(prior, target, y, iterations=60, lr=0.05, seed=1, perceptual=perc, constraint="none")
    assert not torch.allclose(free.latents.norm(dim=1), z0.norm(dim=1)) and (free.losses < start.losses).all()
    with pytest.raises(UserError):
        invert(prior, target, y, iterations=1, constraint="ball")
    # restarts: all (restart, image) pairs in one batch, the best restart kept per image
    best = invert(prior, target, y, iterations=60, lr=0.05, seed=1, perceptual=perc, restarts=3)
    assert best.losses.shape == (3,) and best.images.shape == target.shape and torch.isfinite(best.losses).all()


def test_invert_bad_inputs_are_one_line():
    prior = _tiny_prior()
    x = torch.rand(2, 1, 32, 32)
    for kwargs in (dict(labels=torch.tensor([0, 5])), dict(labels=torch.tensor([0])),
                   dict(labels=torch.tensor([0, 1]), iterations=-1)):
        labels = kwargs.pop("labels")
        with pytest.raises(UserError) as e:
            invert(prior, x, labels, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError):
        invert(prior, torch.rand(1, 32, 32), torch.tensor([0]))


def test_perceptual_registry_and_auto_fallback():
    with pytest.raises(UserError):
        build_perceptual("bogus", (1, 32, 32))
    dist, rec = build_perceptual("auto", (1, 32, 32), lpips_dir="/nonexistent-lpips-dir")
    assert rec["name"] in ("lpips", "enhancer") and rec["requested"] == "auto"
    if rec["name"] != "lpips":
        assert "lpips" in rec["skipped"] and rec["skipped"]["lpips"]      # says why LPIPS was not used
    a = torch.rand(2, 1, 32, 32, requires_grad=True)
    b = torch.rand(2, 1, 32, 32)
    d = dist(a, b)
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert a.grad.abs().sum() > 0
    assert dist(b, b).abs().max() < 1e-6
    assert set(PERCEPTUAL) >= {"lpips", "enhancer", "tagger", "none"}
    _, rec = build_perceptual("tagger", (1, 32, 32))
    assert "inflated" in rec["description"]


def test_rogs_preset_end_to_end_and_option_errors():
    data = gl.load_dataset("digits", split="private", resolution=32, channels=1)
    x, y = gl.sample_batch(data, 2, distinct_labels=False, seed=0)
    m = init_model(build_model("lenet", 10, 1, 32), 0)
    case = gl.Case(m, x, y, gl.Protocol(kind="fedavg", local_steps=2, lr=5e-3),
                   gl.build_defenses([{"name": "quantize", "bits": 3}]), give_labels=True)
    obs = gl.capture(case)
    att = build_attack("rogs", iterations=3, rogs_iterations=4)
    assert isinstance(att, ROGS)
    rec = att(obs, labels=obs.labels, model=m, progress=False)
    assert rec.images.shape == x.shape and 0 <= rec.images.min() and rec.images.max() <= 1
    sem = rec.get(SemanticPath)
    assert sem.start.shape == x.shape and not torch.equal(sem.start, rec.images)
    assert [it for it, _ in sem.path][-1] == 4 and rec.iterations == 7 and len(sem.losses) == 2
    assert sem.perceptual["name"] in ("lpips", "enhancer")
    assert set(rec.describe()) >= {"semantic_losses", "generator", "perceptual", "intermediates"}
    for bad in (dict(perceptual="alexnet"), dict(rogs_iterations=-1), dict(generator="digits-typo")):
        with pytest.raises(UserError) as e:
            build_attack("rogs", **bad)
        assert "\n" not in str(e.value)
    # class_map: victim class k → generator class class_map[k]
    rec2 = build_attack("rogs", iterations=2, rogs_iterations=0, class_map=list(range(9, -1, -1)))(
        obs, labels=obs.labels, model=m, progress=False)
    start = load_conditional("digits", (1, 32, 32)).sample_latent(2, torch.Generator().manual_seed(0))
    prior = load_conditional("digits", (1, 32, 32))
    torch.testing.assert_close(rec2.images, prior.to_pixels(prior.generate(start, 9 - obs.labels), (1, 32, 32))
                               .clamp(0, 1))
    for bad in ([], [1, -2], ["a"]):
        with pytest.raises(UserError):
            build_attack("rogs", class_map=bad)
    with pytest.raises(UserError, match="class_map"):
        build_attack("rogs", iterations=1, rogs_iterations=0, class_map=[0])(obs, labels=torch.tensor([0, 5]),
                                                                            model=m, progress=False)
    with pytest.raises(UserError, match="class-conditional"):
        build_attack("rogs", generator="photos")                            # the unconditional GIAS prior


@pytest.mark.parametrize("name", sorted(BUILTIN_CONDITIONAL))
def test_builtin_conditional_prior_ships(name):
    path = builtin_conditional_path(name)
    assert path.is_file() and path.stat().st_size <= 3 * 2 ** 20
    meta = json.loads(path.with_suffix(".json").read_text())
    assert "--conditional" in meta["command"] and meta["split"] == "public" and "seed" in meta
    prior = load_conditional(name, (1, 32, 32))
    assert prior.conditional and prior.num_classes == 10
    out = prior.to_pixels(prior.generate(torch.randn(3, *prior.latent_shape), torch.tensor([0, 1, 2])), (1, 32, 32))
    assert out.shape == (3, 1, 32, 32)


# --- BigGAN (pytorch-pretrained-BigGAN layout) -------------------------------------------------------------

TINY = dict(output_dim=16, z_dim=8, class_embed_dim=8, channel_width=4, num_classes=5,
            layers=[[True, 16, 8], [False, 8, 4], [True, 4, 2], [False, 2, 1]], attention_layer_position=2, eps=1e-4,
            n_stats=5)


def _tiny_biggan(seed=0):
    torch.manual_seed(seed)
    net = BigGAN(BigGANConfig.from_dict(TINY)).eval()
    with torch.no_grad():  # non-trivial statistics, gains and attention so that every tensor matters
        for k, v in net.state_dict().items():
            if k.endswith("running_vars"):
                v.uniform_(0.5, 2)
            elif k.endswith("running_means") or k.endswith("gamma") or k.endswith(".bias") or k.endswith("bn.weight"):
                v.normal_(0, 0.3)
    return net


def test_biggan_key_names_follow_the_reference_layout():
    keys = set(_tiny_biggan().state_dict())
    expected = {"embeddings.weight", "generator.gen_z.weight_orig", "generator.gen_z.weight_u",
                "generator.gen_z.weight_v", "generator.gen_z.bias", "generator.layers.0.bn_0.running_means",
                "generator.layers.0.bn_0.running_vars", "generator.layers.0.bn_0.scale.weight_orig",
                "generator.layers.0.bn_3.offset.weight_u", "generator.layers.0.conv_1.weight_orig",
                "generator.layers.2.snconv1x1_theta.weight_orig", "generator.layers.2.snconv1x1_phi.weight_u",
                "generator.layers.2.snconv1x1_g.weight_v", "generator.layers.2.snconv1x1_o_conv.weight_orig",
                "generator.layers.2.gamma", "generator.layers.4.conv_3.bias", "generator.bn.weight",
                "generator.bn.bias", "generator.bn.running_means", "generator.conv_to_rgb.weight_orig"}
    assert expected <= keys, expected - keys
    assert not any(k.endswith("scale.bias") or k.endswith("snconv1x1_theta.bias") for k in keys)


def test_spectral_norm_matches_torch_in_eval_mode():
    torch.manual_seed(0)
    for ref, ours, x in ((nn.utils.spectral_norm(nn.Linear(6, 4)), SNLinear(6, 4), torch.randn(3, 6)),
                         (nn.utils.spectral_norm(nn.Conv2d(3, 5, 3, padding=1)), SNConv2d(3, 5, 3, 1),
                          torch.randn(2, 3, 6, 6))):
        ref.train()
        for _ in range(200):  # power iterations update u, v (converged: v from u is then the same vector)
            ref(x)
        ref.eval()
        ours.load_state_dict(ref.state_dict())
        torch.testing.assert_close(ours(x), ref(x))
        sd = {k: v for k, v in ref.state_dict().items() if k != "weight_v"}  # old checkpoints: v from u
        ours2 = type(ours)(*((6, 4) if isinstance(ours, SNLinear) else (3, 5, 3, 1)))
        ours2.load_state_dict(sd)
        torch.testing.assert_close(ours2(x), ref(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_biggan_checkpoint_round_trip(tmp_path, fmt):
    net = _tiny_biggan()
    d = tmp_path / "biggan-tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY))
    if fmt == "bin":
        torch.save(net.state_dict(), d / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "model.safetensors"))
    prior = load_prior(d)
    assert prior.conditional and prior.num_classes == 5 and prior.latent_shape == (8,)
    z = prior.sample_latent(3, torch.Generator().manual_seed(0))
    assert z.abs().max() <= 2 * 0.4 + 1e-6                               # truncated normal × truncation
    y = torch.tensor([0, 3, 4])
    out = prior.generate(z, y)
    assert out.shape == (3, 3, 16, 16) and out.abs().max() < 1
    with torch.no_grad():
        ref = net(z, torch.nn.functional.one_hot(y, 5).float(), 0.4)
    torch.testing.assert_close(out, ref)
    assert not torch.allclose(out[0], prior.generate(z[:1], torch.tensor([1]))[0])  # the class matters
    # ROGS inverts into it too
    inv = invert(prior, (out.detach()[:2] + 1) / 2, y[:2], iterations=3, seed=0)
    assert inv.images.shape == (2, 3, 16, 16)


def test_biggan_bad_files_are_one_line(tmp_path):
    from gradleak.priors.biggan import load_biggan

    d = tmp_path / "b"
    d.mkdir()
    torch.save(_tiny_biggan().state_dict(), d / "pytorch_model.bin")
    with pytest.raises(UserError, match="config.json"):
        load_biggan(d)
    (d / "config.json").write_text(json.dumps({**TINY, "channel_width": 8}))
    with pytest.raises(UserError) as e:
        load_biggan(d)
    assert "do not match" in str(e.value) and "\n" not in str(e.value)
    (d / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(UserError):
        load_biggan(d, truncation=1.5)


# --- reports ------------------------------------------------------------------------------------------------

def test_report_shows_tags_side_by_side(tmp_path):
    from gradleak.report import write_report

    m = {"attack": "rogs", "psnr": {"mean": 20.0, "best": 21.0, "per_image": [19.0, 21.0]},
         "jaccard": {"mean": 0.625, "best": 1.0, "per_image": [0.25, 1.0]}, "jaccard_unavailable": None,
         "tags": [{"original": ["class:3", "edges:<high>"], "reconstruction": ["class:3"], "jaccard": 0.25},
                  {"original": ["a"], "reconstruction": ["a"], "jaccard": 1.0}],
         "tagger": {"name": "digits", "threshold": 0.5, "top_k": None, "tags": 25},
         "perceptual": "enhancer features — instead of LPIPS: missing weights"}
    html = write_report(tmp_path, m, "").read_text()
    assert "Jaccard (tags)" in html and "0.625" in html
    assert "<td>class:3, edges:&lt;high&gt;</td><td>class:3</td>" in html and "0.250" in html
    assert "digits (threshold 0.5, 25 tags)" in html and "instead of LPIPS" in html
    html = write_report(tmp_path, {"jaccard": None, "jaccard_unavailable": "no tagger"}, "").read_text()
    assert "unavailable: no tagger" in html


def test_rogs_run_directory_end_to_end(tmp_path, cli):
    cfg = tmp_path / "rogs.yaml"
    cfg.write_text("seed: 1\n"
                   "data: {name: digits, split: private, resolution: 32, channels: 1, batch_size: 2}\n"
                   "model: {name: lenet}\n"
                   "client: {protocol: fedavg, local_steps: 2, lr: 0.005}\n"
                   "defense: [{name: quantize, bits: 3}]\n"
                   "attack: {name: rogs, labels: oracle, options: {iterations: 3, rogs_iterations: 5}}\n"
                   "metrics: {tagger_top_k: 4}\n")
    r = cli("run", cfg, "--out", tmp_path / "run", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "Jaccard (tags)" in r.stdout
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= m["jaccard"]["mean"] <= 1 and len(m["tags"]) == 2 and m["jaccard_unavailable"] is None
    assert all(len(t["reconstruction"]) <= 4 for t in m["tags"]) and m["tagger"]["top_k"] == 4
    assert m["generator"] and m["perceptual"]
    before = m["rog_before_inversion"]
    assert set(before) == {"psnr", "ssim", "jaccard"} and 0 <= before["jaccard"] <= 1
    assert (tmp_path / "run" / "rogs_path.png").is_file()
    # ROG's own post-processing steps (the shipped digits32 enhancer): each scored, drawn, listed
    assert m["intermediates"] == ["raw", "enhanced"] and m["enhancer"] == "digits32"
    assert set(m["intermediate_scores"]) == {"raw", "enhanced"}
    assert m["intermediate_scores"]["enhanced"]["psnr"] == pytest.approx(before["psnr"], abs=1e-4)  # ROG's output
    assert (tmp_path / "run" / "rog_steps.png").is_file()
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Semantic tags" in html and "ROGS optimisation path" in html and "ROG post-processing" in html
    assert "ROGS generator</th>" in html and "ROG enhancer</th><td>digits32</td>" in html
    r = cli("run", cfg, "--out", tmp_path / "bad", "--set", "metrics.tagger_threshold=2", "--no-progress")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = cli("run", cfg, "--out", tmp_path / "bad2", "--set", "attack.options.perceptual=alexnet", "--no-progress")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad2").exists()
    r = cli("run", cfg, "--out", tmp_path / "bad3", "--set", "metrics.tagger=no_such_tagger", "--no-progress")
    assert r.returncode == 2 and "metrics.tagger" in r.stderr and not (tmp_path / "bad3").exists()
