"""R-GAP (closed form, rank analysis, generative layers) and the analytic FC-layer attacks."""
import json

import pytest
import torch
from torch import nn

from gradleak.attacks.analytic import FCAnalytic, FCAnalyticBatch, RowIsolation
from gradleak.attacks import ATTACKS, build_attack
from gradleak.attacks.rgap import (DT, RGAP, LayerSystem, RankAnalysis, RGAPGenerative, analyze_model, parse_chain,
                                   psd_solve, true_layer_inputs)
from gradleak.case import Case, capture
from gradleak.errors import UserError
from gradleak.fl.protocol import Protocol
from gradleak.models import build_model, init_model
from gradleak.priors import DCGANGenerator, Prior


def psnr(a, b):
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def _obs(model, x, y=None, protocol=None):
    y = torch.tensor([3]) if y is None else y
    return capture(Case(model, x, y, protocol or Protocol(), give_labels=True))


def _determined_net(bias):
    return nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1, bias=bias), nn.LeakyReLU(0.2), nn.Conv2d(4, 4, 3, 1, 1, bias=bias),
                         nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(256, 10, bias=bias))


@pytest.mark.parametrize("bias, balance", [(True, True), (False, True), (True, False)])
def test_rgap_recovers_a_determined_standard_form_model(bias, balance):
    model = _determined_net(bias)
    x = torch.rand(1, 1, 8, 8)
    obs = _obs(model, x)
    rec = RGAP(balance=balance)(obs, labels=None, model=model)  # label read from the gradient's sign pattern
    assert rec.images.shape == x.shape and int(rec.labels[0]) == 3
    assert psnr(rec.images, x) >= 60
    assert rec.get(RankAnalysis).rank_deficient == [] and [r.layer for r in rec.get(RankAnalysis).layers] == [1, 2, 3]
    # every recovered layer input matches the true one (the recursion, not only the end)
    for got, true in zip(rec.get(RankAnalysis).inputs, true_layer_inputs(model, x)):
        assert float((got - true).norm() / true.norm()) < 1e-4
    assert rec.iterations == 0 and rec.trace == [] and rec.all_images is None and rec.losses is None


def test_rgap_inverts_one_step_fedavg_and_refuses_a_batch_or_several_steps():
    model = _determined_net(True)
    x = torch.rand(1, 1, 8, 8)
    for protocol in (Protocol(kind="fedavg", local_steps=1, lr=0.5),
                     Protocol(kind="fedavg", local_steps=1, lr=0.5, update="new_minus_old")):
        rec = RGAP()(_obs(model, x, protocol=protocol), model=model)
        assert psnr(rec.images, x) >= 60
    with pytest.raises(UserError, match="batch_size: got 2; allowed: 1"):
        RGAP()(_obs(model, torch.rand(2, 1, 8, 8), torch.tensor([1, 2])), model=model)
    with pytest.raises(UserError, match="local_steps: got 3"):
        RGAP()(_obs(model, x, protocol=Protocol(kind="fedavg", local_steps=3)), model=model)
    with pytest.raises(UserError, match="optimizer: got adam"):
        RGAP()(_obs(model, x, protocol=Protocol(kind="fedavg", local_steps=1, optimizer="adam")), model=model)


def test_rank_analysis_matches_hand_counts():
    # 1×1 conv, 2 → 1 channels on 2×2: forward rows span w⊗R⁴ (4), gradient rows R²⊗k (2), and they share w⊗k
    # (⟨Θ, ∇Θ⟩ = ⟨k, z⟩): rank 4 + 2 − 1 = 5 of 8 unknowns. Linear 4 → 3: the gradient k xᵀ alone fixes x: 4 of 4.
    a = nn.Sequential(nn.Conv2d(2, 1, 1, bias=False), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(4, 3))
    rec = RGAP()(_obs(a, torch.rand(1, 2, 2, 2), torch.tensor([1])), model=a)
    rows = [(r.unknowns, r.forward_constraints, r.gradient_constraints, r.rank) for r in rec.get(RankAnalysis).layers]
    assert rows == [(8, 4, 2, 5), (4, 3, 12, 4)]
    assert rec.get(RankAnalysis).rank_deficient == [1] and rec.get(RankAnalysis).layers[0].deficiency == 3
    # the attack-free indicator (random input, no observation) gives the same counts
    assert [(r.unknowns, r.rank) for r in analyze_model(a, (2, 2, 2), label=1).layers] == [(8, 5), (4, 4)]
    # 2×2 stride-2 conv, 1 → 2 channels on 4×4 (non-overlapping patches): forward span(Θ₀,Θ₁)⊗R⁴ (8), gradient
    # R⁴⊗span(k₀,k₁) (8), intersection span(Θ)⊗span(k) (4): rank 12 of 16.
    b = nn.Sequential(nn.Conv2d(1, 2, 2, stride=2, bias=False), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8, 3))
    rec = RGAP()(_obs(b, torch.rand(1, 1, 4, 4), torch.tensor([0])), model=b)
    ra = rec.get(RankAnalysis)
    assert [(r.unknowns, r.forward_constraints, r.gradient_constraints, r.rank) for r in ra.layers] == \
        [(16, 8, 8, 12), (8, 3, 24, 8)]
    d = rec.get(RankAnalysis).to_dict()
    assert d["rank_deficient"] == [1] and d["layers"][0]["determined"] is False
    json.dumps(d)


def test_layer_system_normal_equations_equal_the_dense_system():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    model = nn.Sequential(conv, nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(64, 3))
    layer = parse_chain(model, (3, 8, 8))[0]
    g = torch.Generator().manual_seed(1)
    sysm = LayerSystem(layer, conv.weight.detach().to(DT), torch.randn(4, 4, 4, generator=g, dtype=DT),
                       torch.randn(4, 4, 4, generator=g, dtype=DT), torch.randn(4, 3, 3, 3, generator=g, dtype=DT))
    n = 3 * 8 * 8
    A = sysm.apply(torch.eye(n, dtype=DT).reshape(n, 3, 8, 8)).T  # column j = A e_j
    # A's rows are the conv (checked against torch's conv) and ∇Θ of ⟨k, conv(x)⟩ (checked against autograd)
    x = torch.randn(1, 3, 8, 8, dtype=DT)
    w = conv.weight.detach().to(DT).requires_grad_()
    out = torch.nn.functional.conv2d(x, w, stride=2, padding=1)
    gw, = torch.autograd.grad((out[0] * sysm.k).sum(), w)
    torch.testing.assert_close(A @ x.reshape(-1), torch.cat([out.detach().reshape(-1), gw.reshape(-1)]))
    G, c = sysm.normal()
    torch.testing.assert_close(G, A.T @ A)
    torch.testing.assert_close(c, A.T @ sysm.rhs())
    f = psd_solve(G, 1e-10)
    assert f.rank == int(torch.linalg.matrix_rank(A)) < n
    torch.testing.assert_close(f.solve(c), torch.linalg.pinv(A) @ sysm.rhs(), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("model, why", [
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3)), r"layer '1' \(ReLU\) is not invertible"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.LeakyReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3)),
     r"layer '2' \(MaxPool2d\)"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.LeakyReLU(), nn.Conv2d(2, 2, 3, groups=2)), r"layer '2' \(Conv2d\) has groups"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.Sigmoid()), r"layer '2' \(Sigmoid\) follows the final layer"),
])
def test_rgap_refuses_models_outside_the_standard_form(model, why):
    with pytest.raises(UserError, match=why) as e:
        parse_chain(model, (1, 8, 8))
    assert "\n" not in str(e.value)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.classifier = nn.Linear(64, 3)

    def forward(self, x):
        return self.classifier((self.act(self.conv(x)) + x).flatten(1))


def test_a_shared_activation_instance_is_one_activation_per_layer():
    act = nn.LeakyReLU(0.2)  # R-GAP's own CNN6 code shares one instance
    model = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), act, nn.Conv2d(4, 4, 3, 1, 1), act, nn.Flatten(), nn.Linear(256, 10))
    assert [c.activation is act for c in parse_chain(model, (1, 8, 8))] == [True, True, False]
    x = torch.rand(1, 1, 8, 8)
    assert psnr(RGAP()(_obs(model, x), model=model).images, x) >= 60


def test_rgap_refuses_a_forward_that_is_not_the_chain_and_accepts_lenet():
    with pytest.raises(UserError, match="forward is not the chain"):
        parse_chain(_Residual(), (1, 8, 8))
    with pytest.raises(UserError, match=r"BatchNorm2d"):
        parse_chain(build_model("convnet", 10, 1, 16, width=2), (1, 16, 16))
    chain = parse_chain(build_model("lenet", 10, 1, 16), (1, 16, 16))  # sigmoid convolutions: in the form
    assert [c.kind for c in chain] == ["conv", "conv", "conv", "linear"]


def test_cnn6_and_cnn10_are_standard_form_and_registered():
    for name, convs in (("cnn6", 6), ("cnn10", 10)):
        model = build_model(name, 10, 3, 32)
        chain = parse_chain(model, (3, 32, 32))
        assert [c.kind for c in chain] == ["conv"] * convs + ["linear"]
        assert chain[-1].in_shape == (3200,) and chain[0].module.bias is None
    assert {"rgap", "rgap-gen", "fc-analytic", "fc-analytic-batch"} <= set(ATTACKS)


def _tiny_prior():
    torch.manual_seed(0)
    G = DCGANGenerator(latent_dim=6, width=4, channels=1, resolution=32)
    return Prior(G.eval(), (6,), name="tiny")


def test_rgap_gen_solves_the_rank_deficient_layer_through_the_prior():
    model = nn.Sequential(nn.Conv2d(1, 2, 2, stride=2, bias=False), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(32, 3))
    x = torch.rand(1, 1, 8, 8)
    obs = _obs(model, x, torch.tensor([1]))
    closed = RGAP()(obs, model=model)
    assert closed.get(RankAnalysis).rank_deficient == [1]
    gen = RGAPGenerative(prior=_tiny_prior(), iterations=5, restarts=2)(obs, model=model)
    row = gen.get(RankAnalysis).layers[0]
    assert row.solver == "generative (z)" and gen.get(RankAnalysis).layers[1].solver == "gradient (top layer)"
    assert not torch.equal(gen.images, closed.images)
    # null-space fill keeps the closed form's row-space part: the same residual, a different image
    ns = RGAPGenerative(prior=_tiny_prior(), iterations=5, restarts=2, fill="nullspace")(obs, model=model)
    ns_ra, closed_ra = ns.get(RankAnalysis), closed.get(RankAnalysis)
    assert ns_ra.layers[0].residual == pytest.approx(closed_ra.layers[0].residual, abs=1e-9)
    assert not torch.allclose(ns.get(RankAnalysis).inputs[0], closed.get(RankAnalysis).inputs[0])
    # explicit layer list: only layer 1 is generative
    only = RGAPGenerative(prior=_tiny_prior(), iterations=2, iterations_w=2, restarts=1, generative_layers=[1])(
        obs, model=model)
    assert [r.solver for r in only.get(RankAnalysis).layers] == ["generative (zw)", "gradient (top layer)"]
    with pytest.raises(UserError, match="generative_layers"):
        build_attack("rgap-gen", generative_layers=[0])


def test_fc_analytic_recovers_one_sample_exactly_and_refuses_conv_first_models():
    model = init_model(build_model("mlp", 10, 3, 16, width=64), 0)
    x = torch.rand(1, 3, 16, 16)
    for protocol in (Protocol(), Protocol(kind="fedavg", local_steps=3, lr=0.1)):
        rec = FCAnalytic()(_obs(model, x, protocol=protocol), labels=None, model=model)
        assert psnr(rec.images, x) >= 80
    assert int(rec.labels[0]) == 3
    with pytest.raises(UserError, match=r"fc-analytic: layer 'features.conv0' \(Conv2d\) is the first layer"):
        FCAnalytic()(_obs(build_model("cnn6", 10, 1, 16), torch.rand(1, 1, 16, 16)))
    with pytest.raises(UserError, match="batch_size: got 2"):
        FCAnalytic()(_obs(model, torch.rand(2, 3, 16, 16), torch.tensor([0, 1])), model=model)


def test_fc_analytic_batch_finds_the_rows_that_isolate_one_sample():
    torch.manual_seed(0)
    model = init_model(build_model("mlp", 10, 1, 8, width=256), 0)
    B = 4
    x, y = torch.rand(B, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    rec = FCAnalyticBatch()(_obs(model, x, y), model=model)
    iso = rec.get(RowIsolation)
    assert rec.describe()["analysis"] == iso.to_dict() and iso.to_dict()["kind"] == "fc row isolation"
    # ground truth: which samples activate each first-layer row (ReLU: δ_{n,i} ≠ 0 iff unit i is on for n)
    with torch.no_grad():
        on = (model.body.fc0(x.flatten(1)) > 0)  # (B, rows)
    assert iso.isolating_rows, "a 256-wide ReLU layer isolates some samples of a batch of 4"
    for r in iso.isolating_rows:
        assert int(on[:, r].sum()) == 1
    isolated = {int(on[:, r].nonzero()) for r in iso.isolating_rows}
    for n in isolated:  # every isolated sample comes back exactly (order-free)
        assert max(psnr(rec.images[j], x[n]) for j in range(B)) >= 80
    json.dumps(iso.to_dict())


def test_gradleak_run_with_rgap_reports_the_rank_analysis(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: digits, resolution: 8, channels: 1, batch_size: 1}\n"
                   "model: {name: cnn6, options: {width: 0.25, bias: true}}\n"
                   "attack: {name: rgap}\nmetrics: {tagger: none}\n")
    res = cli("run", cfg, "--out", tmp_path / "run", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "layer 1 features.conv0 (conv)" in res.stdout and "gradient (top layer)" in res.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    layers = metrics["analysis"]["layers"]
    assert [r["layer"] for r in layers] == list(range(1, 8)) and metrics["iterations"] == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("batch_size: 1", "batch_size: 2"))
    res = cli("run", bad, "--out", tmp_path / "bad", "--no-progress")
    assert res.returncode == 2 and "allowed: 1" in res.stderr and not (tmp_path / "bad").exists()
