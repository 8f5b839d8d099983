from pathlib import Path

import pytest

from gradleak.attacks.presets import InvertGrad, build_attack
from gradleak.config import load_config
from gradleak.errors import UserError


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: 3\nattack: {name: dlg}\n")
    cfg = load_config(p, ["attack.options.iterations=5", "data.batch_size=2", "client.protocol=fedavg"])
    assert cfg.seed == 3 and cfg.attack.name == "dlg" and cfg.attack.options == {"iterations": 5}
    assert cfg.data.batch_size == 2 and cfg.client.protocol == "fedavg"
    assert "batch_size: 2" in cfg.to_yaml()


@pytest.mark.parametrize("override, needle", [
    ("data.batchsize=2", "data.batchsize"),
    ("data.batch_size=two", "data.batch_size"),
    ("data.batch_size=0", "data.batch_size"),
    ("client.protocol=fednova", "client.protocol"),
    ("client.mu=0.1", "client.mu"),  # a FedProx setting with protocol fedsgd
    ("client.lr=-1", "client.lr"),
    ("bogus=1", "bogus"),
])
def test_bad_keys_one_line(override, needle):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_missing_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="bad.yaml"):
        load_config(bad)


def test_attack_options_validated():
    a = build_attack("invertgrad", iterations=7, tv=0.01)
    assert isinstance(a, InvertGrad) and a.iterations == 7 and a.tv == 0.01
    with pytest.raises(UserError, match="attack.options.itterations"):
        build_attack("invertgrad", itterations=7)
    with pytest.raises(UserError, match="attack.options.lr"):
        build_attack("invertgrad", lr="fast")
    with pytest.raises(UserError, match="attack.name"):
        build_attack("nope")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_examples_build(path):
    """Every shipped example config validates and builds its case and attack (nothing is run)."""
    from gradleak.attacks import build_attack
    from gradleak.audit import build_case

    cfg = load_config(path, [])
    build_attack(cfg.attack.name, **cfg.attack.options)
    case = build_case(cfg)
    assert case.images.shape[0] == case.labels.shape[0] > 0
