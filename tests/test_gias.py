"""GIAS attacks: per-image weight copies (GI-w), the BN-statistics prior, the control, every preset end to end."""
import pytest
import torch
from torch.func import functional_call

from gradleak.attacks.bn_prior import BNRegularizer, batch_bn_statistics, bn_distance
from gradleak.attacks.engine import SearchContext, search
from gradleak.attacks.generative import (GeneratorWeights, Latent, RandomControl, SnapshotSeries,
                                         control_observation)
from gradleak.attacks.presets import ATTACKS, build_attack
from gradleak.case import Case, capture
from gradleak.errors import UserError
from gradleak.fl.protocol import Protocol
from gradleak.models import build_model, init_model
from gradleak.priors import DCGANGenerator, Prior
from gradleak.priors.checkpoint import save_prior

SPEC = {"name": "convnet", "num_classes": 10, "in_channels": 1, "resolution": 16,
        "options": {"width": 2, "batchnorm": True}}


def _victim():
    model = build_model("convnet", 10, 1, 16, width=2, batchnorm=True)
    return init_model(model, 0)


def _obs(share_bn=True, batch=2):
    model = _victim()
    x, y = torch.rand(batch, 1, 16, 16), torch.arange(batch)
    obs = capture(Case(model, x, y, Protocol(kind="fedsgd", share_bn_stats=share_bn), give_labels=True,
                       model_spec=SPEC))
    return obs, model, x


def _prior(conditional=False):
    torch.manual_seed(0)
    G = DCGANGenerator(latent_dim=6, width=4, channels=1, resolution=32, num_classes=10 if conditional else 0)
    return Prior(G.eval(), (6,), num_classes=G.num_classes, name="tiny")


def test_gi_w_copies_are_independent_and_equal_a_loop():
    prior = _prior()
    param = GeneratorWeights(prior)
    R, B = 2, 3
    variables = param.start(R, B, (1, 16, 16), None, torch.Generator().manual_seed(0))
    # perturb each copy differently so copies are distinguishable
    with torch.no_grad():
        for v in variables:
            v.add_(0.01 * torch.randn_like(v))
    imgs = param.images()
    assert imgs.shape == (R, B, 1, 16, 16)
    # looped reference: one functional_call per copy
    params = dict(prior.net.named_parameters())
    for k in range(R * B):
        w = {n: param.w[n][k] if n in param.w else p for n, p in params.items()}
        ref = functional_call(prior.net, {**w, **dict(prior.net.named_buffers())}, (param.z[k:k + 1],))
        torch.testing.assert_close(param.raw()[k], ref[0], rtol=1e-5, atol=1e-6)
    # gradient of image i reaches only copy i
    flat = imgs.reshape(R * B, -1)
    for i in range(R * B):
        grads = torch.autograd.grad(flat[i].sum(), variables, retain_graph=True, allow_unused=True)
        for g in grads:
            others = torch.cat([g[:i].reshape(-1), g[i + 1:].reshape(-1)])
            assert others.abs().max() == 0
        assert any(g[i].abs().sum() > 0 for g in grads)


def test_gias_w_stage_starts_from_found_latents():
    prior = _prior()
    lat = Latent(prior)
    lat.start(1, 2, (1, 16, 16), None, torch.Generator().manual_seed(0))
    w = GeneratorWeights(prior, lat)
    w.start(1, 2, (1, 16, 16), None, torch.Generator().manual_seed(1))
    torch.testing.assert_close(w.images(), lat.images())  # same z, weights start at the prior's


def test_bn_regularizer_zero_at_true_images():
    obs, model, x = _obs(share_bn=True)
    ctx = SearchContext(model, obs, list(obs.parameters), [obs.update[n] for n in obs.parameters])
    reg = BNRegularizer("exact")
    val = reg(torch.stack([x, torch.rand_like(x)]), ctx)
    assert val.shape == (2,) and float(val[0]) < 1e-5 and float(val[1]) > 1e-3
    stats = batch_bn_statistics(model, obs.parameters, obs.buffers, x, train=True)
    assert set(stats) == set(obs.bn_stats) and float(bn_distance(stats, obs.bn_stats)) < 1e-5


def test_bn_regularizer_sources():
    obs, model, _ = _obs(share_bn=False)
    ctx = SearchContext(model, obs, list(obs.parameters), [obs.update[n] for n in obs.parameters])
    with pytest.raises(UserError, match="share_bn_stats"):
        BNRegularizer("exact")(torch.rand(1, 2, 1, 16, 16), ctx)
    pub = BNRegularizer("public", data="digits", size=8)
    assert pub(torch.rand(1, 2, 1, 16, 16), ctx).shape == (1,)
    assert set(pub.target) == {f"features.bn{i}.{s}" for i in range(8) for s in ("mean", "var")}
    run = BNRegularizer("running")
    assert run(torch.rand(1, 2, 1, 16, 16), ctx).shape == (1,)
    with pytest.raises(UserError, match="bn_data"):
        BNRegularizer("public")


def test_control_observation():
    obs, _, _ = _obs()
    ctl = control_observation(obs, seed=0)
    for n, t in obs.update.items():
        c = ctl.update[n]
        assert c.shape == t.shape and torch.allclose(c.norm(), t.norm(), rtol=1e-4)
        assert ((c != 0) == (t != 0)).all() or t.numel() == 1
        assert not torch.allclose(c, t)
    assert torch.equal(ctl.labels, obs.labels) and ctl.bn_stats is None
    torch.testing.assert_close(control_observation(obs, seed=0).update, ctl.update)  # seeded


FAST = {
    "gi-z": dict(iterations=3, z_penalty=0.01),
    "gi-w": dict(iterations=3),
    "gi-zw": dict(iterations_z=2, iterations_w=2),
    "gias": dict(iterations_z=2, iterations_w=2),
    "gi-zx": dict(iterations_z=2, iterations_x=2),
    "gi-w-untrained": dict(iterations=3),
    "gi-x": dict(iterations=3),
}


@pytest.mark.parametrize("name", sorted(FAST))
def test_each_preset_runs_end_to_end(name, tmp_path):
    obs, model, x = _obs(batch=2)
    G = _prior().net
    save_prior(tmp_path / "p", G, "dcgan", G.config(), {"dataset": "digits"})
    opts = dict(FAST[name], restarts=2, snapshot_every=1)
    if name != "gi-x":
        opts["prior"] = str(tmp_path / "p.safetensors")
    for extra in ({}, {"bn": 0.1, "bn_source": "exact"}, {"bn": 0.1, "control": True, "bn_data": "digits"}):
        attack = build_attack(name, **opts, **extra)
        rec = attack(obs, labels=obs.labels, model=model, progress=False)
        assert rec.images.shape == x.shape and rec.all_images.shape == (2, *x.shape)
        assert torch.isfinite(rec.losses).all() and 0 <= rec.images.min() and rec.images.max() <= 1
        assert (rec.get(RandomControl) is not None) == bool(extra.get("control"))
        assert rec.describe().get("control", False) == bool(extra.get("control"))
        snaps = rec.get(SnapshotSeries)
        assert [s[0] for s in snaps.items] == list(range(rec.iterations + 1))
        assert [it for it, _ in snaps.frames()] == [it for it, _ in snaps.items]
        assert snaps.best_restart == rec.best_restart
        assert torch.equal(snaps.frames()[-1][1], snaps.items[-1][1][rec.best_restart])
        stages = {r["stage"] for r in rec.trace}
        assert stages == {"gi-z": {"z"}, "gi-w": {"w"}, "gi-zw": {"z", "w"}, "gias": {"z", "w"},
                          "gi-zx": {"z", "x"}, "gi-w-untrained": {"w"}, "gi-x": {"x"}}[name]
    # the same preset through the engine directly (stages + objective)
    attack = build_attack(name, **FAST[name], **({} if name == "gi-x" else {"prior": str(tmp_path / "p.safetensors")}))
    rec = search(obs, attack.stages(), attack.objective(obs), obs.labels, restarts=1, model=model, progress=False)
    assert rec.images.shape == x.shape


def test_registry_and_option_errors(tmp_path):
    for name in ("gi-z", "gi-w", "gi-zw", "gias", "gi-zx", "gi-w-untrained", "gi-x"):
        assert name in ATTACKS
    assert ATTACKS["gias"] is ATTACKS["gi-zw"]
    with pytest.raises(UserError, match="prior"):
        build_attack("gi-z", prior="no-such-prior")
    with pytest.raises(UserError, match="bn_source"):
        build_attack("gi-x", bn=1.0, bn_source="magic")
    with pytest.raises(UserError, match="distance"):
        build_attack("gi-x", distance="nope")


def test_conditional_prior_gets_the_labels():
    """Every generator call of a conditional prior receives the labels the attack was given (image j gets
    label j, in every restart), and no labels at all is refused."""
    obs, model, _ = _obs(batch=2)
    prior = _prior(conditional=True)
    seen = []
    prior.net.register_forward_pre_hook(lambda module, args: seen.append(args[1].detach().clone()))
    attack = build_attack("gi-z", prior=prior, iterations=2, restarts=1)
    for given in (obs.labels, obs.labels.flip(0)):
        seen.clear()
        rec = attack(obs, labels=given, model=model, progress=False)
        assert rec.images.shape == (2, 1, 16, 16)
        assert seen and all(torch.equal(t.reshape(-1, 2), given.expand(t.numel() // 2, 2)) for t in seen), seen
    with pytest.raises(UserError, match="conditional"):
        attack(obs, labels=None, model=model, progress=False)


def test_untrained_prior_is_seeded_and_differs():
    prior = _prior()
    a = prior.untrained(torch.Generator().manual_seed(0))
    b = prior.untrained(torch.Generator().manual_seed(0))
    for (n, p), q in zip(a.net.named_parameters(), b.net.parameters()):
        assert torch.equal(p, q), n
    assert not torch.equal(next(a.net.parameters()), next(prior.net.parameters()))


def test_relative_lr_w_steps_each_tensor_in_proportion_to_its_scale():
    """relative=True optimises w / RMS(w): the same images at the start, and one Adam step of size η moves
    every tensor by η·RMS (equalised learning rate) instead of η."""
    prior = _prior()
    with torch.no_grad():
        for i, p in enumerate(prior.net.parameters()):
            p.mul_(10.0 ** (i % 3 - 1))  # tensors at different scales
    gen = torch.Generator().manual_seed(0)
    absolute, relative = GeneratorWeights(prior, relative=False), GeneratorWeights(prior, relative=True)
    va, vr = absolute.start(1, 2, (1, 16, 16), None, gen), relative.start(1, 2, (1, 16, 16), None, gen)
    relative.z = absolute.z.clone()
    torch.testing.assert_close(relative.images(), absolute.images())
    lr = 1e-3
    for param, variables in ((absolute, va), (relative, vr)):
        before = {k: t.detach().clone() for k, t in param.w.items()}
        opt = torch.optim.Adam(variables, lr=lr)
        (1e6 * param.images().square().sum()).backward()  # gradients ≫ Adam's eps
        opt.step()
        for k, t in param.w.items():
            step = (t.detach() - before[k]).abs().max()
            rms = before[k][0].pow(2).mean().sqrt()
            expected = lr * (rms if param.relative and rms > 0 else 1.0)
            if step > 0:  # a parameter the loss reaches moves by ≈ one Adam step
                assert abs(float(step) - float(expected)) < 0.05 * float(expected), k
