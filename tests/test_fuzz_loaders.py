"""Fuzzing every loader of a user file (issue 25, item 1): a damaged file loads or is one line, never a traceback.

For each format (observation, prior, enhancer, tagger, training checkpoint, GIML task index, Flower capture
index, folder-dataset manifest and image, protocol / run / sweep YAML) a small valid file is written, then
truncated at *every* byte offset and hit with random byte flips; after each damage the format's loader must
either succeed (some damage is harmless: a flipped bit inside a weight, a cut trailing newline) or raise a
one-line :class:`~gradleak.errors.UserError` that names the file. Any other exception fails the test. Wrong
dtypes and wrong JSON types are separate cases with the field named. Everything is tiny and in-process
(seconds).
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from gradleak.errors import UserError

FLIPS = 60  # random byte flips per file (each a full load: the bound keeps the test at seconds)


def _check(loader: Callable[[], object], path: Path, what: str, named=()) -> str:
    """Run the loader on the damaged file: success or a one-line UserError naming the file (or, for a run
    config, one of the ``named`` prefixes: its errors name the config key, as every config error does)."""
    try:
        loader()
    except UserError as err:
        msg = str(err)
        assert "\n" not in msg, (what, msg)
        assert (path.stem in msg or path.name in msg or path.parent.name in msg
                or msg.startswith(tuple(named))), (what, msg)
        return "refused"
    except Exception as err:  # noqa: BLE001 - the point of the test
        raise AssertionError(f"{what}: {type(err).__name__}: {err}") from err
    return "loaded"


def cuts(good: bytes, name: str, data_cuts: int = 48) -> list[int]:
    """Every byte offset of a text file and of a safetensors file's length field and header; in the tensor
    data that follows (where every cut is the same fault: fewer data bytes than declared) ``data_cuts``
    offsets spread over it, its first and last byte included."""
    if not name.endswith(".safetensors") or len(good) < 8:
        return list(range(len(good)))
    end = min(len(good), 8 + int.from_bytes(good[:8], "little"))
    step = max(1, (len(good) - end) // data_cuts)
    return list(range(end)) + sorted(set(range(end, len(good), step)) | {len(good) - 1})


def fuzz(loader: Callable[[], object], files: list[Path], flips: int = FLIPS, seed: int = 0,
         named=()) -> dict[str, int]:
    """Truncate each file at every offset of :func:`cuts` and flip ``flips`` random bytes, one damage at a time."""
    rng = random.Random(seed)
    seen = {"loaded": 0, "refused": 0}
    for f in files:
        good = f.read_bytes()
        try:
            for cut in sorted(cuts(good, f.name), reverse=True):  # in place: one truncate per case
                os.truncate(f, cut)
                seen[_check(loader, f, f"{f.name} truncated at {cut}/{len(good)}", named)] += 1
            f.write_bytes(good)
            fd = os.open(f, os.O_WRONLY)
            try:
                for _ in range(flips):
                    i = rng.randrange(len(good))
                    os.pwrite(fd, bytes([good[i] ^ rng.randrange(1, 256)]), i)
                    seen[_check(loader, f, f"{f.name} byte {i} flipped", named)] += 1
                    os.pwrite(fd, good[i:i + 1], i)
            finally:
                os.close(fd)
        finally:
            f.write_bytes(good)
        loader()  # the restored file loads again
    assert seen["refused"] > 0
    return seen


# --- tiny valid files ------------------------------------------------------------------------------------

def tiny_observation(stem: Path, labels: bool = True):
    from gradleak.fl.observation import Observation
    from gradleak.fl.protocol import Protocol
    from gradleak.models import build_model

    model = build_model("mlp", 2, 1, 4, width=3, depth=1)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    obs = Observation(model_spec={"name": "mlp", "num_classes": 2, "in_channels": 1, "resolution": 4,
                                  "options": {"width": 3, "depth": 1}},
                      parameters=params, buffers={}, update={n: torch.randn_like(p) for n, p in params.items()},
                      protocol=Protocol(), num_images=1, image_shape=(1, 4, 4),
                      labels=torch.tensor([1]) if labels else None)
    obs.save(stem)
    return obs


def test_observation_fuzz(tmp_path):
    from gradleak.fl.observation import Observation

    tiny_observation(tmp_path / "obs")
    st, js = tmp_path / "obs.safetensors", tmp_path / "obs.json"
    assert st.stat().st_size < 2000 and js.stat().st_size < 1500
    seen = fuzz(lambda: Observation.load(tmp_path / "obs"), [js, st])
    assert seen["loaded"] > 0  # flips inside weights load: the fuzzing reaches past the header checks


def test_prior_fuzz(tmp_path):
    from gradleak.priors.checkpoint import save_prior
    from gradleak.priors.dcgan import DCGANGenerator
    from gradleak.priors.prior import load_prior

    cfg = {"latent_dim": 2, "width": 1, "channels": 1, "resolution": 32}
    save_prior(tmp_path / "prior", DCGANGenerator(**cfg), "dcgan", cfg)
    fuzz(lambda: load_prior(str(tmp_path / "prior.safetensors")),
         [tmp_path / "prior.json", tmp_path / "prior.safetensors"])


def test_lone_safetensors_prior_fuzz(tmp_path):
    """The StyleGAN2 path of load_prior (a .safetensors without JSON): was ``SafetensorError: header too large``."""
    from safetensors.torch import save_file

    from gradleak.priors.prior import load_prior

    save_file({"g_ema.style.1.weight": torch.zeros(2, 2)}, str(tmp_path / "sg.safetensors"))

    def load():
        try:
            load_prior(str(tmp_path / "sg.safetensors"))
        except UserError as err:
            if "rosinality's layout" not in str(err):  # the intact file is read, and refused as not a StyleGAN2
                raise

    fuzz(load, [tmp_path / "sg.safetensors"])


def test_enhancer_and_tagger_fuzz(tmp_path):
    from gradleak.nets.enhancer import UNet, load_enhancer, save_pair
    from gradleak.nets.tagger import FORMAT as TAGGER, TaggerNet, read_tagger

    arch = {"channels": 1, "width": 1, "depth": 1, "max_mult": 1}
    save_pair(tmp_path / "enh" / "enhancer", UNet(**arch).state_dict(), {"kind": "enhancer", "arch": arch})
    fuzz(lambda: load_enhancer(tmp_path / "enh"),
         [tmp_path / "enh" / "enhancer.json", tmp_path / "enh" / "enhancer.safetensors"], flips=30)
    arch = {"channels": 1, "num_tags": 2, "width": 1}
    save_pair(tmp_path / "tag" / "tagger", TaggerNet(**arch).state_dict(),
              {"format": TAGGER, "kind": "tagger", "arch": arch, "tag_names": ["a", "b"], "channels": 1,
               "resolution": 8})
    fuzz(lambda: read_tagger(tmp_path / "tag"),
         [tmp_path / "tag" / "tagger.json", tmp_path / "tag" / "tagger.safetensors"], flips=30)


def test_checkpoint_fuzz(tmp_path):
    from gradleak.trainstate import TrainState

    def state(out):
        net = nn.Linear(2, 1)
        opt = torch.optim.Adam(net.parameters())
        sched = torch.optim.lr_scheduler.StepLR(opt, 2)
        return TrainState(out, "train-tagger", {"lr": 1.0}, {"net": net}, {"opt": opt}, {"s": sched},
                          {"g": torch.Generator().manual_seed(0)})

    s = state(tmp_path)
    s.modules["net"](torch.ones(1, 2)).sum().backward()
    s.optimizers["opt"].step()
    s.save(1, [0.5])
    fuzz(lambda: state(tmp_path).resume(), [tmp_path / "checkpoint.json", tmp_path / "checkpoint.safetensors"])


def test_task_and_capture_index_fuzz(tmp_path):
    from gradleak.giml import TaskSetConfig, make_task_set
    from gradleak.giml.tasks import TaskSet
    from gradleak.integrations.flower import load_index

    make_task_set(TaskSetConfig(clients=2, rounds=1, batch=1, seed=0, resolution=8,
                                model_options={"width": 2}), tmp_path / "tasks", progress=False)
    fuzz(lambda: TaskSet.load(tmp_path / "tasks"), [tmp_path / "tasks" / "tasks.json"], flips=20)
    (tmp_path / "cap").mkdir()
    (tmp_path / "cap" / "index.json").write_text(json.dumps(
        {"format": "gradleak-flower-capture", "model": {"name": "mlp"},
         "captures": [{"path": "round_1/node_3", "round": 1, "node_id": 3}]}))
    fuzz(lambda: load_index(tmp_path / "cap"), [tmp_path / "cap" / "index.json"])


def test_folder_dataset_fuzz(tmp_path):
    from PIL import Image

    from gradleak.data.folder import load_folder

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(2):
        Image.new("L", (4, 4), color=60 * i).save(root / f"{i}.png")
    (root / "labels.csv").write_text("filename,label\n0.png,cat\n1.png,dog\n")
    fuzz(lambda: load_folder("private", resolution=4, channels=1, root=str(root)),
         [root / "labels.csv", root / "0.png"], flips=20)


def test_yaml_files_fuzz(tmp_path):
    from gradleak.config import load_config
    from gradleak.deploy import read_protocol_file
    from gradleak.experiments.sweep import load_sweep

    (tmp_path / "run.yaml").write_text("seed: 1\ndata: {name: digits, batch_size: 2}\n"
                                       "attack: {name: invertgrad, options: {iterations: 2}}\n")
    fuzz(lambda: load_config(tmp_path / "run.yaml"), [tmp_path / "run.yaml"], flips=20, named=("config ",))
    (tmp_path / "protocol.yaml").write_text("model: {name: mlp, num_classes: 2, channels: 1, resolution: 4}\n"
                                            "num_images: 2\nclient: {protocol: fedsgd}\n")
    fuzz(lambda: read_protocol_file(tmp_path / "protocol.yaml"), [tmp_path / "protocol.yaml"], flips=20)
    (tmp_path / "sweep.yaml").write_text("base: {attack: {options: {iterations: 2}}}\n"
                                         "axes: {data.batch_size: [1, 2]}\nbatches: 1\n")
    fuzz(lambda: load_sweep(tmp_path / "sweep.yaml"), [tmp_path / "sweep.yaml"], flips=20)


# --- wrong types and dtypes: the field is named ------------------------------------------------------------

@pytest.mark.parametrize("edit, field", [
    (lambda m: m["model"].pop("num_classes"), "model.num_classes"),     # was KeyError in giml's build_model
    (lambda m: m["model"].update(num_classes="2"), "model.num_classes"),
    (lambda m: m["model"].update(resolution=4.5), "model.resolution"),
    (lambda m: m.update(num_images=True), "num_images"),
    (lambda m: m.update(image_shape=[1, 4]), "image_shape"),
    (lambda m: m.update(image_shape="1,4,4"), "image_shape"),
    (lambda m: m.update(protocol=[]), "protocol"),
    (lambda m: m.update(defenses={}), "defenses"),
    (lambda m: m.update(has_labels="yes"), "has_labels"),
    (lambda m: m.update(model=None), "model"),
])
def test_observation_wrong_json_types(tmp_path, edit, field):
    from gradleak.fl.observation import Observation

    tiny_observation(tmp_path / "obs")
    js = tmp_path / "obs.json"
    meta = json.loads(js.read_text())
    edit(meta)
    js.write_text(json.dumps(meta))
    with pytest.raises(UserError) as info:
        Observation.load(tmp_path / "obs")
    assert f"field {field}" in str(info.value) and "obs.json" in str(info.value), str(info.value)


@pytest.mark.parametrize("name, value, words", [
    ("labels", torch.tensor([1.0]), "integer class indices"),
    ("labels", torch.tensor([[1]]), "integer class indices"),
    ("labels", torch.tensor([7]), "out of range"),
    ("labels", torch.tensor([True]), "integer class indices"),
    ("update/net.0.weight", None, "floating-point"),  # replaced by an int64 tensor of the same shape
    ("param/net.0.weight", None, "floating-point"),
])
def test_observation_wrong_dtypes(tmp_path, name, value, words):
    from safetensors.torch import load_file, save_file

    from gradleak.fl.observation import Observation

    tiny_observation(tmp_path / "obs")
    st = tmp_path / "obs.safetensors"
    tensors = load_file(str(st))
    key = name if name in tensors else next(k for k in tensors if k.startswith(name.split("/")[0] + "/"))
    tensors[key] = value if value is not None else torch.zeros(tensors[key].shape, dtype=torch.int64)
    save_file(tensors, str(st))  # (without the pair id: the mismatch check does not apply)
    with pytest.raises(UserError) as info:
        Observation.load(tmp_path / "obs")
    assert words in str(info.value) and key in str(info.value), str(info.value)
