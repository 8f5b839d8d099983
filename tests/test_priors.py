"""Generative priors: DCGAN shapes, checkpoints (save / load / exact resume), conditional generator,
StyleGAN2 loading from rosinality-layout checkpoints, import-path generators, shipped priors, CLI."""
import argparse
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from gradleak.errors import UserError
from gradleak.priors import (BUILTIN_PRIORS, DCGANDiscriminator, DCGANGenerator, Prior, StyleGAN2Generator,
                             TrainConfig, load_prior, match_shape, train_prior)
from gradleak.priors.checkpoint import read_pair, save_prior
from gradleak.priors.prior import builtin_path

TINY = dict(latent_dim=8, width=4, steps=2, batch_size=8, sample_every=0, checkpoint_every=0)


@pytest.mark.parametrize("res", [32, 64])
@pytest.mark.parametrize("ch", [1, 3])
def test_dcgan_shapes(res, ch):
    G = DCGANGenerator(latent_dim=16, width=4, channels=ch, resolution=res)
    D = DCGANDiscriminator(width=4, channels=ch, resolution=res)
    x = G(torch.randn(5, 16))
    assert x.shape == (5, ch, res, res) and x.abs().max() <= 1
    assert D(x).shape == (5,)
    assert G.latent_shape == (16,)


def test_dcgan_rejects_bad_resolution():
    with pytest.raises(UserError, match="32, 64"):
        DCGANGenerator(resolution=48)


def test_conditional_generator_uses_labels():
    torch.manual_seed(0)
    G = DCGANGenerator(latent_dim=8, width=4, channels=1, resolution=32, num_classes=10).eval()
    D = DCGANDiscriminator(width=4, channels=1, resolution=32, num_classes=10)
    z = torch.randn(3, 8)
    a, b = G(z, torch.tensor([0, 1, 2])), G(z, torch.tensor([3, 4, 5]))
    assert a.shape == (3, 1, 32, 32) and not torch.allclose(a, b)
    # soft labels (probabilities) are accepted and one-hot probabilities equal the indices
    torch.testing.assert_close(G(z, torch.eye(10)[[0, 1, 2]]), a)
    assert D(a, torch.tensor([0, 1, 2])).shape == (3,)
    with pytest.raises(ValueError, match="labels"):
        G(z)
    prior = Prior(G, (8,), num_classes=10)
    with pytest.raises(UserError, match="conditional"):
        prior.generate(z)


def test_prior_file_round_trip(tmp_path):
    G = DCGANGenerator(latent_dim=8, width=4, channels=3, resolution=32).eval()
    save_prior(tmp_path / "p", G, "dcgan", G.config(), {"dataset": "photos", "seed": 3})
    prior = load_prior(tmp_path / "p.safetensors")
    z = torch.randn(2, 8)
    torch.testing.assert_close(prior.generate(z), G(z))
    assert prior.meta["dataset"] == "photos" and prior.meta["seed"] == 3
    _, meta = read_pair(tmp_path / "p")
    assert meta["arch"] == "dcgan" and meta["kind"] == "prior"


def _train(tmp_path, name, steps, **kw):
    cfg = TrainConfig(data="digits", channels=1, **{**TINY, "steps": steps, **kw})
    return train_prior(cfg, tmp_path / name, progress=False)


def test_training_checkpoint_resume_is_exact(tmp_path):
    straight = _train(tmp_path, "a", 4)
    _train(tmp_path, "b", 2)
    resumed = _train(tmp_path, "b", 4)  # same --out: resumes from step 2
    ta, ma = read_pair(straight)
    tb, mb = read_pair(resumed)
    assert ma["steps"] == mb["steps"] == 4
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=0)
    ck = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert ck["step"] == 4 and ck["kind"] == "checkpoint"
    assert (tmp_path / "b" / "samples" / "step_000004.png").is_file()
    # the directory loads as a prior; a changed architecture refuses to resume
    assert load_prior(tmp_path / "b").latent_shape == (8,)
    with pytest.raises(UserError, match="different settings"):
        _train(tmp_path, "b", 6, width=8)


def test_conditional_training_and_loading(tmp_path):
    path = _train(tmp_path, "c", 2, conditional=True)
    prior = load_prior(path)
    assert prior.conditional and prior.num_classes == 10
    assert prior.generate(torch.randn(2, 8), torch.tensor([1, 7])).shape == (2, 1, 32, 32)


def test_match_shape_channels_and_resolution():
    x = torch.rand(2, 1, 32, 32)
    assert match_shape(x, (3, 16, 16)).shape == (2, 3, 16, 16)
    rgb = torch.rand(2, 3, 32, 32)
    grey = match_shape(rgb, (1, 32, 32))
    torch.testing.assert_close(grey[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])
    assert match_shape(rgb, (3, 64, 64)).shape == (2, 3, 64, 64)
    p = Prior(DCGANGenerator(8, 4, 3, 32), (8,))
    assert p.to_pixels(-torch.ones(1, 3, 32, 32), (3, 32, 32)).abs().max() == 0  # tanh range → [0, 1]


@pytest.mark.parametrize("name", sorted(BUILTIN_PRIORS))
def test_builtin_priors_ship_and_load(name):
    path = builtin_path(name)
    assert path.is_file() and path.stat().st_size <= 3 * 2 ** 20
    prior = load_prior(name)
    meta = prior.meta
    assert meta["dataset"] == name and "train-prior" in meta["command"] and "seed" in meta
    x = prior.to_pixels(prior.generate(torch.randn(2, *prior.latent_shape)), (3, 32, 32))
    assert x.shape == (2, 3, 32, 32) and 0 <= x.min() and x.max() <= 1


# --- StyleGAN2 (rosinality stylegan2-pytorch layout) -----------------------------------------------------

ROSINALITY_KEYS_16 = [  # g_ema keys of rosinality's Generator(size=16, style_dim, n_mlp=2)
    "style.1.weight", "style.1.bias", "style.2.weight", "style.2.bias", "input.input",
    "conv1.conv.weight", "conv1.conv.modulation.weight", "conv1.conv.modulation.bias", "conv1.noise.weight",
    "conv1.activate.bias", "to_rgb1.bias", "to_rgb1.conv.weight", "to_rgb1.conv.modulation.weight",
    "to_rgb1.conv.modulation.bias", "convs.0.conv.weight", "convs.0.conv.blur.kernel",
    "convs.0.conv.modulation.weight", "convs.0.conv.modulation.bias", "convs.0.noise.weight", "convs.0.activate.bias",
    "convs.1.conv.weight", "convs.1.conv.modulation.weight", "convs.1.conv.modulation.bias", "convs.1.noise.weight",
    "convs.1.activate.bias", "convs.2.conv.weight", "convs.2.conv.blur.kernel", "convs.3.conv.weight",
    "to_rgbs.0.bias", "to_rgbs.0.upsample.kernel", "to_rgbs.0.conv.weight", "to_rgbs.0.conv.modulation.weight",
    "to_rgbs.0.conv.modulation.bias", "to_rgbs.1.upsample.kernel",
    "noises.noise_0", "noises.noise_1", "noises.noise_2", "noises.noise_3", "noises.noise_4",
]


def _tiny_stylegan():
    torch.manual_seed(0)
    return StyleGAN2Generator(size=16, style_dim=8, n_mlp=2, channels={4: 8, 8: 6, 16: 4})


def test_stylegan2_key_layout_and_shapes():
    g = _tiny_stylegan()
    sd = g.state_dict()
    assert set(ROSINALITY_KEYS_16) <= set(sd)
    assert sd["conv1.conv.weight"].shape == (1, 8, 8, 3, 3)
    assert sd["to_rgb1.conv.weight"].shape == (1, 3, 8, 1, 1) and sd["to_rgb1.bias"].shape == (1, 3, 1, 1)
    assert sd["convs.0.conv.weight"].shape == (1, 6, 8, 3, 3) and sd["convs.0.conv.blur.kernel"].shape == (4, 4)
    assert sd["noises.noise_4"].shape == (1, 1, 16, 16) and g.n_latent == 6
    assert g(torch.randn(2, 8)).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_stylegan2_checkpoint_loads_in_w_plus(tmp_path, fmt):
    g = _tiny_stylegan().eval()
    avg = g.mean_latent(64)
    if fmt == "pt":  # rosinality's training checkpoints also carry argparse args
        path = tmp_path / "sg2.pt"
        torch.save({"g_ema": g.state_dict(), "latent_avg": avg, "args": argparse.Namespace(size=16)}, path)
    else:
        path = tmp_path / "sg2.safetensors"
        save_file({f"g_ema.{k}": v.contiguous() for k, v in g.state_dict().items()}, str(path))
    prior = load_prior(str(path))  # default space W+
    assert prior.latent_shape == (6, 8)
    w = prior.sample_latent(2, torch.Generator().manual_seed(0))
    assert w.shape == (2, 6, 8)
    with torch.no_grad():
        raw = prior.generate(w)
        torch.testing.assert_close(raw, g.synthesis(w))  # loaded weights = saved weights
    assert raw.shape == (2, 3, 16, 16)
    assert prior.to_pixels(raw, (3, 32, 32)).shape == (2, 3, 32, 32)  # resized to the victim
    # W space: one w broadcast to all layers equals W+ with identical rows
    pw = load_prior(str(path), space="w")
    w1 = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(pw.generate(w1), prior.generate(w1[:, None].expand(-1, 6, -1)))
    assert not any(n.startswith("g.style.") for n in prior.adapt_names())  # GI-w adapts synthesis only
    # equalised-lr layers: GI-w's relative step falls back to the absolute one (scale 1 for every tensor)
    from gradleak.attacks.generative import GeneratorWeights

    assert prior.equalized_lr and not load_prior("digits").equalized_lr
    gw = GeneratorWeights(prior, relative=True)
    gw.start(1, 1, (3, 32, 32), None, torch.Generator().manual_seed(0))
    assert all(float(s) == 1.0 for s in gw.scale.values())


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_loading_never_executes_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": _Evil()}, path)
    with pytest.raises(UserError, match="weights_only"):
        load_prior(str(path))


def test_stylegan2_bad_state_dict(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"g_ema": {"foo": torch.zeros(1)}}, path)
    with pytest.raises(UserError):
        load_prior(str(path))


# --- import-path generators ---------------------------------------------------------------------------------

class TinyGenerator(nn.Module):
    latent_dim = 4
    output_range = (0.0, 1.0)

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1 * 8 * 8)

    def forward(self, z):
        return torch.sigmoid(self.fc(z)).reshape(-1, 1, 8, 8)


def tiny_generator():
    return TinyGenerator()


def test_import_path_generator():
    prior = load_prior("tests.test_priors:tiny_generator")
    assert prior.latent_shape == (4,) and prior.output_range == (0.0, 1.0)
    x = prior.to_pixels(prior.generate(torch.randn(3, 4)), (3, 32, 32))
    assert x.shape == (3, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    with pytest.raises(UserError, match="import failed"):
        load_prior("tests.no_such_module:factory")
    with pytest.raises(UserError, match=r"^attack\.options\.prior: got 'tests\.test_priors:TinyGenerator\.forward'; "
                                        r"allowed: a factory callable without arguments \(calling it failed: TypeError"):
        load_prior("tests.test_priors:TinyGenerator.forward")  # needs arguments


# --- CLI ------------------------------------------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gradleak.cli", *args], capture_output=True, text=True)


def test_train_prior_cli_runs_and_resumes(tmp_path):
    out = tmp_path / "prior"
    base = ["train-prior", "--data", "digits", "--channels", "1", "--latent-dim", "8", "--width", "4",
            "--batch-size", "8", "--seed", "1", "--out", str(out), "--no-progress", "--threads", "1"]
    r = _cli(*base, "--steps", "2")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 2
    r = _cli(*base, "--steps", "3")
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "prior.json").read_text())
    assert meta["steps"] == 3 and meta["seed"] == 1 and "--seed 1" in meta["command"]
    assert (out / "samples" / "step_000003.png").is_file()
    r = _cli("train-prior", "--data", "nope", "--out", str(tmp_path / "x"), "--steps", "1", "--no-progress")
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_file_pair_round_trip_and_one_line_errors(tmp_path):
    from gradleak.filepair import read_pair, write_pair

    t = {"a": torch.arange(6.0).reshape(2, 3)}
    st, js = write_pair(tmp_path / "sub" / "enhancer.json", t, {"format": "gradleak-x", "kind": "enhancer"})
    assert st.name == "enhancer.safetensors" and js.name == "enhancer.json"
    assert sorted(p.name for p in st.parent.iterdir()) == ["enhancer.json", "enhancer.safetensors"]  # no temp files
    for path in (st, js, st.with_suffix(""), st.parent):  # either file, the stem, or the directory + kind
        tensors, meta = read_pair(path, "model.x", "gradleak-x", kind="enhancer")
        assert torch.equal(tensors["a"], t["a"]) and meta["kind"] == "enhancer"
    with pytest.raises(UserError, match=r"^model\.x: .* is not a gradleak tagger file"):
        read_pair(st, "model.x", "gradleak-x", kind="tagger")
    with pytest.raises(UserError, match=r"^model\.x: .* is not a gradleak y file"):
        read_pair(st, "model.x", "gradleak-y")
    js.write_text("{not json")
    with pytest.raises(UserError, match=r"^model\.x: .*enhancer\.json. is not valid JSON: .* line 1 column 2"):
        read_pair(st, "model.x", "gradleak-x")
    with pytest.raises(UserError, match=r"^model\.x: file not found"):
        read_pair(tmp_path / "missing", "model.x", "gradleak-x")
