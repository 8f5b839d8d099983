"""Hostile and corrupt user files through the real commands (issue 25, items 1 and 2).

The two tracebacks found with files written outside the project (a task whose model spec lacks a field in
``giml``; a corrupt prior in ``gi-z``) are one line and exit 2 now. Absurd declared sizes — a safetensors
header length of gigabytes, a tensor of 20 GB, a batch of 10⁹ images, a model of 10⁹ classes, a prior of
width 10⁶, a 50 000 × 50 000 image — are refused before anything of that size is allocated (the process's
peak memory is checked), with the limit and its environment variable named; raising the variable lets the
same input past that check.
"""
from __future__ import annotations

import json
import resource
import struct
import zlib
from pathlib import Path

import pytest
import torch

from gradleak import limits
from gradleak.errors import UserError


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_line_exit2(r, *words):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    from gradleak.giml import TaskSetConfig, make_task_set

    root = tmp_path_factory.mktemp("tasks")
    make_task_set(TaskSetConfig(clients=2, rounds=1, batch=1, seed=0, resolution=8, model_options={"width": 2}),
                  root / "ok", progress=False)
    return root / "ok"


def test_giml_task_without_num_classes_is_one_line(cli, tasks, tmp_path):
    import shutil

    bad = tmp_path / "tasks"
    shutil.copytree(tasks, bad)
    for f in bad.glob("task_*.json"):
        meta = json.loads(f.read_text())
        del meta["model"]["num_classes"]
        f.write_text(json.dumps(meta))
    r = cli("giml", "--tasks", bad, "--out", tmp_path / "out", "--steps", "1", "--no-progress")
    one_line_exit2(r, "task_000000.json", "model.num_classes")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, words", [
    (b"\xff" * 8 + b"{}", ("header length", "GRADLEAK_MAX_HEADER_BYTES")),   # was SafetensorError: header too large
    (struct.pack("<Q", 40) + b'{"w": {"dtype": "F32", "shape": [2], "dat', ("corrupt safetensors header",)),
    (struct.pack("<Q", 400) + b'{"w": {}}', ("truncated",)),
    (b"", ("truncated",)),
])
def test_corrupt_prior_in_gi_z_is_one_line(cli, tmp_path, content, words):
    prior = tmp_path / "bad.safetensors"
    prior.write_bytes(content)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"attack: {{name: gi-z, options: {{iterations: 2, prior: {prior}}}}}\n")
    r = cli("run", cfg, "--out", tmp_path / "out", "--no-progress")
    one_line_exit2(r, "bad.safetensors", *words)
    assert not (tmp_path / "out").exists()


def _safetensors(path: Path, header: dict, data_bytes: int) -> None:
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
    try:
        os_truncate(path, 8 + len(raw) + data_bytes)  # sparse: no disk, no memory
    except OSError as err:
        pytest.skip(f"no sparse files here: {err}")


def os_truncate(path, size):
    import os

    os.truncate(path, size)


def test_header_claiming_gigabytes_and_option_to_raise(tmp_path, monkeypatch):
    from gradleak.safefile import read_safetensors

    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", 5 * 10**9) + b"{}")
    with pytest.raises(UserError, match="GRADLEAK_MAX_HEADER_BYTES") as info:
        read_safetensors(p, "observation")
    assert "h.safetensors" in str(info.value) and "16,777,216" in str(info.value)
    monkeypatch.setenv("GRADLEAK_MAX_HEADER_BYTES", "1e10")  # raised: the same file passes the limit ...
    with pytest.raises(UserError, match="truncated") as info:  # ... and is then found truncated
        read_safetensors(p, "observation")
    monkeypatch.setenv("GRADLEAK_MAX_HEADER_BYTES", "lots")
    with pytest.raises(UserError, match="GRADLEAK_MAX_HEADER_BYTES: got 'lots'"):
        read_safetensors(p, "observation")


def test_twenty_gigabyte_tensor_refused_before_allocation(tmp_path, monkeypatch):
    from gradleak.safefile import read_safetensors

    p = tmp_path / "big.safetensors"
    n = 5 * 10**9  # float32: 20 GB, in a sparse file
    _safetensors(p, {"update/w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}, 4 * n)
    before = peak_mb()
    with pytest.raises(UserError, match="GRADLEAK_MAX_FILE_BYTES") as info:
        read_safetensors(p, "observation")
    assert "update/w" in str(info.value) and "20,000,000,000" in str(info.value)
    assert peak_mb() - before < 200  # nothing of that size was reserved
    # a declared shape that does not match its byte range is corruption, named as such
    q = tmp_path / "liar.safetensors"
    _safetensors(q, {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 8]}}, 8)
    monkeypatch.setenv("GRADLEAK_MAX_FILE_BYTES", "1e13")
    with pytest.raises(UserError, match="needs 4,000,000,000,000 bytes but its data_offsets span 8"):
        read_safetensors(q, "observation")


def _observation(stem: Path, **meta_edits):
    from tests.test_fuzz_loaders import tiny_observation

    tiny_observation(stem)
    js = stem.with_suffix(".json")
    meta = json.loads(js.read_text())
    for k, v in meta_edits.items():
        if k == "model":
            meta["model"].update(v)
        else:
            meta[k] = v
    js.write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, words", [
    ({"num_images": 10**9}, ("num_images", "GRADLEAK_MAX_BATCH")),
    ({"image_shape": [3, 50_000, 50_000]}, ("image_shape", "GRADLEAK_MAX_IMAGE_PIXELS")),
    ({"num_images": 60_000, "image_shape": [3, 256, 256]}, ("GRADLEAK_MAX_BATCH_VALUES",)),
    ({"model": {"num_classes": 10**9}}, ("GRADLEAK_MAX_FILE_BYTES", "model 'mlp'")),
    ({"model": {"options": {"width": 10**6, "depth": 4}}}, ("GRADLEAK_MAX_FILE_BYTES",)),
])
def test_observation_declaring_huge_sizes(cli, tmp_path, edit, words):
    _observation(tmp_path / "obs" / "observation", **edit)
    before = peak_mb()
    r = cli("attack", tmp_path / "obs", "--attack", "invertgrad", "--out", tmp_path / "out", "--no-progress")
    one_line_exit2(r, *words)
    assert peak_mb() - before < 200
    assert not (tmp_path / "out").exists()


def test_prior_of_absurd_width(tmp_path):
    from gradleak.priors.checkpoint import save_prior
    from gradleak.priors.dcgan import DCGANGenerator
    from gradleak.priors.prior import load_prior

    cfg = {"latent_dim": 2, "width": 1, "channels": 1, "resolution": 32}
    save_prior(tmp_path / "prior", DCGANGenerator(**cfg), "dcgan", cfg)
    meta = json.loads((tmp_path / "prior.json").read_text())
    meta["config"]["width"] = 10**6
    (tmp_path / "prior.json").write_text(json.dumps(meta))
    before = peak_mb()
    with pytest.raises(UserError, match="GRADLEAK_MAX_FILE_BYTES"):
        load_prior(str(tmp_path / "prior.safetensors"))
    assert peak_mb() - before < 200


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares ``width`` x ``height`` (RGB) with one tiny, wrong IDAT chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [50_000, 10_000])  # 10 000²: over Pillow's limit, where Pillow only warns
def test_huge_image_refused_before_decoding(tmp_path, monkeypatch, side):
    from gradleak.data.folder import read_image  # what the folder dataset reads each image with

    png_header(tmp_path / "imgs" / "cat" / "a.png", side, side)
    before = peak_mb()
    with pytest.raises(UserError, match="GRADLEAK_MAX_IMAGE_PIXELS") as info:
        read_image(tmp_path / "imgs" / "cat" / "a.png", 8, 3)
    assert "a.png" in str(info.value) and f"{side * side:,}" in str(info.value)
    assert peak_mb() - before < 200
    if side == 10_000:  # raised limit: past the size check, the (bogus) pixel data is then one line too
        monkeypatch.setenv("GRADLEAK_MAX_IMAGE_PIXELS", "2e8")
        with pytest.raises(UserError) as info:
            read_image(tmp_path / "imgs" / "cat" / "a.png", 8, 3)
        assert "GRADLEAK_MAX_IMAGE_PIXELS" not in str(info.value) and "a.png" in str(info.value)


def test_verify_images_huge(cli, tmp_path):
    """``--images`` / ``--truth`` directories go through the same check."""
    from gradleak.deploy import load_images

    png_header(tmp_path / "imgs" / "a.png", 50_000, 50_000)
    with pytest.raises(UserError, match="GRADLEAK_MAX_IMAGE_PIXELS"):
        load_images(tmp_path / "imgs", (3, 8, 8), "--images")


def test_capture_protocol_batch_of_a_billion(cli, tmp_path):
    (tmp_path / "p.yaml").write_text("model: {name: mlp, num_classes: 2, channels: 1, resolution: 4}\n"
                                     "num_images: 1000000000\nclient: {protocol: fedsgd}\n")
    torch.save({"x": torch.zeros(1)}, tmp_path / "u.pt")
    r = cli("capture", "--protocol", tmp_path / "p.yaml", "--update", tmp_path / "u.pt", "--out", tmp_path / "out")
    one_line_exit2(r, "num_images", "GRADLEAK_MAX_BATCH")
    (tmp_path / "q.yaml").write_text("model: {name: mlp, num_classes: 1000000000, channels: 1, resolution: 4}\n"
                                     "num_images: 1\nclient: {protocol: fedsgd}\n")
    before = peak_mb()
    r = cli("capture", "--protocol", tmp_path / "q.yaml", "--update", tmp_path / "u.pt", "--out", tmp_path / "out")
    one_line_exit2(r, "GRADLEAK_MAX_FILE_BYTES")
    assert peak_mb() - before < 200
    assert not (tmp_path / "out").exists()


def test_limits_are_named_and_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "hardening.md").read_text()
    for lim in limits.ALL:
        assert lim.env in text, lim.env
