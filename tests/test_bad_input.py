"""Bad input and faults, command by command (issue 17): what a careless or hostile user feeds gradleak.

Every refused case must exit with code 2, print exactly one line ``error: ...`` naming the key or file at
fault, and leave the output directory absent (or as it was). Loading a crafted pickle from any user-file
loader must never run its payload. The commands run in-process through the real entry point (the ``cli``
fixture of conftest.py); the Ctrl-C / SIGKILL tests live in test_interrupts.py.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

ASSETS = Path(__file__).resolve().parents[1] / "src" / "gradleak" / "assets"
OK_YAML = "attack: {options: {iterations: 2}}\n"


class Payload:
    """Unpickling this runs ``exec`` on code that creates ``marker`` (what a hostile file would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def evil_pickle(path: Path, marker: Path, wrap=lambda p: p) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(wrap(Payload(marker)), f)
    return path


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def _pair(stem: Path, tensors: dict, meta) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def f(tmp_path_factory) -> Path:
    """One directory of bad (and a few good) user files shared by the cases."""
    from gradleak.giml import TaskSetConfig, make_task_set

    root = tmp_path_factory.mktemp("bad")
    _write(root / "ok.yaml", OK_YAML)
    _write(root / "file.txt", "a file, not a directory\n")
    # CIFAR: a batch whose pickle runs code, a corrupt one, one that is not a dict
    evil_pickle(root / "cifar-evil" / "cifar-10-batches-py" / "test_batch", root / "PWNED-cifar",
                wrap=lambda p: {b"data": p, b"labels": []})
    _write(root / "cifar-garbage" / "test_batch", b"\x80\x04not a pickle at all")
    _write(root / "cifar-list" / "test_batch", pickle.dumps([1, 2, 3]))
    # folder: images Pillow cannot read
    for cls in ("cat", "dog"):
        _write(root / "img-garbage" / cls / "a.png", b"\x89PNG but not really")
    # priors: a lone .safetensors, JSON that is not an object, tensors that do not fit the JSON
    save_file({"w": torch.zeros(2)}, str(root / "prior-lone.safetensors"))
    _pair(root / "prior-list", {"w": torch.zeros(2)}, [1, 2])
    _pair(root / "prior-mismatch", {"generator/x": torch.zeros(3)},
          json.loads((ASSETS / "prior-digits.json").read_text()))
    # ROG enhancer whose JSON architecture disagrees with its tensors
    enh = json.loads((ASSETS / "rog_enhancer_digits32.json").read_text())
    enh["arch"]["width"] = enh["arch"].get("width", 16) * 2
    (root / "enh-mismatch").mkdir()
    shutil.copy(ASSETS / "rog_enhancer_digits32.safetensors", root / "enh-mismatch" / "enhancer.safetensors")
    (root / "enh-mismatch" / "enhancer.json").write_text(json.dumps(enh))
    # tagger with no tensors
    _pair(root / "tagger-empty" / "tagger", {"nothing": torch.zeros(1)},
          json.loads((ASSETS / "tagger-digits.json").read_text()))
    # GIML task sets: one good, then one fault each
    ok = root / "tasks-ok"
    make_task_set(TaskSetConfig(clients=2, rounds=1, batch=1, seed=0), ok, progress=False)
    for name in ("tasks-nan", "tasks-nofile", "tasks-list", "tasks-badjson", "tasks-nometa", "tasks-evil"):
        shutil.copytree(ok, root / name)
    from safetensors.torch import load_file

    t = load_file(str(root / "tasks-nan" / "task_000001.safetensors"))
    key = next(k for k in t if k.startswith("update/"))
    t[key] = t[key].clone().fill_(float("nan"))
    save_file(t, str(root / "tasks-nan" / "task_000001.safetensors"))
    idx = json.loads((ok / "tasks.json").read_text())
    _write(root / "tasks-nofile" / "tasks.json", json.dumps({**idx, "tasks": [{"round": 0}]}))
    _write(root / "tasks-list" / "tasks.json", "[]")
    _write(root / "tasks-badjson" / "tasks.json", "{")
    meta = json.loads((ok / "task_000001.json").read_text())
    del meta["model"]
    _write(root / "tasks-nometa" / "task_000001.json", json.dumps(meta))
    evil_pickle(root / "tasks-evil" / "task_000001.safetensors", root / "PWNED-tasks")
    (root / "tasks-empty").mkdir()
    save_file({"images": torch.rand(1, 1, 32, 32)}, str(root / "truth-task0.safetensors"))  # task_000000's shape
    # a train-prior output directory whose checkpoint JSON is not an object
    _pair(root / "ckpt-list" / "checkpoint", {"rng": torch.zeros(1, dtype=torch.uint8)}, ["not", "an", "object"])
    return root


def refused(r, key: str, out: Path, before: set | None = None) -> None:
    """Exit 2, one line ``error: ...`` naming ``key``, nothing written into ``out``."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert key.lower() in lines[0].lower(), (key, lines[0])
    now = {p.relative_to(out) for p in out.rglob("*")} if out.is_dir() else set()
    assert now == (before or set()), f"written despite the error: {sorted(map(str, now - (before or set())))}"
    if before is None and out.exists():
        assert out.is_dir()


def _fill(args, f: Path, out: Path) -> list[str]:
    return [a.format(f=f, out=out) for a in args]


# --- usage errors and --out, for every command ---------------------------------------------------------------

TRAIN = {"train-prior": [], "train-enhancer": [], "train-autoencoder": [], "train-tagger": []}
REQUIRED = {  # the least each command needs besides --out
    "demo": [], "run": ["{f}/ok.yaml"], "tradeoff": [], "giml-tasks": [], "giml": ["--tasks", "{f}/tasks-ok"],
    **{c: ["--data", "digits"] for c in TRAIN},
    "capture": ["--protocol", "{f}/ok.yaml"], "sweep": ["{f}/ok.yaml"],
    "attack": ["{f}/tasks-ok/task_000000", "--attack", "invertgrad"],
}

USAGE = [
    (["train-prior", "--data", "digits", "--out", "{out}", "--steps", "x"], "--steps"),
    (["run", "{f}/ok.yaml", "--out", "{out}", "--bogus"], "--bogus"),
    (["giml", "--out", "{out}"], "--tasks"),
    (["train-tagger", "--data", "digits", "--out", "{out}", "--holdout", "abc"], "--holdout"),
    (["tradeoff", "--out", "{out}", "--rounds", "1.5"], "--rounds"),
    (["nosuchcommand"], "nosuchcommand"),
    (["giml-tasks", "--out", "{out}", "--clients", "many"], "--clients"),
    (["demo", "--out", "{out}", "--threads", "two"], "--threads"),
    (["train-autoencoder", "--out", "{out}"], "--data"),
    (["run", "--out", "{out}"], "config"),
    *[([c, "--data", "digits", "--out", "{out}", "--checkpoint-every", "often"], "--checkpoint-every")
      for c in ("train-enhancer", "train-autoencoder", "train-tagger")],
]


@pytest.mark.parametrize("args,key", USAGE, ids=[f"usage-{a[0]}-{k}" for a, k in USAGE])
def test_usage_error_is_one_line(cli, f, tmp_path, args, key):
    out = tmp_path / "out"
    refused(cli(*_fill(args, f, out)), key, out)


@pytest.mark.parametrize("command", list(REQUIRED))
def test_out_that_is_a_file_is_refused_before_any_work(cli, f, tmp_path, command):
    target = tmp_path / "taken"
    target.write_text("x")
    r = cli(command, *_fill(REQUIRED[command], f, target), "--out", target)
    refused(r, "--out", tmp_path / "nothing")
    assert target.read_text() == "x"


@pytest.mark.parametrize("command", ["run", "giml", "train-prior", "giml-tasks"])
def test_out_under_a_file_is_refused(cli, f, tmp_path, command):
    (tmp_path / "taken").write_text("x")
    out = tmp_path / "taken" / "sub"
    refused(cli(command, *_fill(REQUIRED[command], f, out), "--out", out), "--out", tmp_path / "nothing")


@pytest.mark.parametrize("command", ["run", "train-enhancer"])
def test_out_that_cannot_be_written_is_refused(cli, f, tmp_path, command):
    if not Path("/proc/self").is_dir():
        pytest.skip("needs a read-only /proc")
    out = Path("/proc/gradleak-test/out")
    refused(cli(command, *_fill(REQUIRED[command], f, out), "--out", out), "--out", tmp_path / "nothing")


def test_leftover_tmp_files_are_removed_by_the_next_command_into_the_directory(cli, f, tmp_path):
    out = tmp_path / "out"
    (out / "samples").mkdir(parents=True)
    stale = [out / ".metrics.json.abc123de.tmp", out / "checkpoint.safetensors.tmp", out / "checkpoint.json.tmp",
             out / "samples" / ".step_000002.png.k2j4h5g6.tmp"]
    for p in stale:
        p.write_text("half written")
    keep = [out / "notes.tmp.txt", out / ".mine.tmp", out / "draft.tmp"]  # not names gradleak writes: kept
    for p in keep:
        p.write_text("mine")
    r = cli("train-prior", "--data", "nope", "--out", out)  # refused, but --out was checked and cleaned first
    assert r.returncode == 2
    assert not any(p.exists() for p in stale) and all(p.read_text() == "mine" for p in keep)


def test_no_arguments_prints_help_without_an_error_line(cli):
    r = cli()
    assert r.returncode == 2 and "Usage" in r.stdout and "train-prior" in r.stdout and "error" not in r.stderr


def test_version(cli):
    import gradleak

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"gradleak {gradleak.__version__}"


# --- run: the config and the files it names -------------------------------------------------------------

RUN = [
    ("", "empty"),
    ("- a\n- b\n", "mapping"),
    ("attack: [\n", "not valid YAML"),
    ("foo: 1\n", "'foo'"),
    ("attack: {name: nope}\n", "attack.name"),
    ("attack: {options: {tv: .inf}}\n", "attack.options.tv"),
    ("attack: {options: {tv: .nan}}\n", "attack.options.tv"),
    ("attack: {options: {iterations: 100000000000}}\n", "attack.options.iterations"),
    ("attack: {options: {iterations: 0}}\n", "attack.options.iterations"),
    ("attack: {options: {lr: -1}}\n", "attack.options.lr"),
    ("attack: {options: {nope: 1}}\n", "nope"),
    ("attack: {labels: psychic}\n", "attack.labels"),
    ("data: {resolution: 2}\n", "data.resolution"),
    ("data: {channels: 2}\n", "data.channels"),
    ("data: {name: nope}\n", "data.name"),
    ("data: {batch_size: 0}\n", "data.batch_size"),
    ("model: {name: nope}\n", "model"),
    ("model: {options: {nope: 1}}\n", "nope"),
    ("client: {lr: .inf}\n", "client.lr"),
    ("client: {lr: .nan}\n", "client.lr"),
    ("client: {protocol: fednova}\n", "client.protocol"),
    ("client: {protocol: fedprox}\n", "client.mu"),
    ("defense: [{name: nope}]\n", "defense"),
    ("seed: one\n", "seed"),
    ("data: {name: cifar10}\n", "data.root"),
    ("data: {name: cifar10, root: '{f}/cifar-garbage', split: test}\n", "test_batch"),
    ("data: {name: cifar10, root: '{f}/cifar-list', split: test}\n", "test_batch"),
    ("data: {name: folder, root: '{f}/img-garbage', split: all}\n", "a.png"),
    ("data: {name: folder, root: '{f}/nothing-here'}\n", "nothing-here"),
    ("model: {name: 'tests._bad_models:raises'}\n", "tests._bad_models:raises"),
    ("model: {name: 'tests._bad_models:wrong_outputs'}\n", "classes"),
    ("model: {name: 'tests._bad_models:nan_params'}\n", "nan"),
    ("model: {name: 'tests._bad_models:rejects_input'}\n", "shape"),
    ("model: {name: 'tests._no_such_module:f'}\n", "tests._no_such_module:f"),
    ("attack: {name: gi-z, options: {prior: '{f}/prior-lone.safetensors'}}\n", "prior"),
    ("attack: {name: gi-z, options: {prior: '{f}/prior-list.json'}}\n", "prior-list.json"),
    ("attack: {name: gi-z, options: {prior: '{f}/prior-mismatch'}}\n", "prior"),
    ("attack: {name: rog, options: {enhancer: '{f}/enh-mismatch'}}\n", "enh-mismatch"),
    ("metrics: {tagger: '{f}/tagger-empty'}\n", "metrics.tagger"),
    ("metrics: {tagger_threshold: 2}\n", "metrics.tagger_threshold"),
]


@pytest.mark.parametrize("text,key", RUN, ids=[f"run-{i}-{k}" for i, (_, k) in enumerate(RUN)])
def test_run_refuses_bad_config(cli, f, tmp_path, text, key):
    cfg = tmp_path / "case.yaml"
    cfg.write_text(text.replace("{f}", str(f)))
    out = tmp_path / "out"
    refused(cli("run", cfg, "--out", out, "--no-progress"), key, out)


@pytest.mark.parametrize("extra,key", [(["--set", "attack.options.iterations"], "--set"),
                                       (["--set", "seed.x=1"], "seed"),
                                       (["--set", "attack.options.tv=.inf"], "attack.options.tv")])
def test_run_refuses_bad_override(cli, f, tmp_path, extra, key):
    out = tmp_path / "out"
    refused(cli("run", f / "ok.yaml", "--out", out, *extra), key, out)


def test_run_refuses_config_that_is_not_utf8(cli, tmp_path):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("seed: 1  # café\n".encode("latin-1"))
    refused(cli("run", cfg, "--out", tmp_path / "out"), "latin1.yaml", tmp_path / "out")


def test_run_refuses_decompression_bomb(cli, tmp_path, monkeypatch):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("L", (64, 64)).save(tmp_path / "imgs" / cls / "x.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 > 2x the limit: Pillow raises the bomb error
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{name: folder, root: '{tmp_path / 'imgs'}', split: all, batch_size: 2}}\n")
    refused(cli("run", cfg, "--out", tmp_path / "out"), "x.png", tmp_path / "out")


def test_run_on_malicious_cifar_refuses_and_runs_nothing(cli, f, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{name: cifar10, root: '{f / 'cifar-evil'}', split: test}}\n")
    refused(cli("run", cfg, "--out", tmp_path / "out"), "test_batch", tmp_path / "out")
    assert not (f / "PWNED-cifar").exists()


def test_list_unknown_name(cli, tmp_path):
    refused(cli("list", "nope"), "nope", tmp_path / "out")


# --- training commands ---------------------------------------------------------------------------------

TRAINING = [
    (["train-prior", "--data", "nope"], "data.name"),
    (["train-prior", "--data", "digits", "--lr", "nan"], "--lr"),
    (["train-prior", "--data", "digits", "--lr", "0"], "--lr"),
    (["train-prior", "--data", "digits", "--batch-size", "0"], "--batch-size"),
    (["train-prior", "--data", "digits", "--steps", "-1"], "--steps"),
    (["train-prior", "--data", "digits", "--channels", "2"], "channels"),
    (["train-prior", "--data", "digits", "--threads", "-1"], "--threads"),
    (["train-prior", "--data", "cifar10", "--root", "{f}/cifar-garbage", "--split", "test"], "test_batch"),
    (["train-enhancer", "--data", "nope"], "data.name"),
    (["train-enhancer", "--data", "digits", "--lr", "nan"], "lr"),
    (["train-enhancer", "--data", "digits", "--depth", "0"], "depth"),
    (["train-enhancer", "--data", "digits", "--adv-weight", "inf"], "adv_weight"),
    (["train-autoencoder", "--data", "nope"], "data.name"),
    (["train-autoencoder", "--data", "digits", "--lr", "nan"], "lr"),
    (["train-autoencoder", "--data", "digits", "--steps", "0"], "steps"),
    (["train-tagger", "--data", "nope"], "data.name"),
    (["train-tagger", "--data", "digits", "--lr", "nan"], "--lr"),
    (["train-tagger", "--data", "digits", "--holdout", "2"], "holdout"),
    *[([c, "--data", "digits", "--checkpoint-every", n], "--checkpoint-every")
      for c in ("train-enhancer", "train-autoencoder", "train-tagger") for n in ("0", "-3")],
    (["tradeoff", "--model-options", "[1"], "model_options"),
    (["tradeoff", "--settings", "bogus"], "bogus"),
    (["tradeoff", "--attacks", "nope"], "nope"),
    (["tradeoff", "--threads", "-2"], "--threads"),
    (["giml-tasks", "--data", "nope"], "data.name"),
    (["giml-tasks", "--model-options", "x"], "--model-options"),
    (["giml-tasks", "--clients", "0"], "clients"),
    (["giml-tasks", "--sparsity", "1"], "sparsity"),
    (["giml-tasks", "--server-lr", "nan"], "server_lr"),
    (["giml-tasks", "--client-lr", "inf"], "client_lr"),
    (["giml-tasks", "--model", "nope"], "model"),
    (["giml-tasks", "--batch", "100000"], "batch"),
    (["giml", "--tasks", "{f}/nothing-here"], "nothing-here"),
    (["giml", "--tasks", "{f}/tasks-empty"], "tasks-empty"),
    (["giml", "--tasks", "{f}/tasks-nan"], "task_000001"),
    (["giml", "--tasks", "{f}/tasks-nofile"], "'file'"),
    (["giml", "--tasks", "{f}/tasks-list"], "tasks.json"),
    (["giml", "--tasks", "{f}/tasks-badjson"], "tasks.json"),
    (["giml", "--tasks", "{f}/tasks-nometa"], "task_000001"),
    (["giml", "--tasks", "{f}/tasks-evil"], "task_000001"),
    (["giml", "--tasks", "{f}/tasks-ok", "--tau", "-1"], "giml.tau"),
    (["giml", "--tasks", "{f}/tasks-ok", "--steps", "100000000"], "giml.steps"),
    (["giml", "--tasks", "{f}/tasks-ok", "--tv", "inf"], "giml.tv"),
    (["giml", "--tasks", "{f}/tasks-ok", "--alpha", "nan"], "giml.alpha"),
    (["giml", "--tasks", "{f}/tasks-ok", "--distance", "nope"], "giml.distance"),
    (["giml", "--tasks", "{f}/tasks-ok", "--prior", "{f}/prior-list.json"], "prior-list.json"),
    (["attack", "{f}/tasks-ok/task_000000", "--attack", "nope"], "nope"),
    (["attack", "{f}/tasks-nan/task_000001", "--attack", "invertgrad"], "task_000001"),
    (["attack", "{f}/tasks-ok/task_000000", "--attack", "invertgrad", "--set", "tv=.inf"], "tv"),
    (["attack", "{f}/tasks-evil/task_000001", "--attack", "invertgrad"], "task_000001"),
    (["attack", "{f}/tasks-ok/task_000000", "--attack", "invertgrad", "--public", "digits:public"], "--public"),
    *[(["attack", "{f}/tasks-ok/task_000000", "--attack", "invertgrad", "--truth", "{f}/truth-task0.safetensors",
        "--public", public], key) for public, key in [
        ("{f}/nothing-here", "--public"), ("nope:public", "data.name"), ("digits:bogus", "data.split"),
        ("cifar10:train", "data.root"), ("{f}/img-garbage", "a.png"), ("{f}/file.txt", "file.txt"),
        ("{f}/tasks-evil/task_000001.safetensors", "task_000001")]],
    (["sweep", "{f}/file.txt"], "file.txt"),
]


@pytest.mark.parametrize("args,key", TRAINING, ids=[f"{a[0]}-{i}-{k}" for i, (a, k) in enumerate(TRAINING)])
def test_command_refuses_bad_option(cli, f, tmp_path, args, key):
    out = tmp_path / "out"
    refused(cli(*_fill(args, f, out), "--out", out, "--no-progress"), key, out)
    assert not (f / "PWNED-tasks").exists()


def test_train_prior_refuses_a_checkpoint_that_is_not_an_object(cli, f, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(f / "ckpt-list", out)
    before = {p.relative_to(out) for p in out.rglob("*")}
    r = cli("train-prior", "--data", "digits", "--out", out, "--steps", "2", "--no-progress")
    refused(r, "checkpoint", out, before)


def test_train_prior_refuses_to_resume_with_other_settings(cli, tmp_path):
    out = tmp_path / "out"
    base = ["train-prior", "--data", "digits", "--out", out, "--steps", "1", "--batch-size", "4", "--width", "4",
            "--latent-dim", "8", "--channels", "1", "--no-progress"]
    assert cli(*base).returncode == 0
    before = {p.relative_to(out) for p in out.rglob("*")}
    refused(cli(*base[:-1], "--seed", "1", "--no-progress"), "seed", out, before)


# --- loading a crafted pickle never runs it -------------------------------------------------------------

def _loaders():
    """(kind, how to write the hostile file into a directory, how to load it) for every user-file loader."""
    from gradleak.data import load_dataset
    from gradleak.fl.observation import Observation
    from gradleak.giml.tasks import TaskSet
    from gradleak.metrics.lpips import lpips_status
    from gradleak.nets.tagger import read_tagger
    from gradleak.nets.autoencoder import load_autoencoder
    from gradleak.priors.biggan import read_biggan_state
    from gradleak.priors.checkpoint import load_checkpoint
    from gradleak.nets.enhancer import load_enhancer
    from gradleak.priors.prior import load_prior

    def pair(name):  # a pickle where the tensors belong, a plausible JSON beside it
        def write(d, marker):
            evil_pickle(d / f"{name}.safetensors", marker)
            (d / f"{name}.json").write_text(json.dumps({"format": "gradleak-prior", "kind": name, "arch": {}}))
        return write

    def ckpt(d):
        from gradleak.priors.dcgan import DCGANDiscriminator, DCGANGenerator

        G, D = DCGANGenerator(8, 4, 1, 32), DCGANDiscriminator(4, 1, 32)
        return load_checkpoint(d / "checkpoint", G, D, torch.optim.Adam(G.parameters()),
                               torch.optim.Adam(D.parameters()), torch.Generator())

    def lpips(d):
        model, reason = lpips_status(d)
        assert model is None and "\n" not in reason
        raise ValueError(reason)

    def tasks_write(d, marker):
        evil_pickle(d / "task_000000.safetensors", marker)
        (d / "task_000000.json").write_text("{}")

    return [
        ("observation", pair("observation"), lambda d: Observation.load(d / "observation")),
        ("prior", pair("prior"), lambda d: load_prior(d / "prior.safetensors")),
        ("prior-pt", lambda d, m: evil_pickle(d / "prior.pt", m), lambda d: load_prior(d / "prior.pt")),
        ("checkpoint", pair("checkpoint"), ckpt),
        ("enhancer", pair("enhancer"), lambda d: load_enhancer(d)),
        ("autoencoder", pair("autoencoder"), lambda d: load_autoencoder(d)),
        ("tagger", pair("tagger"), lambda d: read_tagger(d)),
        ("lpips", lambda d, m: (evil_pickle(d / "alexnet-owt-7be5be79.pth", m), evil_pickle(d / "alex.pth", m)),
         lpips),
        ("cifar", lambda d, m: evil_pickle(d / "test_batch", m, wrap=lambda p: {b"data": p}),
         lambda d: load_dataset("cifar10", split="test", root=str(d))),
        ("giml-tasks", tasks_write, lambda d: TaskSet.load(d)),
        ("biggan", lambda d, m: (evil_pickle(d / "pytorch_model.bin", m), (d / "config.json").write_text("{}")),
         lambda d: read_biggan_state(d)),
    ]


@pytest.mark.parametrize("index", range(11), ids=["observation", "prior", "prior-pt", "checkpoint", "enhancer",
                                                   "autoencoder", "tagger", "lpips", "cifar", "giml-tasks",
                                                   "biggan"])
def test_malicious_pickle_is_never_run(tmp_path, index):
    from gradleak.errors import UserError

    kind, write, load = _loaders()[index]
    marker = tmp_path / "PWNED"
    d = tmp_path / kind
    d.mkdir()
    write(d, marker)
    with pytest.raises((UserError, ValueError)) as info:
        load(d)
    assert "\n" not in str(info.value)
    assert not marker.exists(), f"{kind}: loading the file ran its payload"


def test_cifar_unpickler_still_reads_real_layout_written_by_python2_protocol(tmp_path):
    """The allow-list is not too tight: protocol 2 (what the official batches use) and 5 both load."""
    from gradleak.data import load_dataset

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for proto, name in ((2, "test_batch"), *((p, f"data_batch_{i}") for i, p in enumerate((3, 4, 5, 5, 5), 1))):
        with open(d / name, "wb") as fh:
            pickle.dump({b"batch_label": b"x", b"labels": [3, 7], b"data": data, b"filenames": [b"a", b"b"]}, fh,
                        protocol=proto)
    with open(d / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh, protocol=2)
    for split in ("test", "train"):
        s = load_dataset("cifar10", split=split, root=str(tmp_path))
        assert s.labels.tolist()[:2] == [3, 7] and len(s) == (2 if split == "test" else 10) and s.class_names[7] == "c7"
        assert torch.equal((s.images[0].flatten() * 255).round().to(torch.uint8), torch.from_numpy(data[0]))
