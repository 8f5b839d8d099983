"""The client-side leakage guard (gradleak.integrations.flower.LeakageGuard): a Flower client mod that attacks
the client's own update with its own images before the reply leaves. Tiny model, few attack iterations."""
import copy
import importlib.util
import json
from pathlib import Path
from uuid import uuid4

import pytest
import torch
import torch.nn.functional as F

flwr = pytest.importorskip("flwr", reason="Flower (flwr) is not installed: pip install 'gradleak[flower]'")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict  # noqa: E402

import gradleak as gl  # noqa: E402
from gradleak.errors import UserError  # noqa: E402
from gradleak.integrations.flower import (DECISIONS, GUARD_ERROR_CODE, GUARD_KEYS, LeakageGuard,  # noqa: E402
                                          ServerRecorder, load_index)
from gradleak.leakage import measure_leakage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"name": "lenet", "num_classes": 10, "in_channels": 1, "resolution": 32, "options": {}}
ATTACK = {"attack": "dlg", "attack_options": {"iterations": 3}}
NODE = 17


def protocol_from_config(rnd, node, cfg):
    return gl.Protocol(kind="fedavg", lr=float(cfg["lr"]), epochs=1, local_batch_size=int(cfg["batch-size"]))


def _data(n, seed=0):
    ds = gl.load_dataset("digits", split="private", resolution=32, channels=1)
    x, y = gl.sample_batch(ds, n, distinct_labels=True, seed=seed)
    return x, y


def _client(x, y, seen: list, noise: float = 0.0):
    """A Flower ClientApp's train step (plain PyTorch SGD, in-order mini-batches); the reply it produced is
    deep-copied into ``seen`` before any mod sees it. ``noise``: the client adds Gaussian noise of ``noise``
    times the update's norm to its weights (its own local DP, inside the guard) — a safe update."""
    def train(msg, context):
        cfg = msg.content["config"]
        model = gl.build_model("lenet", 10, 1, 32)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=float(cfg["lr"]))
        b = int(cfg["batch-size"])
        for i in range(0, x.shape[0], b):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + b]), y[i:i + b]).backward()
            opt.step()
        if noise:
            before = msg.content["arrays"].to_torch_state_dict()
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():
                ps = dict(model.named_parameters())
                norm = torch.sqrt(sum(((before[k] - p) ** 2).sum() for k, p in ps.items()))
                d = sum(p.numel() for p in ps.values())
                for p in ps.values():
                    p.add_(noise * norm / d ** 0.5 * torch.randn(p.shape, generator=g))
        reply = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                    "metrics": MetricRecord({"num-examples": int(x.shape[0])})}), reply_to=msg)
        seen.append(copy.deepcopy(reply))
        return reply
    return train


@pytest.fixture(autouse=True)
def _task_identity():
    """What Flower's runtime sets in a ServerApp / ClientApp process (Message() reads it)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def _message(batch_size, lr=0.01):
    model = gl.build_model("lenet", 10, 1, 32)
    gl.init_model(model, 0)
    msg = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "config": ConfigRecord({"lr": lr, "batch-size": batch_size, "server-round": 1})}),
                  dst_node_id=NODE, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = str(uuid4())
    return msg


def _context():
    return Context(run_id=1, node_id=NODE, state=RecordDict(), run_config={}, node_config={"partition-id": 0})


def _run(guard, x, y, batch_size=1, noise=0.0):
    seen: list = []
    msg = _message(batch_size)
    reply = guard(copy.deepcopy(msg), _context(), _client(x, y, seen, noise))
    return msg, seen[0], reply


def _arrays(message):
    return next(iter(message.content.array_records.values()))


def _same_bits(a, b):
    ka, kb = list(a.keys()), list(b.keys())
    return ka == kb and all(a[k].numpy().tobytes() == b[k].numpy().tobytes() and a[k].dtype == b[k].dtype
                            and a[k].shape == b[k].shape for k in ka)


def test_leaky_update_is_blocked_and_the_reason_says_why():
    x, y = _data(1)
    guard = LeakageGuard(SPEC, protocol_from_config, lambda m, c: (x, y), policy="block", **ATTACK)
    _, _, reply = _run(guard, x, y)
    assert reply.has_error() and reply.error.code == GUARD_ERROR_CODE
    entry = json.loads(reply.error.reason.split(": ", 1)[1])
    assert entry["decision"] == "blocked" and entry["verdict"] in ("partial", "recognisable")
    assert entry["scores"]["gradleak-guard-decision"] == DECISIONS["blocked"]
    assert entry["scores"]["gradleak-guard-psnr-worst"] > entry["scores"]["gradleak-guard-reference-psnr"] + 1
    assert guard.decisions[-1]["decision"] == "blocked"


def test_leaky_update_is_protected_and_the_sent_update_measures_below_the_threshold():
    x, y = _data(1)
    guard = LeakageGuard(SPEC, protocol_from_config, lambda m, c: (x, y), policy="protect", **ATTACK)
    msg, clean, reply = _run(guard, x, y)
    assert not reply.has_error()
    m = next(iter(reply.content.metric_records.values()))
    assert set(GUARD_KEYS) <= set(m.keys()) and m["num-examples"] == 1
    assert m["gradleak-guard-decision"] == DECISIONS["protected"] and m["gradleak-guard-leaky"] == 1
    assert m["gradleak-guard-verdict-before"] >= 1 and m["gradleak-guard-verdict"] == 0
    assert m["gradleak-guard-tries"] >= 1 and m["gradleak-guard-noise"] > 0
    assert not _same_bits(_arrays(reply), _arrays(clean))  # the protected update is what is sent
    # re-measured independently from what leaves the client: θ_0 sent, the protected arrays received
    rec = ServerRecorder(None, SPEC, protocol_from_config(1, NODE, {"lr": 0.01, "batch-size": 1}))
    obs = rec.observation(1, NODE, _arrays(msg).to_torch_state_dict(), _arrays(reply).to_torch_state_dict(), 1,
                          rec.protocol)
    again = measure_leakage(obs, x, y, attack="dlg", options={"iterations": 3})
    assert again.verdict == "none", again.to_dict()
    assert again.psnr_worst == pytest.approx(m["gradleak-guard-psnr-worst"], abs=1e-4)


def test_safe_update_passes_unchanged_bit_for_bit():
    """A client that noised its own update (noise 10× the update's norm) leaks nothing: block / protect /
    report let it through with the arrays exactly as the client produced them."""
    x, y = _data(1)
    for policy in ("block", "protect", "report"):
        guard = LeakageGuard(SPEC, protocol_from_config, lambda m, c: (x, y), policy=policy, **ATTACK)
        _, clean, reply = _run(guard, x, y, noise=10.0)
        assert not reply.has_error(), policy
        m = next(iter(reply.content.metric_records.values()))
        assert m["gradleak-guard-verdict"] == 0 and m["gradleak-guard-decision"] == DECISIONS["sent"], policy
        assert m["gradleak-guard-leaky"] == 0 and m["gradleak-guard-tries"] == 0
        assert _same_bits(_arrays(reply), _arrays(clean)), policy


def test_report_policy_sends_a_leaky_update_unchanged_with_its_scores():
    x, y = _data(1)
    guard = LeakageGuard(SPEC, protocol_from_config, lambda m, c: (x, y), policy="report", **ATTACK)
    _, clean, reply = _run(guard, x, y)
    m = next(iter(reply.content.metric_records.values()))
    assert m["gradleak-guard-leaky"] == 1 and m["gradleak-guard-decision"] == DECISIONS["sent"]
    assert m["gradleak-guard-verdict"] >= 1
    assert _same_bits(_arrays(reply), _arrays(clean))


def test_bad_guard_settings_are_one_line():
    for kwargs, key in (({"policy": "drop"}, "policy"), ({"threshold": "none"}, "threshold"),
                        ({"noise_levels": []}, "noise_levels"), ({"on_limit": "x"}, "on_limit")):
        with pytest.raises(UserError, match=key):
            LeakageGuard(SPEC, protocol_from_config, lambda m, c: None, **kwargs)


def test_blocked_update_in_a_flower_round_is_recorded_by_the_capture(tmp_path):
    """The real ServerApp / FedAvg / ClientApp with the guard as a client mod (the example's in-process grid):
    client 0 (1 image) is blocked, client 1 (1 image, but it noised its own update) is sent; the round's index lists the blocked reply with
    its reason and the aggregate is client 1's update alone."""
    spec = importlib.util.spec_from_file_location("flower_example", ROOT / "examples" / "flower" / "run.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    from flwr.app import ArrayRecord as AR
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from gradleak.integrations.flower import GradleakCapture

    parts = [_data(1, seed=1), _data(8, seed=2)]
    guard = LeakageGuard(SPEC, ex.protocol_from_config,
                         lambda m, c: parts[int(c.node_config["partition-id"])], policy="block",
                         threshold="recognisable", **ATTACK)
    client = ex.make_client_app(parts, None, mods=[guard])
    server = ServerApp()
    capture_dir = tmp_path / "cap"

    @server.main()
    def main(grid, context):
        strategy = GradleakCapture(FedAvg(fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2),
                                   capture_dir, SPEC, ex.protocol_from_config)
        strategy.start(grid=grid, initial_arrays=AR(ex.initial_model(0).state_dict()), num_rounds=1,
                       train_config=ConfigRecord({"lr": 0.01, "local-epochs": 1, "batch-size": 1}))

    server(ex.in_process_grid(client, 2, 0), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                                     run_config={}))
    index = load_index(capture_dir)
    errors = [e for e in index if e["kind"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == GUARD_ERROR_CODE and "blocked" in errors[0]["reason"]
    clients = [e for e in index if e["kind"] == "client"]
    assert [e["metrics"]["partition-id"] for e in clients] == [1]
    assert clients[0]["metrics"]["gradleak-guard-decision"] == DECISIONS["sent"]
    agg = gl.Observation.load(capture_dir / next(e["path"] for e in index if e["kind"] == "aggregate"))
    one = gl.Observation.load(capture_dir / clients[0]["path"])
    assert agg.aggregation.sizes == (8,)
    for n in one.update:
        assert torch.allclose(agg.update[n], one.update[n], atol=1e-7)
