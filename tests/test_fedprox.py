"""FedProx (Li et al., 2020) against a plain PyTorch loop: the local objective F(w) + μ/2‖w − w₀‖² written
as users write it (torch.optim, DataLoader, the proximal term added to the loss), reproduced by gradleak's
simulated client and by the attacker's differentiable re-run (loop and vmap); the re-run from the true
images matches the observed upload (distance 0)."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradleak.attacks.engine import Objective, SearchContext, objective_value
from gradleak.case import Case, capture
from gradleak.config import load_config
from gradleak.errors import UserError
from gradleak.fl.client import batched_update, client_update, split_state
from gradleak.fl.observation import Observation
from gradleak.fl.protocol import Protocol
from tests._tiny_victim import tiny_data as _data, tiny_net as _net

MU = 0.5


OPTS = {
    "sgd_momentum_wd_shuffled": (dict(momentum=0.9, weight_decay=5e-4, order="shuffled", seed=3),
                                 lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4)),
    "sgd_nesterov": (dict(momentum=0.9, nesterov=True),
                     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True)),
    "adam": (dict(optimizer="adam", lr=1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2)),
}


def fedprox_loop(model, x, y, settings, make_opt, mu):
    """A FedProx client as written in PyTorch: cross-entropy plus (μ/2)‖w − w₀‖² over 2 epochs of batches of 3."""
    model = copy.deepcopy(model).train()
    w0 = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(settings["seed"]) if settings.get("order") == "shuffled" else None
    loader = DataLoader(TensorDataset(x, y), batch_size=3, shuffle=gen is not None, generator=gen)
    opt = make_opt(model.parameters())
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            prox = sum(((p - q) ** 2).sum() for p, q in zip(model.parameters(), w0))
            (nn.functional.cross_entropy(model(xb), yb) + mu / 2 * prox).backward()
            opt.step()
    return model


def rel(a: dict, b: dict) -> float:
    num = sum(float((a[n] - b[n]).double().pow(2).sum()) for n in b)
    return (num / sum(float(b[n].double().pow(2).sum()) for n in b)) ** 0.5


def _proto(settings, **kw):
    return Protocol(kind="fedprox", mu=MU, epochs=2, local_batch_size=3, **{"lr": 0.05, **settings, **kw})


@pytest.mark.parametrize("bn", [False, True], ids=["nobn", "bn"])
@pytest.mark.parametrize("opt", list(OPTS))
def test_fedprox_matches_plain_torch_loop(opt, bn):
    settings, make_opt = OPTS[opt]
    model, (x, y) = _net(bn), _data()
    params, buffers = split_state(model)
    after = fedprox_loop(model, x, y, settings, make_opt, MU)
    real = {n: params[n] - p.detach() for n, p in after.named_parameters()}
    proto = _proto(settings)
    assert rel(client_update(model, params, buffers, x, y, proto), real) <= 1e-6  # the simulated client
    fedavg = Protocol(**{k: v for k, v in proto.to_dict().items() if k != "mu"} | {"kind": "fedavg"})
    assert rel(client_update(model, params, buffers, x, y, fedavg), real) > 1e-3  # the proximal term counts
    out = batched_update(model, params, buffers, x[None], y[None], proto, "loop")  # the attacker's re-run
    assert rel({n: t[0].detach() for n, t in out.items()}, real) <= 1e-6
    if bn:  # vmap's functional BN rounds differently from torch's kernel: compare in float64 (see test_client_protocols)
        model, x = model.double(), x.double()
        params, buffers = split_state(model)
        after = fedprox_loop(model, x, y, settings, make_opt, MU)
        real = {n: params[n] - p.detach() for n, p in after.named_parameters()}
    out = batched_update(model, params, buffers, x[None], y[None], proto, "vmap")
    assert rel({n: t[0].detach() for n, t in out.items()}, real) <= 1e-6


@pytest.mark.parametrize("convention", ["old_minus_new", "new_minus_old", "new_weights"])
def test_rerun_from_true_images_reproduces_the_observed_upload(convention, tmp_path):
    model, (x, y) = _net(True), _data()
    obs = capture(Case(model, x, y, _proto(OPTS["sgd_nesterov"][0], update=convention), give_labels=True))
    obs.save(tmp_path / "obs")
    obs = Observation.load(tmp_path / "obs", model=_net(True)).as_delta()
    assert obs.protocol.kind == "fedprox" and obs.protocol.mu == MU
    names = list(obs.parameters)
    ctx = SearchContext(obs.build_model(), obs, names, [obs.update[n] for n in names])
    d = objective_value(ctx, Objective(distance="l2"), x[None].clone().requires_grad_(), y[None])
    scale = sum(float(obs.update[n].pow(2).sum()) for n in names)
    assert scale > 0 and float(d.detach()) <= 1e-10 * scale


def test_fedprox_settings_in_config_and_errors():
    cfg = load_config(None, ["client.protocol=fedprox", "client.mu=0.01", "client.local_steps=3"])
    p = cfg.client.to_protocol()
    assert (p.kind, p.mu, p.local_steps) == ("fedprox", 0.01, 3)
    assert Protocol.from_dict(p.to_dict()) == p and "mu" not in Protocol(kind="fedavg").to_dict()
    with pytest.raises(UserError, match=r"^client\.mu: got None; allowed: a number >= 0 with protocol fedprox"):
        load_config(None, ["client.protocol=fedprox"])
    with pytest.raises(UserError, match=r"^client\.mu: got 0\.1; allowed: None with protocol fedavg"):
        Protocol(kind="fedavg", mu=0.1)
    with pytest.raises(UserError, match=r"^client\.mu"):
        Protocol(kind="fedprox", mu=-1.0)
