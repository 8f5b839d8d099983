"""FedAvg simulation (Dirichlet split, training under defenses) and the privacy–utility trade-off command."""
import json

import pytest
import torch

from gradleak.data import ImageSet
from gradleak.defenses import build_defenses
from gradleak.errors import UserError
from gradleak.experiments.tradeoff import TradeoffConfig, parse_setting
from gradleak.experiments.simulation import FedAvgConfig, dirichlet_split, simulate_fedavg


def test_dirichlet_split_sizes_determinism_and_alpha():
    labels = torch.arange(10).repeat_interleave(100)  # 1000 examples, 10 classes
    parts = dirichlet_split(labels, 50, 0.5, seed=1)
    assert len(parts) == 50 and sum(p.numel() for p in parts) == 1000
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(1000))  # each example exactly once
    again = dirichlet_split(labels, 50, 0.5, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    assert any(not torch.equal(a, b) for a, b in zip(parts, dirichlet_split(labels, 50, 0.5, seed=2)))

    def skew(alpha):  # mean share of a client's most frequent class
        ps = dirichlet_split(labels, 50, alpha, seed=0)
        return sum(float(torch.bincount(labels[p], minlength=10).max()) / p.numel() for p in ps if p.numel()) / \
            sum(1 for p in ps if p.numel())

    assert skew(0.05) > skew(0.5) > skew(100.0)
    assert skew(100.0) < 0.3  # nearly IID
    with pytest.raises(UserError, match="tradeoff.alpha"):
        dirichlet_split(labels, 10, 0.0)
    with pytest.raises(UserError, match="tradeoff.num_clients"):
        dirichlet_split(labels, 0, 0.5)


def _tiny_task():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(60)
    means = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1]])[:, :, None, None]
    x = (means[y] + 0.15 * torch.randn(240, 3, 8, 8, generator=g)).clamp(0, 1)
    return ImageSet(x[:160], y[:160], 4, "tiny"), ImageSet(x[160:], y[160:], 4, "tiny")


def test_fedavg_simulation_improves_accuracy():
    from gradleak.models import build_model, init_model

    train, test = _tiny_task()
    model = init_model(build_model("gradleak.experiments.victims:rog_lenet5", 4, 3, 8, c1=4, c2=4, hidden=16), 0)
    cfg = FedAvgConfig(rounds=15, num_clients=8, clients_per_round=4, alpha=0.5, local_steps=5, lr=0.1,
                       local_batch_size=8, seed=0)
    res = simulate_fedavg(model, train, test, [], cfg)
    assert res["accuracy"] > res["initial_accuracy"] + 0.2 and res["accuracy"] > 0.6
    assert sum(res["client_sizes"]) == 160 and len(res["history"]) == 2
    # the model ends at the trained parameters; a defense chain runs on every upload
    model2 = init_model(build_model("gradleak.experiments.victims:rog_lenet5", 4, 3, 8, c1=4, c2=4, hidden=16), 0)
    res_q = simulate_fedavg(model2, train, test, build_defenses([{"name": "topk", "sparsity": 0.5}]), cfg)
    assert 0 <= res_q["accuracy"] <= 1
    again = simulate_fedavg(init_model(build_model("gradleak.experiments.victims:rog_lenet5", 4, 3, 8, c1=4, c2=4,
                                                   hidden=16), 0), train, test, [], cfg)
    assert again["accuracy"] == res["accuracy"]  # deterministic


def test_settings_parse_and_refuse():
    assert parse_setting("none").defense == []
    assert parse_setting("fedcdp:-20").defense == [{"name": "fedcdp", "clip": 4.0, "snr_db": -20.0}]
    assert parse_setting("topk").defense == [{"name": "topk", "sparsity": 0.95}]
    assert parse_setting("fedcdp-eps:8").defense == [{"name": "fedcdp", "clip": 4.0, "epsilon": 8.0, "delta": 1e-5}]
    (s,) = TradeoffConfig(settings=["fedcdp-eps:4"], rounds=7).check()
    assert s.defense[0]["rounds"] == 7 and s.name == "fedcdp ε=4"  # accounted over the trade-off's rounds
    assert [p.defense[0]["epsilon"] for p in TradeoffConfig().check() if p.name.startswith("fedcdp")] == [1, 4, 16, 64]
    import inspect

    from gradleak.cli import tradeoff_cmd
    from gradleak.experiments.tradeoff import DEFAULT_SETTINGS

    assert inspect.signature(tradeoff_cmd).parameters["settings"].default.default == ",".join(DEFAULT_SETTINGS)
    assert parse_setting("precode").precode == 256
    for bad, key in (("fedcdp", "tradeoff.settings"), ("wat", "tradeoff.settings"),
                     ("fedcdp-eps:0", "tradeoff.settings[fedcdp-eps:0]"),
                     ("topk:x", "tradeoff.settings[topk:x]")):
        with pytest.raises(UserError) as err:
            parse_setting(bad)
        assert key in str(err.value)
    with pytest.raises(UserError, match="tradeoff.workers"):
        TradeoffConfig(workers=0).check()
    with pytest.raises(UserError, match="pruning_rate"):
        TradeoffConfig(settings=["soteria:2"]).check()


def test_tradeoff_cli_tiny(tmp_path, cli):
    out = tmp_path / "t"
    r = cli("tradeoff", "--out", str(out), "--settings", "none,fedcdp-eps:8", "--rounds", "2", "--clients", "6",
            "--per-round", "2", "--attack-batch", "1", "--attack-resolution", "16", "--rog-iterations", "2",
            "--invertgrad-iterations", "2", "--model-options", "{c1: 2, c2: 2, hidden: 8}", "--workers", "1",
            "--enhancer", "none", "--no-progress")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert [row["setting"] for row in res["rows"]] == ["none", "fedcdp ε=8"]
    for row in res["rows"]:
        assert 0 <= row["accuracy"] <= 1 and row["rog_psnr"] > 0 and row["invertgrad_psnr"] > 0
        for a in ("rog", "invertgrad"):  # margins over the best no-information reference and the verdict
            assert row[f"{a}_psnr"] - row[f"{a}_ref_psnr"] >= row[f"{a}_margin_psnr"] - 1e-9
            assert row[f"{a}_verdict"] in ("none", "partial", "recognisable")
    dp = res["rows"][1]
    assert 7.98 <= dp["epsilon"] <= 8 and dp["sigma_attacked"] > 0  # σ from Opacus for ε = 8, accounted ε ≤ 8
    for f in ("tradeoff.md", "tradeoff_psnr.png", "reconstructions.png"):
        assert (out / f).is_file(), f
    assert "| setting |" in (out / "tradeoff.md").read_text() and "verdict" in (out / "tradeoff.md").read_text()
    r = cli("tradeoff", "--out", str(tmp_path / "bad"), "--settings", "none,fedcdp")
    assert r.returncode == 2 and r.stderr.startswith("error: tradeoff.settings") and r.stderr.count("\n") == 1
    assert not (tmp_path / "bad").exists()
    r = cli("tradeoff", "--out", str(tmp_path / "bad"), "--model-options", "[1, 2]")
    assert r.returncode == 2 and "tradeoff.model_options" in r.stderr


def test_rog_lenet5_victim_and_precode_wrap():
    from gradleak.experiments.victims import ROG_LENET5
    from gradleak.models import build_model, init_model

    m = init_model(build_model(ROG_LENET5, 12, 3, 16, c1=2, c2=2, hidden=8), 0)
    assert m(torch.rand(2, 3, 16, 16)).shape == (2, 12)
    p = init_model(build_model("precode", 12, 3, 16, base=ROG_LENET5, base_options={"c1": 2, "c2": 2, "hidden": 8},
                               bottleneck=4), 0)
    assert p(torch.rand(2, 3, 16, 16)).shape == (2, 12)
