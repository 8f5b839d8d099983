"""The Flower integration: the capture wrapper and the example, at a tiny size.

``--engine inprocess`` runs the example's real Flower ServerApp / FedAvg / DP wrapper / ClientApp / mods,
with messages handed over in this process; one test runs Flower's simulation engine (Ray) itself.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower" / "run.py"


def test_import_gradleak_does_not_import_flower():
    code = ("import sys, gradleak, gradleak.integrations; "
            "bad = [m for m in sys.modules if m == 'flwr' or m.startswith('flwr.') or m == 'ray']; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


flwr = pytest.importorskip("flwr", reason="Flower (flwr) is not installed: pip install 'gradleak[flower]'")

from gradleak.errors import UserError  # noqa: E402
from gradleak.fl.observation import Observation  # noqa: E402
from gradleak.fl.protocol import Protocol  # noqa: E402
from gradleak.integrations.flower import GradleakCapture, ServerRecorder, load_index  # noqa: E402
from gradleak.models import build_model  # noqa: E402


def _example():
    spec = importlib.util.spec_from_file_location("flower_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _truth(truth_dir: Path, entry: dict) -> dict:
    return load_file(str(truth_dir / f"round-{entry['round']:03d}" / f"partition-{entry['metrics']['partition-id']}.safetensors"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """2 rounds × 3 clients × 1 image each, local training 2 SGD steps; attack one client (DLG, 6 L-BFGS steps)."""
    out = tmp_path_factory.mktemp("flower")
    results = _example().main([
        "--out", str(out), "--engine", "inprocess", "--clients", "3", "--images", "1", "--batch-size", "1",
        "--epochs", "2", "--rounds", "2", "--iterations", "6", "--attack-clients", "1", "--no-dp",
        "--truth-dir", str(out / "truth")])
    return out, results


def test_every_sampled_client_and_round_is_captured_and_loads(tiny_run):
    out, _ = tiny_run
    index = load_index(out / "plain")
    clients = [e for e in index if e["kind"] == "client"]
    assert sorted((e["round"], e["metrics"]["partition-id"]) for e in clients) == [(r, p) for r in (1, 2) for p in range(3)]
    assert len({e["node_id"] for e in clients}) == 3
    assert sorted(e["round"] for e in index if e["kind"] == "aggregate") == [1, 2]
    for e in clients:
        obs = Observation.load(out / "plain" / e["path"])
        assert obs.num_images == 1 and obs.labels is None and obs.image_shape == (1, 32, 32)
        assert obs.protocol == Protocol(kind="fedavg", lr=0.01, epochs=2, local_batch_size=1)
        assert obs.extra["round"] == e["round"] and obs.extra["node_id"] == e["node_id"]


def test_capture_equals_the_clients_own_update_exactly(tiny_run):
    out, _ = tiny_run
    for e in (e for e in load_index(out / "plain") if e["kind"] == "client"):
        obs = Observation.load(out / "plain" / e["path"])
        truth = _truth(out / "truth", e)
        assert set(truth) == set(obs.update)
        for name, delta in truth.items():
            assert torch.equal(obs.update[name], delta), name
        assert sum(float(d.abs().sum()) for d in truth.values()) > 0


def test_round_two_starts_from_the_aggregate_of_round_one(tiny_run):
    out, _ = tiny_run
    index = load_index(out / "plain")
    agg = Observation.load(out / "plain" / next(e["path"] for e in index if e["kind"] == "aggregate" and e["round"] == 1))
    first = Observation.load(out / "plain" / next(e["path"] for e in index if e["kind"] == "client" and e["round"] == 2))
    for name, theta0 in agg.parameters.items():  # θ_global(2) = θ_global(1) − Δ_aggregate(1)
        assert torch.allclose(first.parameters[name], theta0 - agg.update[name], atol=1e-7)


def test_reconstruction_of_one_client_beats_the_grey_reference(tiny_run):
    _, results = tiny_run
    r = results["plain"][0]
    assert r["label_accuracy"] == 1.0
    assert r["psnr"] > r["grey_psnr"] + 10, r


def test_dp_client_side_clipping_capture(tmp_path):
    """Flower's DifferentialPrivacyClientSideFixedClipping + fixedclipping_mod: the server holds each upload
    clipped to C and un-noised; the released aggregate carries noise of σ = z·C / K. LocalDpMod: noised."""
    ex = _example()
    results = ex.main(["--out", str(tmp_path), "--engine", "inprocess", "--clients", "2", "--images", "1",
                       "--batch-size", "1", "--epochs", "1", "--rounds", "1", "--iterations", "2",
                       "--attack-clients", "1", "--dp-clip", "0.01", "--dp-noise", "0.5", "--local-dp-epsilon", "10"])
    index = load_index(tmp_path / "dp")
    client = next(e for e in index if e["kind"] == "client")
    obs = Observation.load(tmp_path / "dp" / client["path"])
    norm = torch.sqrt(sum((u.double() ** 2).sum() for u in obs.update.values()))
    assert abs(float(norm) - 0.01) < 1e-5  # clipped to C exactly (up to float32 rounding)
    assert obs.defenses[0]["name"] == "clip" and obs.defenses[0]["max_norm"] == 0.01
    agg = Observation.load(tmp_path / "dp" / next(e["path"] for e in index if e["kind"] == "aggregate"))
    noise = torch.cat([(agg.update[n] - obs.update[n]).flatten() for n in obs.update])
    assert abs(float(noise.std()) - 0.5 * 0.01) < 0.05 * 0.5 * 0.01  # σ = z·C / K with K = 1
    assert results["dp_aggregate"]["update_norm"] > 10 * results["dp_client"]["update_norm"]
    # LocalDpMod: the noise is added before upload, so the server's own per-client view carries it
    local = next(e for e in load_index(tmp_path / "local-dp") if e["kind"] == "client")
    local_obs = Observation.load(tmp_path / "local-dp" / local["path"])
    assert [d["name"] for d in local_obs.defenses] == ["clip", "noise"]
    assert results["local_dp_client"]["update_norm"] > 10 * 0.01


def test_wrapper_refuses_a_model_that_does_not_match(tmp_path):
    rec = ServerRecorder(tmp_path, {"name": "lenet", "num_classes": 10, "in_channels": 1, "resolution": 32},
                         Protocol(kind="fedavg"))
    state = build_model("lenet", 10, 1, 32).state_dict()
    bad = dict(state, **{"classifier.weight": torch.zeros(3, 3)})
    with pytest.raises(UserError) as err:
        rec.check_state(bad, "arrays")
    assert "classifier.weight" in str(err.value) and "(3, 3)" in str(err.value) and "(10, 768)" in str(err.value)
    with pytest.raises(UserError, match="missing"):
        rec.check_state({k: v for k, v in state.items() if k != "classifier.bias"}, "arrays")
    with pytest.raises(UserError, match="extra.weight"):
        rec.check_state(dict(state, **{"extra.weight": torch.zeros(1)}), "arrays")
    with pytest.raises(UserError, match="Strategy"):
        GradleakCapture(object(), tmp_path, {"name": "lenet", "num_classes": 10}, Protocol())
    from gradleak.integrations.flower import LegacyGradleakCapture

    with pytest.raises(UserError, match=r"got object; allowed: a flwr\.server\.strategy\.Strategy \(legacy API\)"):
        LegacyGradleakCapture(object(), tmp_path, {"name": "lenet", "num_classes": 10}, Protocol())
    with pytest.raises(UserError, match="num-examples"):
        rec.record(1, 7, state, state, 0, Protocol())
    assert not list(tmp_path.iterdir())  # nothing written


def test_flower_simulation_engine_end_to_end(tmp_path):
    """Flower's own simulation engine (Ray): every client and round captured, equal to the clients' Δ."""
    pytest.importorskip("ray", reason="Flower's simulation engine needs Ray: pip install 'flwr[simulation]'")
    out = tmp_path / "run"
    _example().main(["--out", str(out), "--clients", "2", "--images", "1", "--batch-size", "1", "--rounds", "1",
                     "--iterations", "1", "--attack-clients", "1", "--no-dp", "--truth-dir", str(tmp_path / "truth")])
    clients = [e for e in load_index(out / "plain") if e["kind"] == "client"]
    assert sorted(e["metrics"]["partition-id"] for e in clients) == [0, 1]
    for e in clients:
        obs = Observation.load(out / "plain" / e["path"])
        for name, delta in _truth(tmp_path / "truth", e).items():
            assert torch.equal(obs.update[name], delta), name
    assert json.loads((out / "results.json").read_text())["plain"][0]["images"] == 1


def test_legacy_strategy_capture_equals_the_clients_update(tmp_path):
    """The legacy API (flwr.server.strategy.FedAvg, Parameters / FitRes): same capture, same exactness."""
    import torch.nn.functional as F
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    from gradleak.integrations.flower import LegacyGradleakCapture

    class Proxy(ClientProxy):
        def get_properties(self, *a, **k): raise NotImplementedError
        def get_parameters(self, *a, **k): raise NotImplementedError
        def fit(self, *a, **k): raise NotImplementedError
        def evaluate(self, *a, **k): raise NotImplementedError
        def reconnect(self, *a, **k): raise NotImplementedError

    manager = SimpleClientManager()
    for cid in ("a", "b"):
        manager.register(Proxy(cid))
    spec = {"name": "lenet", "num_classes": 10, "in_channels": 1, "resolution": 32, "options": {}}
    net = build_model("lenet", 10, 1, 32)
    global_params = ndarrays_to_parameters([v.numpy() for v in net.state_dict().values()])
    capture = LegacyGradleakCapture(LegacyFedAvg(min_fit_clients=2, min_available_clients=2), tmp_path, spec,
                                    Protocol(kind="fedavg", lr=0.05, local_steps=1))
    instructions = capture.configure_fit(1, global_params, manager)
    results, truth = [], {}
    for i, (proxy, fit_ins) in enumerate(instructions):
        client = build_model("lenet", 10, 1, 32)
        client.load_state_dict({k: torch.from_numpy(a) for k, a in
                                zip(client.state_dict(), parameters_to_ndarrays(fit_ins.parameters))})
        before = {k: v.detach().clone() for k, v in client.named_parameters()}
        opt = torch.optim.SGD(client.parameters(), lr=0.05)
        F.cross_entropy(client(torch.rand(1, 1, 32, 32)), torch.tensor([i])).backward()
        opt.step()
        truth[proxy.cid] = {k: before[k] - v.detach() for k, v in client.named_parameters()}
        params = ndarrays_to_parameters([v.detach().numpy() for v in client.state_dict().values()])
        results.append((proxy, FitRes(Status(Code.OK, ""), params, 1, {})))
    aggregated, _ = capture.aggregate_fit(1, results, [])
    assert aggregated is not None
    index = load_index(tmp_path)
    assert sorted(e["node_id"] for e in index if e["kind"] == "client") == ["a", "b"]
    for e in (e for e in index if e["kind"] == "client"):
        obs = Observation.load(tmp_path / e["path"])
        for name, delta in truth[e["node_id"]].items():
            assert torch.equal(obs.update[name], delta), name
    agg = Observation.load(tmp_path / next(e["path"] for e in index if e["kind"] == "aggregate"))
    for name in agg.update:  # FedAvg with equal weights: the mean of the two updates
        assert torch.allclose(agg.update[name], (truth["a"][name] + truth["b"][name]) / 2, atol=1e-7)
    # rounds= and capture_aggregate= choose what is kept: round 1 not asked for, then no aggregate
    for rounds, aggregate, kinds in (([2], True, None), ([1], False, ["client", "client"])):
        out = tmp_path / f"options-{rounds[0]}"
        other = LegacyGradleakCapture(LegacyFedAvg(min_fit_clients=2, min_available_clients=2), out, spec,
                                      Protocol(kind="fedavg", lr=0.05, local_steps=1), rounds=rounds,
                                      capture_aggregate=aggregate)
        other.configure_fit(1, global_params, manager)
        assert other.aggregate_fit(1, results, [])[0] is not None
        index = out / "index.json"
        assert (sorted(e["kind"] for e in load_index(out)) if index.exists() else None) == kinds


@pytest.mark.parametrize("convention", ["old_minus_new", "new_minus_old", "new_weights"])
def test_recorder_stores_the_update_in_the_protocols_convention(tmp_path, convention):
    spec = {"name": "lenet", "num_classes": 10, "in_channels": 1, "resolution": 32, "options": {}}
    rec = ServerRecorder(tmp_path, spec, Protocol(kind="fedavg", update=convention))
    before = build_model("lenet", 10, 1, 32).state_dict()
    after = {k: v + 0.01 * torch.randn_like(v) for k, v in before.items()}
    path = rec.record(3, 42, before, after, 2, rec.protocol_for(3, 42, {}))
    obs = Observation.load(path)
    assert obs.protocol.update == convention and obs.extra["update_convention"] == convention
    expected = {"old_minus_new": lambda k: before[k] - after[k], "new_minus_old": lambda k: after[k] - before[k],
                "new_weights": lambda k: after[k]}[convention]
    for k in obs.update:
        assert torch.equal(obs.update[k], expected(k)), k


def test_gradleak_attack_command_on_a_flower_capture(tiny_run, tmp_path, cli):
    """`gradleak attack CAPTURE --truth …` (the command line) reconstructs a captured client too."""
    out, _ = tiny_run
    entry = next(e for e in load_index(out / "plain")  # the client the example attacked
                 if e["kind"] == "client" and e["round"] == 1 and e["metrics"]["partition-id"] == 0)
    truth = out / "clients" / f"partition-{entry['metrics']['partition-id']}.safetensors"
    res = cli("attack", out / "plain" / entry["path"], "--attack", "idlg", "--set", "iterations=6",
              "--truth", truth, "--out", tmp_path / "attack", "--no-progress")
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "attack" / "metrics.json").read_text())
    x = load_file(str(truth))["images"]
    grey = 10 * torch.log10(1 / ((x - 0.5) ** 2).mean())
    assert metrics["psnr"]["mean"] > float(grey) + 10, metrics["psnr"]


def test_flower_aggregate_is_a_secure_aggregate_the_rerun_reproduces(tiny_run):
    """Each round's saved aggregate is FedAvg's weighted mean of the clients' Δ (gradleak.fl.secagg); re-running
    it from the clients' true images (slot order = extra.client_nodes) reproduces Flower's aggregate."""
    from gradleak.fl.secagg import aggregate_update

    out, _ = tiny_run
    index = load_index(out / "plain")
    part_of = {e["node_id"]: e["metrics"]["partition-id"] for e in index if e["kind"] == "client"}
    for e in (e for e in index if e["kind"] == "aggregate"):
        agg = Observation.load(out / "plain" / e["path"])
        assert agg.aggregation.sizes == (1, 1, 1) and agg.extra["aggregation_residual"] < 1e-4
        truth = [load_file(str(out / "clients" / f"partition-{part_of[n]}.safetensors")) for n in e["client_nodes"]]
        x = torch.cat([t["images"] for t in truth])
        y = torch.cat([t["labels"] for t in truth])
        rerun = aggregate_update(agg.build_model(), agg.parameters, agg.buffers, x, y, agg.aggregation)
        num = sum(float((rerun[n] - agg.update[n]).double().pow(2).sum()) for n in agg.update)
        den = sum(float(agg.update[n].double().pow(2).sum()) for n in agg.update)
        assert den > 0 and (num / den) ** 0.5 < 1e-4  # float32: θ_0 − Σ (n_k/N) θ_τ,k cancels digits
