"""device: resolution, one-line refusals, and the attack path through the device context."""
import pytest
import torch

from gradleak.devices import generator, resolve
from gradleak.errors import UserError


def test_resolve_cpu_auto_and_refusals():
    assert resolve("cpu") == torch.device("cpu")
    assert resolve(" CPU ") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve("auto").type in (expected, "mps")
    with pytest.raises(UserError, match="device: got 'tpu'"):
        resolve("tpu")
    with pytest.raises(UserError, match="device: got 7"):
        resolve(7)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve("cuda")


def test_generator_follows_the_default_device():
    with torch.device("cpu"):
        g = generator(3)
    assert g.device.type == "cpu"
    assert torch.equal(torch.randn(4, generator=generator(3)), torch.randn(4, generator=torch.Generator().manual_seed(3)))


def test_audit_records_device_and_bad_device_is_refused_before_work():
    from gradleak.audit import audit
    from gradleak.config import load_config

    fast = ["data.channels=1", "data.batch_size=1", "attack.options.iterations=2", "metrics.tagger=none"]
    r = audit(load_config(None, fast + ["device=auto"]))
    assert r.environment.device == str(resolve("auto"))
    assert r.reconstruction.images.device.type == "cpu"  # scored and written from the CPU
    assert r.metrics()["environment"]["device"] == r.environment.device
    with pytest.raises(UserError, match="device"):
        audit(load_config(None, fast + ["device=quantum"]))


def test_observation_to_moves_every_tensor(tmp_path):
    from gradleak.case import Case, capture
    from gradleak.models import build_model

    model = build_model("lenet", 10, 1, 16)
    obs = capture(Case(model, torch.rand(2, 1, 16, 16), torch.tensor([1, 2]), give_labels=True))
    moved = obs.to("cpu")
    assert moved is not obs and moved.labels is not None
    assert all(torch.equal(moved.update[k], obs.update[k]) for k in obs.update)


@pytest.mark.parametrize("command", [["demo"], ["attack", "nowhere", "--attack", "invertgrad"]])
def test_cli_bad_device_one_line_exit_2_nothing_written(tmp_path, cli, command):
    out = tmp_path / "out"
    r = cli(*command, "--out", out, "--device", "quantum")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ("quantum" in r.stderr) or ("nowhere" in r.stderr)
    assert not out.exists()


def test_the_config_reads_the_device_once_and_keeps_auto_for_the_worker():
    """``device`` is checked where the config is read (one line naming the key; nothing built yet); ``auto``
    is kept as written, to be resolved where the attack runs."""
    from gradleak.config import RunConfig, load_config

    assert load_config(None, ["device= CPU "]).device == "cpu"
    assert RunConfig(device="auto").device == "auto"
    with pytest.raises(UserError, match=r"^config device: got 'tpu'; allowed: cpu, cuda, cuda:N, mps, auto$"):
        load_config(None, ["device=tpu"])
