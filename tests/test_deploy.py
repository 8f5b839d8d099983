"""gradleak capture / verify (/ attack) on an update produced by a plain PyTorch loop, at tiny size, and their
bad inputs (exit 2, one line, nothing written)."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

N, K, R = 4, 5, 8

USERNET = '''
import torch.nn as nn

def make(num_classes, in_channels, resolution, width=4):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Flatten(), nn.Linear(width * resolution * resolution, num_classes))

def broken(num_classes, in_channels, resolution, **options):
    raise RuntimeError("no such layer")

def wrong_size(num_classes, in_channels, resolution, **options):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * resolution * resolution, num_classes + 1))
'''

PROTOCOL = dict(model=dict(num_classes=K, channels=3, resolution=R, options=dict(width=4)), num_images=N,
                client=dict(protocol="fedavg", lr=0.05, local_batch_size=2, epochs=2, momentum=0.9,
                            weight_decay=5e-4, order="shuffled", seed=3))


@pytest.fixture
def deployment(tmp_path, monkeypatch):
    """A user's directory: their model module, their images (PNG files), weights before and after a local
    round of their own plain PyTorch loop, and PROTOCOL.yaml."""
    import sys

    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usernet", None)
    (tmp_path / "usernet.py").write_text(USERNET)
    import usernet

    torch.manual_seed(0)
    model = usernet.make(K, 3, R)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (N, 3, R, R), generator=g).float() / 255
    y = torch.tensor([0, 3, 1, 4])
    (tmp_path / "imgs").mkdir()
    for i in range(N):
        arr = (x[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp_path / "imgs" / f"img_{i}.png")
    torch.save(model.state_dict(), tmp_path / "before.pt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = DataLoader(TensorDataset(x, y), batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "after.safetensors"))
    flipped = {n: (p.detach() - before[n]).contiguous() for n, p in model.named_parameters()}
    save_file(flipped, str(tmp_path / "flipped.safetensors"))
    (tmp_path / "PROTOCOL.yaml").write_text(yaml.safe_dump(PROTOCOL))
    return tmp_path


def _capture(cli, d, *extra, out="obs"):
    return cli("capture", "--model", "usernet:make", "--weights", d / "before.pt", "--after", d / "after.safetensors",
               "--protocol", d / "PROTOCOL.yaml", "--out", d / out, *extra)


def test_capture_then_verify_reproduces_a_plain_torch_loop(cli, deployment):
    d = deployment
    r = _capture(cli, d)
    assert r.returncode == 0, r.stderr
    assert (d / "obs" / "observation.safetensors").is_file() and (d / "obs" / "observation.json").is_file()
    r = cli("verify", d / "obs", "--images", d / "imgs", "--labels", "0,3,1,4")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: the protocol reproduces this update" in r.stdout and "0.weight" in r.stdout
    # a wrong label order is a different client batch: a clear verdict, exit 1
    r = cli("verify", d / "obs", "--images", d / "imgs", "--labels", "3,0,1,4")
    assert r.returncode == 1 and "does NOT reproduce" in r.stdout


def test_verify_names_the_worst_layer_and_hints_the_sign(cli, deployment):
    import yaml

    d = deployment
    wrong = {**PROTOCOL, "client": {**PROTOCOL["client"], "momentum": 0.0}}
    (d / "WRONG.yaml").write_text(yaml.safe_dump(wrong))
    assert cli("capture", "--model", "usernet:make", "--weights", d / "before.pt", "--after", d / "after.safetensors",
               "--protocol", d / "WRONG.yaml", "--out", d / "obs_wrong").returncode == 0
    r = cli("verify", d / "obs_wrong", "--images", d / "imgs", "--labels", "0,3,1,4")
    assert r.returncode == 1
    verdict = [ln for ln in r.stdout.splitlines() if ln.startswith("verdict:")][0]
    assert "largest mismatch is in layer" in verdict and "check optimizer, loss, normalization, order" in verdict
    # an upload θ_τ − θ_0 stated as the default θ_0 − θ_τ: the verdict says so
    r = cli("capture", "--model", "usernet:make", "--weights", d / "before.pt", "--update", d / "flipped.safetensors",
            "--protocol", d / "PROTOCOL.yaml", "--labels", "0,3,1,4", "--out", d / "obs_flip")
    assert r.returncode == 0, r.stderr
    r = cli("verify", d / "obs_flip", "--images", d / "imgs")
    assert r.returncode == 1 and "client.update: new_minus_old" in r.stdout


@pytest.mark.parametrize("args, message", [
    (("--model", "usernet:broken"), "model: got 'usernet:broken'; allowed: a factory that builds (it raised RuntimeError: no such layer)"),
    (("--model", "usernet:wrong_size"), "model 'usernet:wrong_size': outputs (6,) per image, the data has 5 classes"),
    (("--model", "usernet:nothere"), "model: got 'usernet:nothere'"),
    (("--model", "usernet:make", "--after", "AFTER", "--update", "AFTER"), "both --after and --update"),
    (("--model", "usernet:make", "--weights", "WRONG"), "tensor '0.weight' has shape (8, 3, 3, 3), the model's has shape (4, 3, 3, 3)"),
    (("--model", "usernet:make", "--weights", "PICKLE"), "cannot read"),
    (("--model", "usernet:make", "--labels", "0,1"), "--labels: got 2 labels"),
    (("--model", "usernet:make", "--protocol", "BADYAML"), "key 'client.momentun': unknown key"),
    (("--model", "usernet:make", "--protocol", "BADPROTO"), "client.seed"),
])
def test_capture_bad_inputs_exit_2_one_line_nothing_written(cli, deployment, args, message):
    import yaml

    d = deployment
    wide = __import__("usernet").make(K, 3, R, width=8)
    torch.save(wide.state_dict(), d / "wrong.pt")
    torch.save({"f": print}, d / "pickle.pt")
    (d / "bad.yaml").write_text(yaml.safe_dump({**PROTOCOL, "client": {**PROTOCOL["client"], "momentun": 0.9}}))
    (d / "badproto.yaml").write_text(yaml.safe_dump({**PROTOCOL, "client": {**PROTOCOL["client"], "seed": None}}))
    subst = {"AFTER": d / "after.safetensors", "WRONG": d / "wrong.pt", "PICKLE": d / "pickle.pt",
             "BADYAML": d / "bad.yaml", "BADPROTO": d / "badproto.yaml"}
    args = [subst.get(a, a) for a in args]
    base = {"--weights": d / "before.pt", "--protocol": d / "PROTOCOL.yaml", "--out": d / "out"}
    if "--after" not in args:
        base["--after"] = d / "after.safetensors"
    for k in list(base):
        if k in args:
            del base[k]
    r = cli("capture", *args, *[v for kv in base.items() for v in kv])
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr
    assert not (d / "out").exists()


def test_verify_bad_inputs(cli, deployment):
    d = deployment
    assert _capture(cli, d).returncode == 0
    (d / "small").mkdir()
    Image.new("RGB", (4, 4)).save(d / "small" / "a.png")
    for args, message in [
        (("--images", d / "imgs"), "--labels: missing"),
        (("--images", d / "small", "--labels", "0"), "is 4x4; allowed: 8x8"),
        (("--images", d / "nowhere", "--labels", "0,1,2,3"), "--images: not found"),
        (("--images", d / "imgs", "--labels", "0,1,2,9"), "--labels: got 4 labels"),
    ]:
        r = cli("verify", d / "obs", *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, (args, r.stderr)
    r = cli("verify", d / "imgs", "--images", d / "imgs", "--labels", "0,1,2,3")
    assert r.returncode == 2 and "holds no observation.json" in r.stderr


def test_attack_a_captured_observation_with_and_without_truth(cli, deployment):
    import json

    d = deployment
    assert _capture(cli, d, "--labels", "0,3,1,4").returncode == 0
    r = cli("attack", d / "obs", "--attack", "invertgrad", "--set", "iterations=3", "--truth", d / "imgs",
            "--out", d / "run", "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads((d / "run" / "metrics.json").read_text())
    assert m["attack"] == "invertgrad" and m["label_mode"] == "oracle" and m["iterations"] == 3
    assert len(m["psnr"]["per_image"]) == N and "PSNR mean" in r.stdout
    assert (d / "run" / "report.html").is_file() and (d / "run" / "reconstruction.png").is_file()
    # no labels, no truth: labels recovered from the last layer, reconstructions and trace, not scored
    r = cli("capture", "--model", "usernet:make", "--weights", d / "before.pt", "--after", d / "after.safetensors",
            "--protocol", d / "PROTOCOL.yaml", "--out", d / "obs_nolabels")
    assert r.returncode == 0
    r = cli("attack", d / "obs_nolabels", "--attack", "invertgrad", "--set", "attack.options.iterations=2",
            "--out", d / "run2", "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads((d / "run2" / "metrics.json").read_text())
    assert m["scored"] is False and m["label_mode"] == "recover" and len(m["labels"]) == N
    assert "psnr" not in m and "verdict" not in m and "reference" not in m and "margins" not in m
    assert (d / "run2" / "trace.csv").is_file() and (d / "run2" / "report.html").is_file()


def test_attack_bad_inputs(cli, deployment):
    d = deployment
    assert _capture(cli, d).returncode == 0
    for args, message in [
        (("--attack", "nosuch"), "attack.name: got 'nosuch'"),
        (("--attack", "invertgrad", "--set", "iterationz=3"), "iterationz"),
        (("--attack", "invertgrad", "--set", "iterations"), "--set: got 'iterations'"),
        (("--attack", "invertgrad", "--truth", d / "nowhere"), "--truth: not found"),
    ]:
        r = cli("attack", d / "obs", *args, "--out", d / "run", "--no-progress")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, (args, r.stderr)
        assert not (d / "run").exists()


def _hand_back_truth(monkeypatch, d, perm=(2, 0, 3, 1)):
    """Make the attack return the client's true images (shuffled: the matching must undo it)."""
    from gradleak.attacks.base import Reconstruction
    from gradleak.deploy import load_images

    import gradleak.audit as pipeline  # the module (``gradleak.audit`` alone may name the function)

    x, _ = load_images(d / "imgs", (3, R, R))

    def fake(cfg, obs, atk, model, progress=False, device=None):  # the pipeline's attack step
        return Reconstruction(images=x[list(perm)].clone(), labels=None, attack="invertgrad", seconds=0.0), "oracle"

    monkeypatch.setattr(pipeline, "attack_observed", fake)
    return x


def test_attack_with_truth_scores_beside_the_grey_reference_and_gives_a_verdict(cli, deployment, monkeypatch):
    import json

    from gradleak.metrics.reference import reference_scores

    d = deployment
    assert _capture(cli, d, "--labels", "0,3,1,4").returncode == 0
    x = _hand_back_truth(monkeypatch, d)
    r = cli("attack", d / "obs", "--attack", "invertgrad", "--truth", d / "imgs", "--out", d / "run", "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads((d / "run" / "metrics.json").read_text())
    assert m["verdict"]["batch"] == "recognisable" and m["verdict"]["per_image"] == ["recognisable"] * N
    grey = reference_scores(x)["grey"]  # the matched originals are the truth in its own order
    assert m["reference"]["grey"]["psnr"] == pytest.approx(grey["psnr"], abs=1e-9)
    assert m["reference"]["grey"]["ssim"] == pytest.approx(grey["ssim"], abs=1e-9)
    assert m["margins"]["psnr"]["per_image"] == pytest.approx(
        [a - b for a, b in zip(m["psnr"]["per_image"], grey["psnr"])])
    assert set(m["reference"]) == {"grey", "unavailable"}
    assert set(m["reference"]["unavailable"]) == {"public_mean", "same_class"}
    assert all("no public data given" in why for why in m["reference"]["unavailable"].values())
    assert "public data: none given" in m["header"]["data"] and "batch of 4" in m["header"]["data"]
    assert "verdict: recognisable (4 recognisable)" in r.stdout and "no public data given" in r.stdout
    html = (d / "run" / "report.html").read_text()
    assert "recognisable" in html and "no public data given" in html


def test_attack_public_folder_adds_the_public_mean_and_same_class_references(cli, deployment, monkeypatch):
    import json

    from gradleak.deploy import load_public_data
    from gradleak.metrics import psnr

    d = deployment
    assert _capture(cli, d, "--labels", "0,3,1,4").returncode == 0
    x = _hand_back_truth(monkeypatch, d)
    g = torch.Generator().manual_seed(5)
    for k in range(K):  # class subfolders c0..c4 = labels 0..4, two images each
        (d / "public" / f"c{k}").mkdir(parents=True)
        for j in range(2):
            arr = torch.randint(0, 256, (R, R, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(arr).save(d / "public" / f"c{k}" / f"{j}.png")
    r = cli("attack", d / "obs", "--attack", "invertgrad", "--truth", d / "imgs", "--public", d / "public",
            "--seed", "7", "--out", d / "run", "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads((d / "run" / "metrics.json").read_text())
    ref = m["reference"]
    assert {"grey", "public_mean", "same_class"} <= set(ref) and ref["unavailable"] == {}
    pub, labels, _ = load_public_data(str(d / "public"), (3, R, R))
    mean = pub.mean(0, keepdim=True).expand_as(x)
    assert ref["public_mean"]["psnr"] == pytest.approx(psnr(mean, x).tolist(), abs=1e-9)
    idx = ref["same_class"]["public_index"]
    assert [int(labels[j]) for j in idx] == [0, 3, 1, 4]  # a public image of each original's true label
    assert ref["same_class"]["psnr"] == pytest.approx(psnr(pub[idx], x).tolist(), abs=1e-9)
    best = [max(ref[n]["psnr"][i] for n in ("grey", "public_mean", "same_class")) for i in range(N)]
    assert m["margins"]["psnr"]["per_image"] == pytest.approx([a - b for a, b in zip(m["psnr"]["per_image"], best)])
    assert m["verdict"]["batch"] == "recognisable" and "10 images, labelled, 5 classes" in m["header"]["data"]
    assert "(grey, public_mean, same_class)" in r.stdout
    # a built-in dataset split works too (digits has labels 0..9)
    r = cli("attack", d / "obs", "--attack", "invertgrad", "--truth", d / "imgs", "--public", "digits:public",
            "--out", d / "run_digits", "--no-progress")
    assert r.returncode == 0, r.stderr
    ref = json.loads((d / "run_digits" / "metrics.json").read_text())["reference"]
    assert ref["unavailable"] == {} and all(j is not None for j in ref["same_class"]["public_index"])


def test_attack_public_bad_inputs(cli, deployment):
    d = deployment
    assert _capture(cli, d).returncode == 0
    (d / "empty").mkdir()
    save_file({"images": torch.rand(3, 1, R, R)}, str(d / "gray.safetensors"))
    for args, message in [
        (("--public", "digits:public"), "--public: got 'digits:public' without --truth"),
        (("--truth", d / "imgs", "--public", "nowhere"), "--public: got 'nowhere'"),
        (("--truth", d / "imgs", "--public", "nope:public"), "data.name: got 'nope'"),
        (("--truth", d / "imgs", "--public", "digits:bogus"), "--public digits:bogus"),
        (("--truth", d / "imgs", "--public", d / "empty"), "holds no images"),
        (("--truth", d / "imgs", "--public", d / "gray.safetensors"), "--public: images of shape (3, 1, 8, 8)"),
    ]:
        r = cli("attack", d / "obs", "--attack", "invertgrad", *args, "--out", d / "run", "--no-progress")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, (args, r.stderr)
        assert not (d / "run").exists()
