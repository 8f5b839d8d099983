"""SCAFFOLD (Karimireddy et al., 2020, Algorithm 1, option II) against a plain PyTorch loop: the local step
y ← y − η (g(y) − c_i + c) (the correction added to ``p.grad`` before ``torch.optim`` steps), the control
update c_i⁺ = c_i − c + (x − y)/(Kη) and the uploads (Δy, Δc) — reproduced by gradleak's simulated client
and the attacker's differentiable re-run (loop and vmap); the re-run from the true images matches the
observed upload (distance 0); the Observation carries c, c_i (known state) and Δc (an extra upload)."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradleak.attacks.engine import Objective, SearchContext, objective_value
from gradleak.case import Case, capture
from gradleak.errors import UserError
from gradleak.fl.client import batched_update, client_round, split_state
from gradleak.fl.observation import Observation
from gradleak.fl.protocol import Protocol
from tests._tiny_victim import N, tiny_data as _data, tiny_net as _net



def _controls(model, seed=5, scale=0.05):
    """A server control variate c and the client's c_i after some rounds (arbitrary, non-zero)."""
    g = torch.Generator().manual_seed(seed)
    ps = dict(model.named_parameters())
    c = {n: scale * torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in ps.items()}
    ci = {n: scale * torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in ps.items()}
    return {"server_control": c, "client_control": ci}


OPTS = {
    "sgd": (dict(), lambda ps: torch.optim.SGD(ps, lr=0.05)),
    "sgd_momentum_wd_shuffled": (dict(momentum=0.9, weight_decay=5e-4, order="shuffled", seed=3),
                                 lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4)),
    "adam": (dict(optimizer="adam", lr=1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2)),
}


def scaffold_loop(model, x, y, settings, make_opt, state):
    """A SCAFFOLD client as written in PyTorch: 2 epochs of batches of 3, the gradient corrected by c − c_i
    before each optimizer step; returns (Δy = x − y, Δc = c_i⁺ − c_i)."""
    model = copy.deepcopy(model).train()
    c, ci = state["server_control"], state["client_control"]
    x0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(settings["seed"]) if settings.get("order") == "shuffled" else None
    loader = DataLoader(TensorDataset(x, y), batch_size=3, shuffle=gen is not None, generator=gen)
    opt = make_opt(model.parameters())
    steps = 0
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.grad.add_(c[n] - ci[n])  # g − c_i + c
            opt.step()
            steps += 1
    lr = opt.param_groups[0]["lr"]
    dy = {n: x0[n] - p.detach() for n, p in model.named_parameters()}
    ci_new = {n: ci[n] - c[n] + dy[n] / (steps * lr) for n in dy}  # option II
    return dy, {n: ci_new[n] - ci[n] for n in dy}


def rel(a: dict, b: dict) -> float:
    num = sum(float((a[n] - b[n]).double().pow(2).sum()) for n in b)
    return (num / sum(float(b[n].double().pow(2).sum()) for n in b)) ** 0.5


def _proto(settings, state=None, **kw):
    return Protocol(kind="scaffold", epochs=2, local_batch_size=3, **{"lr": 0.05, **settings, **kw}).with_state(state)


@pytest.mark.parametrize("bn", [False, True], ids=["nobn", "bn"])
@pytest.mark.parametrize("opt", list(OPTS))
def test_scaffold_matches_plain_torch_loop(opt, bn):
    settings, make_opt = OPTS[opt]
    model, (x, y) = _net(bn), _data()
    state = _controls(model)
    params, buffers = split_state(model)
    dy, dc = scaffold_loop(model, x, y, settings, make_opt, state)
    proto = _proto(settings, state)
    up, extra = client_round(model, params, buffers, x, y, proto)  # the simulated client
    assert rel(up, dy) <= 1e-6 and rel(extra["control_update"], dc) <= 1e-6
    plain = client_round(model, params, buffers, x, y, proto.with_state(None))[0]  # c = c_i = 0: FedAvg's round
    assert rel(plain, dy) > 1e-3  # the correction counts
    out = batched_update(model, params, buffers, x[None], y[None], proto, "loop")  # the attacker's re-run
    assert rel({n: t[0].detach() for n, t in out.items()}, dy) <= 1e-6
    if bn:  # vmap's functional BN rounds differently from torch's kernel: compare in float64
        model, x = model.double(), x.double()
        state = {k: {n: t.double() for n, t in d.items()} for k, d in state.items()}
        proto = proto.with_state(state)
        params, buffers = split_state(model)
        dy, _ = scaffold_loop(model, x, y, settings, make_opt, state)
    out = batched_update(model, params, buffers, x[None], y[None], proto, "vmap")
    assert rel({n: t[0].detach() for n, t in out.items()}, dy) <= 1e-6


def test_plain_sgd_is_algorithm_1_line_by_line():
    """Without torch.optim: y ← y − η (g(y) − c_i + c) on the full batch, K = 3 steps, as the paper writes it."""
    model, (x, y) = _net(False), _data()
    state = _controls(model)
    c, ci = state["server_control"], state["client_control"]
    params, buffers = split_state(model)
    proto = Protocol(kind="scaffold", lr=0.1, local_steps=3, local_batch_size=N).with_state(state)
    w = copy.deepcopy(model)
    for _ in range(3):
        w.zero_grad()
        nn.functional.cross_entropy(w(x), y).backward()
        with torch.no_grad():
            for n, p in w.named_parameters():
                p -= 0.1 * (p.grad - ci[n] + c[n])
    dy = {n: params[n] - p.detach() for n, p in w.named_parameters()}
    up, extra = client_round(model, params, buffers, x, y, proto)
    assert rel(up, dy) <= 1e-6
    assert rel(extra["control_update"], {n: -c[n] + dy[n] / (3 * 0.1) for n in dy}) <= 1e-6


@pytest.mark.parametrize("convention", ["old_minus_new", "new_minus_old", "new_weights"])
def test_observation_carries_state_and_control_update(convention, tmp_path):
    model, (x, y) = _net(True), _data()
    state = _controls(model)
    obs = capture(Case(model, x, y, _proto(OPTS["sgd_momentum_wd_shuffled"][0], state, update=convention),
                       give_labels=True))
    obs.save(tmp_path / "obs")
    back = Observation.load(tmp_path / "obs", model=_net(True))
    assert back.protocol == obs.protocol and back.protocol.kind == "scaffold"
    for k in ("server_control", "client_control"):
        assert all(torch.equal(back.protocol.state[k][n], state[k][n]) for n in state[k])
    dy, dc = scaffold_loop(model, x, y, OPTS["sgd_momentum_wd_shuffled"][0], OPTS["sgd_momentum_wd_shuffled"][1], state)
    assert rel(back.extra_uploads["control_update"], dc) <= 1e-6
    delta = back.as_delta()
    assert rel(delta.update, dy) <= 1e-6 and delta.protocol.state is back.protocol.state
    # the re-run from the true images reproduces the observed upload: distance 0
    names = list(delta.parameters)
    ctx = SearchContext(delta.build_model(), delta, names, [delta.update[n] for n in names])
    d = objective_value(ctx, Objective(distance="l2"), x[None].clone().requires_grad_(), y[None]).detach()
    assert float(d) <= 1e-10 * sum(float(delta.update[n].pow(2).sum()) for n in names)


def test_missing_or_misshapen_sets_are_refused(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    model, (x, y) = _net(False), _data()
    obs = capture(Case(model, x, y, _proto({}, _controls(model))))
    st, js = obs.save(tmp_path / "obs")
    tensors = load_file(st)
    save_file({k: v for k, v in tensors.items() if not k.startswith("state/client_control/")}, st)
    with pytest.raises(UserError, match=r"state sets \[.server_control.\] in .*obs.safetensors; protocol scaffold needs exactly"):
        Observation.load(tmp_path / "obs", model=_net(False))
    tensors["upload/control_update/0.weight"] = torch.zeros(1, 2)
    save_file(tensors, st)
    with pytest.raises(UserError, match=r"upload/control_update/0.weight has shape \(1, 2\), model expects"):
        Observation.load(tmp_path / "obs", model=_net(False))
    assert json.loads(js.read_text())["protocol"]["kind"] == "scaffold"


def test_defense_covers_the_control_update_and_labels_use_the_offset():
    """Δc is computed from the defended Δ (Δc = −c + Δ/(Kη)), so it does not hand over the clean update; the
    averaged-gradient label recovery removes the known offset c − c_i."""
    from gradleak.attacks.labels import averaged_gradient
    from gradleak.defenses import build_defenses

    model, (x, y) = _net(False), _data()
    state = _controls(model, scale=1.0)
    proto = Protocol(kind="scaffold", lr=0.05, local_steps=1).with_state(state)
    obs = capture(Case(model, x, y, proto, build_defenses([{"name": "noise", "sigma": 0.01}])))
    clean = client_round(model, *split_state(model), x, y, proto)[1]["control_update"]
    want = {n: -state["server_control"][n] + obs.update[n] / 0.05 for n in obs.update}
    assert rel(obs.extra_uploads["control_update"], want) <= 1e-6
    assert rel(obs.extra_uploads["control_update"], clean) > 1e-3
    # one full-batch SGD step: Δ = η (g − c_i + c), so ḡ = Δ/η − (c − c_i) is the true gradient
    obs = capture(Case(model, x, y, proto))
    params, buffers = split_state(model)
    g = client_round(model, params, buffers, x, y, Protocol())[0]
    torch.testing.assert_close(averaged_gradient(obs, "5.weight").float(), g["5.weight"], rtol=1e-4, atol=1e-6)


def test_random_gradient_control_replaces_the_control_update_too():
    from gradleak.attacks.generative import control_observation

    model, (x, y) = _net(False), _data()
    state = _controls(model)
    obs = capture(Case(model, x, y, _proto({}, state), give_labels=True))
    ctl = control_observation(obs, seed=0)
    K = len(obs.protocol.schedule(N))
    want = {n: ctl.update[n] / (K * 0.05) - state["server_control"][n] for n in ctl.update}
    assert rel(ctl.extra_uploads["control_update"], want) <= 1e-6  # Δc of the random Δ, not the client's
    assert rel(ctl.extra_uploads["control_update"], obs.extra_uploads["control_update"]) > 0.1
    ctl.build_model()  # validates: the control is an Observation of the same protocol


def test_verify_and_header_of_a_scaffold_observation():
    from gradleak.deploy import verify_observation

    model, (x, y) = _net(False), _data()
    state = _controls(model)
    obs = capture(Case(model, x, y, _proto({}, state, update="new_weights")))
    assert verify_observation(obs, x, y).reproduces  # the re-run with the known c, c_i reproduces the upload
    assert not verify_observation(obs.__class__(**{**obs.__dict__, "protocol": obs.protocol.with_state(
        {k: {n: torch.zeros_like(t) for n, t in d.items()} for k, d in state.items()})}), x, y).reproduces  # c, c_i matter
    line = obs.protocol.rule.describe(obs.protocol, N)
    assert line.startswith("scaffold, τ = 6 local steps") and "control variates known" in line
