"""Defenses (issue 3): each transform's defining property, the attacker-side distances, the threat-model
record in the Observation, and one-line refusals of bad parameters."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradleak.attacks.objectives import DISTANCES
from gradleak.attacks.presets import build_attack
from gradleak.case import Case, capture
from gradleak.defenses import DEFENSES, ClientContext, build_defenses, choose_distance, estimate_defense
from gradleak.defenses.fedcdp import (
    clip_per_example,
    clipped_sum,
    fedcdp_epsilon,
    format_snr_epsilon_table,
    per_example_grads,
    realised_snr_db,
    sigma_for_epsilon,
    sigma_for_snr,
    snr_epsilon_table,
)
from gradleak.defenses.noise import measured_snr_db
from gradleak.defenses.quantize import levels_for_bits, quantize_tensor
from gradleak.defenses.soteria import feature_sensitivity, soteria_mask
from gradleak.defenses.sparsify import keep_count
from gradleak.errors import UserError
from gradleak.fl.client import batched_update, client_update, split_state
from gradleak.fl.observation import Observation
from gradleak.fl.protocol import Protocol
from gradleak.models import build_model, init_model, kl_loss


def _lenet(num_classes=10, channels=3):
    m = build_model("lenet", num_classes, channels, 32)
    init_model(m, 0)
    return m


def _batch(b=2, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, channels, 32, 32, generator=g), torch.arange(b) % 10


def _ctx(model, x, y, protocol=None, seed=0, pool=None):
    p, b = split_state(model)
    return ClientContext(model, p, b, x, y, protocol or Protocol(), torch.Generator().manual_seed(seed), pool)


def _random_update(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(64, 50, generator=g), "a.bias": torch.randn(64, generator=g),
            "b.weight": torch.randn(10, 64, generator=g), "b.bias": torch.randn(10, generator=g)}


def _apply(spec, update, ctx=None):
    (d,) = build_defenses([spec])
    return d, d.apply(update, ctx)


# --- sparsification ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.95, 0.99])
def test_topk_keeps_exactly_k_per_layer(sparsity):
    u = _random_update()
    _, out = _apply({"name": "topk", "sparsity": sparsity}, u)
    for n, t in u.items():
        k = keep_count(t.numel(), sparsity)
        assert k == max(1, math.ceil((1 - sparsity) * t.numel() - 1e-9))
        kept = out[n] != 0
        assert int(kept.sum()) == k
        # the kept entries are the largest magnitudes, unchanged
        assert torch.equal(out[n][kept], t[kept])
        if k < t.numel():
            assert t[kept].abs().min() >= t[~kept].abs().max()


def test_topk_global_and_gias_sparsity():
    u = _random_update()
    total = sum(t.numel() for t in u.values())
    _, out = _apply({"name": "topk", "sparsity": 0.9, "scope": "global"}, u)
    assert sum(int((t != 0).sum()) for t in out.values()) == keep_count(total, 0.9)
    _, gias = _apply({"name": "gradient_sparsity", "sparsity": 0.95}, u)
    _, topk = _apply({"name": "topk", "sparsity": 0.95}, u)
    assert all(torch.equal(gias[n], topk[n]) for n in u)  # GIAS: per-layer, drop the p% smallest


# --- quantisation -----------------------------------------------------------------------------------

def test_uniform_quantizer_3bit_levels():
    assert levels_for_bits(3) == 3 and levels_for_bits(2) == 1 and levels_for_bits(1) == 1
    u = _random_update()
    d, out = _apply({"name": "quantize", "bits": 3}, u)
    for n, t in u.items():
        scale = t.abs().max() / 3  # default norm ∞, κ = 1: levels {−3..3}·‖g‖∞/3
        idx = out[n] / scale
        assert torch.allclose(idx, idx.round(), atol=1e-5)
        assert set(idx.round().int().unique().tolist()) <= set(range(-3, 4))
        assert (out[n] - t).abs().max() <= scale / 2 + 1e-6  # nearest level
    assert d.describe()["levels"] == 3


def test_qsgd_unbiased():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(40, generator=g)
    draws = 4000
    acc = torch.zeros_like(t)
    sq = torch.zeros_like(t)
    for _ in range(draws):
        q = quantize_tensor(t, s=3, p=2.0, kappa=1.0, stochastic=True, generator=g)
        acc += q
        sq += q * q
    mean = acc / draws
    std = (sq / draws - mean**2).clamp_min(0).sqrt()
    # unbiased: every coordinate's sample mean within 5 standard errors (+ float slack) of g
    assert ((mean - t).abs() <= 5 * std / math.sqrt(draws) + 1e-4).all()
    levels = q / (t.norm() / 3)
    assert torch.allclose(levels, levels.round(), atol=1e-4)


def test_qsgd_seeded_through_ctx():
    m = _lenet()
    x, y = _batch()
    u = client_update(m, *split_state(m), x, y, Protocol())
    _, a = _apply({"name": "qsgd"}, u, _ctx(m, x, y, seed=3))
    _, b = _apply({"name": "qsgd"}, u, _ctx(m, x, y, seed=3))
    assert all(torch.equal(a[n], b[n]) for n in u)


def test_sign_values():
    u = _random_update()
    u["a.bias"][:5] = 0
    _, out = _apply({"name": "sign"}, u)
    for n, t in out.items():
        assert set(t.unique().tolist()) <= {-1.0, 0.0, 1.0}
        assert torch.equal(t, u[n].sign())


# --- noise and clipping -----------------------------------------------------------------------------

@pytest.mark.parametrize("snr", [-20.0, -5.0, 0.0, 10.0, 30.0])
@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_noise_hits_target_snr(snr, scope):
    m = _lenet()
    x, y = _batch()
    u = client_update(m, *split_state(m), x, y, Protocol())
    d, out = _apply({"name": "noise", "snr_db": snr, "scope": scope}, u, _ctx(m, x, y))
    assert abs(measured_snr_db(u, out) - snr) < 0.5
    if scope == "per_layer":  # layers large enough for the estimate to concentrate
        for n in ("body.0.weight", "classifier.weight"):
            assert abs(measured_snr_db({n: u[n]}, {n: out[n]}) - snr) < 0.5
    assert "sigma_used" in d.describe()


def test_noise_sigma_and_clip():
    u = _random_update()
    m = _lenet()
    _, out = _apply({"name": "noise", "sigma": 0.5}, u, _ctx(m, *_batch()))
    resid = torch.cat([(out[n] - u[n]).reshape(-1) for n in u])
    assert abs(float(resid.std()) - 0.5) < 0.03
    _, c = _apply({"name": "clip", "max_norm": 1.0}, u)
    assert abs(float(torch.cat([t.reshape(-1) for t in c.values()]).norm()) - 1.0) < 1e-5
    _, c = _apply({"name": "clip", "max_norm": 1.0, "scope": "per_layer"}, u)
    assert all(float(t.norm()) <= 1.0 + 1e-5 for t in c.values())


# --- FedCDP -----------------------------------------------------------------------------------------

def test_fedcdp_per_example_grads_and_clipping():
    m = _lenet()
    x, y = _batch(3)
    p, b = split_state(m)
    m.eval()
    pe = per_example_grads(m, p, b, x, y)
    for i in range(3):  # vmap(grad) equals one autograd call per example
        ref = client_update(m, p, b, x[i:i + 1], y[i:i + 1], Protocol(bn_mode="eval"))
        assert all(torch.allclose(pe[n][i], ref[n], atol=1e-6) for n in p)
    C = 0.05
    clipped = clip_per_example(pe, C)
    for n, g in clipped.items():  # eq. 17: every layer of every example has norm ≤ C before the noise
        assert (g.reshape(3, -1).norm(dim=1) <= C * (1 + 1e-5)).all()
    assert any(float(pe[n].reshape(3, -1).norm(dim=1).max()) > C for n in pe)  # clipping was active


def test_fedcdp_upload_snr_and_epsilon():
    m = _lenet()
    x, y = _batch(2)
    ctx = _ctx(m, x, y, protocol=Protocol(bn_mode="eval"))
    (exact,) = build_defenses([{"name": "fedcdp", "clip": 1e6, "sigma": 0.0}])
    out = exact.apply({}, ctx)  # no clipping, no noise = the plain (eval-mode) FedSGD gradient
    ref = client_update(m, ctx.params, ctx.buffers, x, y, Protocol(bn_mode="eval"))
    assert all(torch.allclose(out[n], ref[n], atol=1e-6) for n in ref)
    assert exact.describe()["epsilon"] == "inf"

    C, snr = 0.05, -5.0
    (d,) = build_defenses([{"name": "fedcdp", "clip": C, "snr_db": snr}])
    noisy = d.apply({}, _ctx(m, x, y, seed=1))
    (clean,) = build_defenses([{"name": "fedcdp", "clip": C, "sigma": 0.0}])
    signal = clean.apply({}, _ctx(m, x, y, seed=1))
    assert abs(measured_snr_db(signal, noisy) - snr) < 0.5
    desc = d.describe()
    assert desc["sample_rate"] == 2 / 500 and desc["steps"] == 100
    assert desc["epsilon"] > 0 and math.isfinite(desc["epsilon"])
    eps = [r["epsilon"] for r in desc["snr_to_epsilon"]]
    assert [r["snr_db"] for r in desc["snr_to_epsilon"]] == [-20, -15, -10, -5, 0]
    assert eps == sorted(eps)  # more noise (lower SNR) → smaller ε
    json.dumps(desc)


def test_fedcdp_epsilon_matches_opacus_and_table():
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(50):
        acc.step(noise_multiplier=1.2, sample_rate=0.01)
    ours = fedcdp_epsilon(1.2 * 2, num_layers=4, sample_rate=0.01, rounds=50, delta=1e-5)  # z = σ/√L
    assert abs(ours - acc.get_epsilon(1e-5)) < 1e-6
    m = _lenet()
    x, y = _batch(2)
    p, b = split_state(m)
    rows = snr_epsilon_table(m, p, b, x, y, clip=4.0)
    assert len(rows) == 5 and "| SNR (dB) |" in format_snr_epsilon_table(rows)


def test_fedcdp_by_epsilon_matches_opacus():
    from opacus.accountants.utils import get_noise_multiplier

    m = _lenet()
    x, y = _batch(4)
    L = len(split_state(m)[0])
    for eps, proto in ((8.0, Protocol(bn_mode="eval")),
                       (1.0, Protocol(kind="fedavg", local_steps=3, lr=0.01, local_batch_size=2, bn_mode="eval"))):
        (d,) = build_defenses([{"name": "fedcdp", "clip": 1.0, "epsilon": eps, "delta": 1e-5, "dataset_size": 200,
                                "rounds": 40}])
        d.apply({}, _ctx(m, x, y, protocol=proto))
        desc = d.describe()
        tau = len(proto.schedule(4))
        q = len(proto.schedule(4)[0]) / 200
        z = get_noise_multiplier(target_epsilon=eps, target_delta=1e-5, sample_rate=q, steps=40 * tau,
                                 accountant="rdp")
        sig = desc["sigma_used"] if tau == 1 else desc["sigma_used"][0]
        assert abs(sig - z * math.sqrt(L)) < 1e-6 and abs(desc["noise_multiplier"] - z) < 1e-6
        assert desc["sample_rate"] == q and desc["steps"] == 40 * tau and desc["set_by"] == "epsilon"
        # the accountant's ε for that σ meets the target (Opacus stops within its 0.01 tolerance)
        assert eps - 0.011 <= desc["epsilon"] <= eps and desc["epsilon_target"] == eps
        assert math.isfinite(desc["snr_db_realised"])
        json.dumps(desc)
    # a smaller ε needs more noise; an unreachable target is a one-line error
    assert sigma_for_epsilon(1.0, 1e-5, 0.02, 100, 4) > sigma_for_epsilon(8.0, 1e-5, 0.02, 100, 4)
    with pytest.raises(UserError, match="fedcdp.epsilon"):
        sigma_for_epsilon(1e-9, 1e-5, 1.0, 10_000, 4)
    for bad in ({"epsilon": 8.0, "sigma": 1.0}, {"epsilon": -1.0}, {}):
        with pytest.raises(UserError, match=r"\.(epsilon|sigma):"):
            build_defenses([{"name": "fedcdp", **bad}])


def test_fedcdp_realised_snr_inverts_sigma_for_snr():
    m = _lenet()
    x, y = _batch(2)
    p, b = split_state(m)
    m.eval()
    s = clipped_sum(m, p, b, x, y, 0.5)
    for snr in (-20.0, 0.0, 7.0):
        assert abs(realised_snr_db(s, 0.5, sigma_for_snr(s, 0.5, snr)) - snr) < 1e-9


# --- Soteria ----------------------------------------------------------------------------------------

def test_soteria_prunes_stated_fraction():
    m = _lenet()
    x, y = _batch(2)
    ctx = _ctx(m, x, y)
    u = client_update(m, ctx.params, ctx.buffers, x, y, Protocol())
    d, out = _apply({"name": "soteria", "pruning_rate": 0.8}, u, ctx)
    F_ = m.classifier.in_features
    zero_cols = (out["classifier.weight"] == 0).all(0)
    assert int(zero_cols.sum()) == math.floor(0.8 * F_) == d.describe()["pruned"]
    others = [n for n in u if n != "classifier.weight"]
    assert all(torch.equal(out[n], u[n]) for n in others)
    kept = ~zero_cols
    assert torch.equal(out["classifier.weight"][:, kept], u["classifier.weight"][:, kept])


def test_soteria_jacobian_matches_autograd():
    m = _lenet()
    x, _ = _batch(2)
    p, b = split_state(m)
    sens, r = feature_sensitivity(m, p, b, x, chunk_size=64)
    xx = x.clone().requires_grad_()
    feats = torch.flatten(m.body(xx), 1)
    for f in (0, 17, 300):
        (gx,) = torch.autograd.grad(feats[:, f].sum(), xx, retain_graph=True)
        ref = gx.reshape(2, -1).norm(dim=1) / feats[:, f].detach().abs()
        assert torch.allclose(sens[:, f], ref, rtol=1e-4)
    mask = soteria_mask(sens, 0.5)
    pruned = sens.sum(0)[mask == 0]
    assert pruned.max() <= sens.sum(0)[mask == 1].min()


def test_soteria_refuses_model_without_linear_head():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    x, y = _batch(1)
    (d,) = build_defenses([{"name": "soteria"}])
    with pytest.raises(UserError, match=r"^defense soteria\.model: .*nn\.Linear") as e:
        d.apply({n: torch.zeros_like(t) for n, t in m.named_parameters()}, _ctx(m, x, y))
    assert "\n" not in str(e.value)


# --- PRECODE ----------------------------------------------------------------------------------------

def _precode(seed=3):
    m = build_model("precode", 10, 3, 32, base="lenet", bottleneck=16, seed=seed)
    init_model(m, 0)
    return m


def test_precode_trains_and_gradients_flow():
    m = _precode()
    x, y = _batch(4)
    m.vb.noise = "random"
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y) + 1e-3 * kl_loss(m)
        loss.backward()
        if not losses:
            for n, p in m.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, n
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0]
    assert [n for n, _ in m.named_modules()][-1] == "classifier"


def test_precode_forward_model_exact_only_when_seed_known():
    m = _precode()
    x, y = _batch(2)
    spec = {"name": "precode", "num_classes": 10, "in_channels": 3, "resolution": 32,
            "options": {"base": "lenet", "bottleneck": 16, "seed": 3}}
    for known in (True, False):
        obs = capture(Case(m, x, y, defenses=build_defenses([{"name": "precode", "attacker_knows": known}]),
                           model_spec=spec), seed=0)
        am = obs.build_model()
        for backend in ("loop", "vmap"):
            trial = batched_update(am, obs.parameters, obs.buffers, x[None], y[None], obs.protocol, backend)
            err = max(float((trial[n][0].detach() - obs.update[n]).abs().max()) for n in obs.update)
            assert (err < 1e-6) == known, (known, backend, err)
        assert ("seed" in obs.defenses[0]) == known


# --- aggregation ------------------------------------------------------------------------------------

def test_aggregate_is_mean_of_clients():
    m = _lenet()
    x, y = _batch(2)
    pool_x, pool_y = _batch(20, seed=5)
    ctx = _ctx(m, x, y, pool=(pool_x, pool_y[:20] % 10))
    u = client_update(m, ctx.params, ctx.buffers, x, y, Protocol())
    _, one = _apply({"name": "aggregate", "clients": 1}, u, ctx)
    assert all(torch.equal(one[n], u[n]) for n in u)
    _, agg = _apply({"name": "aggregate", "clients": 3}, u, ctx)
    idx = torch.randint(0, 20, (4,), generator=torch.Generator().manual_seed(0))
    others = [client_update(m, ctx.params, ctx.buffers, pool_x[idx[j * 2:(j + 1) * 2]],
                            (pool_y % 10)[idx[j * 2:(j + 1) * 2]], Protocol()) for j in range(2)]
    for n in u:
        assert torch.allclose(agg[n], (u[n] + others[0][n] + others[1][n]) / 3, atol=1e-7)
    _, rnd = _apply({"name": "aggregate", "clients": 4}, u, _ctx(m, x, y))
    assert not torch.allclose(rnd["classifier.weight"], u["classifier.weight"])


# --- attacker side ----------------------------------------------------------------------------------

def _trial_and_obs(spec, seed=0):
    m = _lenet()
    x, y = _batch(1)
    obs = capture(Case(m, x, y, defenses=build_defenses(spec) if spec else []), seed=seed)
    names = list(obs.parameters)
    xs = torch.stack([x, torch.rand_like(x)])  # restart 0 = the truth, restart 1 = random
    up = batched_update(m, obs.parameters, obs.buffers, xs, y.expand(2, 1), obs.protocol)
    return [up[n].detach() for n in names], [obs.update[n] for n in names], obs


def test_masked_cosine_sees_through_sparsity():
    trial, observed, _ = _trial_and_obs([{"name": "topk", "sparsity": 0.99}])
    masked = DISTANCES["masked_cosine"](trial, observed)
    plain = DISTANCES["cosine"](trial, observed)
    assert masked.shape == (2,) and float(masked[0]) < 1e-5 < float(plain[0])
    assert float(masked[1]) > float(masked[0])
    dense_t, dense_o, _ = _trial_and_obs([])
    assert torch.allclose(DISTANCES["masked_cosine"](dense_t, dense_o), DISTANCES["cosine"](dense_t, dense_o))


def test_tanh_sign_and_dequantized_distances():
    trial, observed, _ = _trial_and_obs([{"name": "sign"}])
    d = DISTANCES["tanh_sign"](trial, observed)
    assert d.shape == (2,) and 0 <= float(d.min()) and float(d.max()) <= 4
    assert float(d[0]) < float(d[1])  # the truth matches the signs better
    for q in ("quantize", "qsgd"):
        trial, observed, _ = _trial_and_obs([{"name": q, "bits": 3}])
        for name in ("l2", "cosine", "masked_cosine"):
            v = DISTANCES[name](trial, observed)
            assert v.shape == (2,) and torch.isfinite(v).all() and float(v[0]) < float(v[1]), (q, name)


def test_estimate_defense_and_auto_distance():
    _, _, obs = _trial_and_obs([{"name": "topk", "sparsity": 0.9, "attacker_knows": False}])
    est = estimate_defense(obs)
    assert abs(est["sparsity"] - 0.9) < 0.01 and not est["sign_like"]
    assert choose_distance(obs) == "masked_cosine"
    _, _, obs = _trial_and_obs([{"name": "sign", "attacker_knows": False}])
    assert estimate_defense(obs)["sign_like"] and choose_distance(obs) == "tanh_sign"
    _, _, obs = _trial_and_obs([{"name": "quantize", "bits": 3, "attacker_knows": False}])
    est = estimate_defense(obs)
    assert est["quantized"] and est["bits_estimate"] == 3
    _, _, obs = _trial_and_obs([{"name": "clip", "max_norm": 1e-3, "scope": "per_layer", "attacker_knows": False}])
    est = estimate_defense(obs)
    assert est["per_layer_clip"] and abs(est["clip_estimate"] - 1e-3) < 1e-8
    _, _, obs = _trial_and_obs([{"name": "noise", "snr_db": 10}])
    assert choose_distance(obs) == "cosine"
    attack = build_attack("invertgrad", distance="auto", iterations=1)
    assert attack.objective(obs).distance == "cosine"


# --- config → capture → Observation, threat model -----------------------------------------------------

def test_config_defense_chain_recorded(tmp_path):
    from gradleak.config import load_config
    from gradleak.audit import build_case

    cfg = load_config(None, [
        "data.name=digits", "data.channels=1", "data.batch_size=2", "model.name=lenet",
        "defense=[{name: topk, sparsity: 0.9}, {name: noise, snr_db: 20, attacker_knows: false}, {name: qsgd, bits: 4}]",
    ])
    case = build_case(cfg)
    assert [type(d).__name__ for d in case.defenses] == ["TopK", "GaussianNoise", "QSGD"]
    obs = capture(case, seed=cfg.seed)
    assert obs.defenses == [d.describe() for d in case.defenses]
    assert obs.defenses[0] == {"name": "topk", "sparsity": 0.9, "scope": "per_layer", "attacker_knows": True}
    assert obs.defenses[1] == {"name": "noise", "attacker_knows": False}  # nothing else is told
    assert obs.defenses[2]["levels"] == 7
    obs.save(tmp_path / "obs")
    assert Observation.load(tmp_path / "obs").defenses == obs.defenses


@pytest.mark.parametrize(("spec", "key"), [
    ({"name": "topk", "sparsity": 1.0}, "sparsity"),
    ({"name": "topk", "sparsity": -0.1}, "sparsity"),
    ({"name": "gradient_sparsity", "sparsity": 1.5}, "sparsity"),
    ({"name": "quantize", "bits": 0}, "bits"),
    ({"name": "qsgd", "bits": -2}, "bits"),
    ({"name": "noise", "sigma": -1.0}, "sigma"),
    ({"name": "noise"}, "sigma"),
    ({"name": "fedcdp", "clip": 0, "sigma": 1.0}, "clip"),
    ({"name": "fedcdp", "sigma": -1.0}, "sigma"),
    ({"name": "clip", "max_norm": -1}, "max_norm"),
    ({"name": "soteria", "pruning_rate": 1.0}, "pruning_rate"),
    ({"name": "aggregate", "clients": 0}, "clients"),
    ({"name": "topk", "k": 3}, "k"),
    ({"name": "blur"}, "name"),
])
def test_bad_parameters_refused_one_line(spec, key):
    with pytest.raises(UserError) as e:
        build_defenses([spec])
    msg = str(e.value)
    assert "\n" not in msg and f".{key}:" in msg.split(";")[0]


def test_recomputing_defense_must_be_first():
    with pytest.raises(UserError, match=r"defense\[1\]\.name"):
        build_defenses([{"name": "topk"}, {"name": "fedcdp", "sigma": 1.0}])


def test_every_defense_has_docstring_and_attacker_knows():
    for name, cls in DEFENSES.items():
        assert cls.__doc__ and cls.name == name
        d = build_defenses([{"name": name, **({"sigma": 1.0} if name in ("noise", "fedcdp") else {}),
                             "attacker_knows": False}])[0]
        assert d.describe() == {"name": name, "attacker_knows": False}
