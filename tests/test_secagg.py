"""Secure aggregation (gradleak.fl.secagg): the aggregate Observation of K clients, the attacker's re-run of it
reproduces it exactly from the true data, it equals what K plain PyTorch clients and FedAvg produce, it
saves and loads, and the attacks run on it like on any other upload."""
import copy

import pytest
import torch

from gradleak.attacks import build_attack
from gradleak.attacks.engine import Objective, SearchContext, objective_value
from gradleak.attacks.labels import recover_labels
from gradleak.case import Case, capture
from gradleak.errors import UserError
from gradleak.fl.observation import Observation
from gradleak.fl.protocol import Protocol
from gradleak.case import capture_aggregate
from gradleak.fl.secagg import Aggregation, aggregate_observation, aggregate_update
from gradleak.models import build_model, init_model

SPEC = {"name": "resnet18", "num_classes": 10, "in_channels": 3, "resolution": 32,
        "options": {"width": 4, "batchnorm": True}}
PROTOS = [Protocol(), Protocol(kind="fedavg", local_steps=3, lr=0.05, local_batch_size=2),
          Protocol(kind="fedavg", epochs=2, lr=0.02, local_batch_size=1, momentum=0.9)]


def _cases(model, sizes, protos, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, p in zip(sizes, protos):
        x = torch.rand(n, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        out.append(Case(model=model, images=x, labels=y, protocol=p, model_spec=dict(SPEC)))
    return out


@pytest.fixture(scope="module")
def bn_model():
    model = build_model("resnet18", 10, 3, 32, width=4, batchnorm=True)
    init_model(model, 0)
    return model


@pytest.mark.parametrize("reduction", ["sum", "mean", "weighted_mean"])
def test_rerun_reproduces_the_aggregate_exactly(bn_model, reduction):
    """K = 3 clients with their own protocols (FedSGD, FedAvg τ = 3, FedAvg 2 epochs with momentum) and sizes."""
    cases = _cases(bn_model, [2, 3, 1], PROTOS)
    obs = capture_aggregate(cases, reduction)
    assert obs.num_images == 6 and obs.aggregation.sizes == (2, 3, 1)
    expected_w = {"sum": (1.0, 1.0, 1.0), "mean": (1 / 3,) * 3, "weighted_mean": (2 / 6, 3 / 6, 1 / 6)}[reduction]
    assert obs.aggregation.weights == pytest.approx(expected_w)
    model = obs.build_model()
    names = list(obs.parameters)
    ctx = SearchContext(model, obs, names, [obs.update[n] for n in names])
    x = torch.cat([c.images for c in cases])[None].clone().requires_grad_()
    y = torch.cat([c.labels for c in cases])[None]
    d = objective_value(ctx, Objective(distance="l2"), x, y)
    scale = sum(float(obs.update[n].pow(2).sum()) for n in names)
    assert scale > 0
    assert float(d.detach()) <= 1e-10 * max(scale, 1.0)
    (g,) = torch.autograd.grad(objective_value(ctx, Objective(distance="cosine"), x, y).sum(), x)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0
    # swapping two clients' images changes the re-run: the slots belong to the clients
    swapped = torch.cat([cases[1].images[:2], cases[0].images, cases[1].images[2:], cases[2].images])[None]
    y2 = torch.cat([cases[1].labels[:2], cases[0].labels, cases[1].labels[2:], cases[2].labels])[None]
    assert float(objective_value(ctx, Objective(distance="l2"), swapped, y2).detach()) > 1e-6 * scale


def test_weighted_mean_equals_plain_pytorch_fedavg():
    """Flower's FedAvg over K plain PyTorch clients (torch.optim.SGD loops): θ_new = Σ_k (n_k/N) θ_τ,k, and
    θ_0 − θ_new is the aggregate Observation's update."""
    base = build_model("lenet", 10, 1, 32)
    init_model(base, 1)
    g = torch.Generator().manual_seed(3)
    sizes, data = [2, 4, 2], []
    for n in sizes:
        data.append((torch.rand(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)))
    proto = Protocol(kind="fedavg", lr=0.05, epochs=2, local_batch_size=2)
    theta0 = {k: v.detach().clone() for k, v in base.named_parameters()}
    new = {k: torch.zeros_like(v) for k, v in theta0.items()}
    for (x, y), n in zip(data, sizes):
        client = copy.deepcopy(base)
        opt = torch.optim.SGD(client.parameters(), lr=0.05)
        for _ in range(2):
            for i in range(0, n, 2):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(client(x[i:i + 2]), y[i:i + 2]).backward()
                opt.step()
        for k, v in client.named_parameters():
            new[k] += (n / sum(sizes)) * v.detach()
    cases = [Case(model=base, images=x, labels=y, protocol=proto) for x, y in data]
    obs = capture_aggregate(cases, "weighted_mean")
    for k in theta0:
        torch.testing.assert_close(obs.update[k], theta0[k] - new[k], rtol=1e-5, atol=1e-7)
    # and the library's own computation of (1) is the same
    up = aggregate_update(base, obs.parameters, obs.buffers, torch.cat([x for x, _ in data]),
                          torch.cat([y for _, y in data]), obs.aggregation)
    for k in theta0:
        assert torch.equal(up[k], obs.update[k]), k


def test_one_client_aggregate_is_the_client_upload(bn_model):
    case = _cases(bn_model, [3], PROTOS[1:2])[0]
    single, agg = capture(case), capture_aggregate([case], "sum")
    for n in single.update:
        assert torch.equal(single.update[n], agg.update[n])


def test_save_load_keeps_the_aggregation(tmp_path, bn_model):
    cases = _cases(bn_model, [2, 1], PROTOS[:2], seed=5)
    obs = capture_aggregate(cases, "mean", give_labels=True)
    obs.save(tmp_path / "agg")
    back = Observation.load(tmp_path / "agg")
    assert back.aggregation == obs.aggregation and back.num_images == 3
    assert torch.equal(back.labels, torch.cat([c.labels for c in cases]))
    for n in obs.update:
        assert torch.equal(back.update[n], obs.update[n])
    parts = [capture(c) for c in cases]
    again = aggregate_observation(parts, "mean")
    for n in obs.update:
        assert torch.equal(again.update[n], obs.update[n])


def test_attack_and_label_recovery_run_on_an_aggregate():
    """The engine optimises all N = K·B images; label recovery reads the aggregate as one batch of N
    (exact for FedSGD clients of equal size)."""
    model = build_model("lenet", 10, 1, 32)
    init_model(model, 0)
    g = torch.Generator().manual_seed(0)
    labels = [torch.tensor([1, 4]), torch.tensor([7, 2])]
    cases = [Case(model=model, images=torch.rand(2, 1, 32, 32, generator=g), labels=y) for y in labels]
    obs = capture_aggregate(cases, "weighted_mean")
    rec_labels = recover_labels(obs, obs.build_model())
    assert sorted(rec_labels.tolist()) == [1, 2, 4, 7]
    rec = build_attack("invertgrad", iterations=3)(obs, labels=torch.cat(labels))
    assert rec.images.shape == (4, 1, 32, 32) and rec.backend == "loop"


def test_bad_aggregations_are_one_line():
    with pytest.raises(UserError, match="reduction"):
        Aggregation.of([1, 2], Protocol(), "median")
    with pytest.raises(UserError, match="old_minus_new"):
        Aggregation((1,), (Protocol(kind="fedavg", update="new_weights"),), (1.0,))
    model = build_model("lenet", 10, 1, 32)
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    cases = [Case(model=m, images=torch.rand(1, 1, 32, 32), labels=torch.tensor([0])) for m in (model, other)]
    with pytest.raises(UserError, match="other weights"):
        capture_aggregate(cases)
