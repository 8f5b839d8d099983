"""GIML (Algorithm 2): task set I/O, the update rule, resume equivalence, the prior it writes; multi-gradient
inversion (appendix D): vectorised cost = per-step loop, zero at the true data; one-line errors."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from gradleak.attacks.objectives import cosine_distance
from gradleak.attacks.presets import build_attack
from gradleak.errors import UserError
from gradleak.fl.client import client_update
from gradleak.giml import (GIMLConfig, MultiGradientInversion, TaskSet, TaskSetConfig, giml_step, initial_prior,
                           make_task_set, multi_gradient_cost, observe_sequence, train_giml)
from gradleak.giml.meta import get_weights, set_weights, task_cost
from gradleak.models import build_model, init_model

TINY_GEN = dict(latent_dim=8, width=4)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    cfg = TaskSetConfig(clients=3, rounds=2, batch=2, model_options={"width": 4, "batchnorm": True}, seed=1)
    return make_task_set(cfg, out, progress=False)


def _cfg(**kw):
    base = dict(steps=4, tasks_per_step=2, tau=2, latent_iterations=3, checkpoint_every=2, samples=3, **TINY_GEN)
    return GIMLConfig(**{**base, **kw})


def _step(tasks, **kw):
    cfg = _cfg(**kw)
    obs = [tasks[0], tasks[4]]
    model = obs[0].build_model()
    prior = initial_prior(cfg, tuple(obs[0].image_shape))
    w = get_weights(prior)
    new_w, stats = giml_step(prior, w, obs, model, cfg, torch.Generator().manual_seed(0))
    return prior, w, new_w, stats, obs, model, cfg


def test_task_set_round_trip_and_moving_global_model(tasks, tmp_path):
    assert len(tasks) == 6
    again = TaskSet.load(tasks.root)
    assert [e["round"] for e in again.entries] == [0, 0, 0, 1, 1, 1]
    a, b = tasks[0], again[0]
    assert all(torch.equal(a.update[k], b.update[k]) and torch.equal(a.parameters[k], b.parameters[k])
               for k in a.parameters)
    assert torch.equal(a.labels, b.labels) and a.num_images == 2
    same_round = all(torch.equal(tasks[0].parameters[k], tasks[2].parameters[k]) for k in a.parameters)
    moved = any(not torch.equal(tasks[0].parameters[k], tasks[3].parameters[k]) for k in a.parameters)
    assert same_round and moved  # θ is the round's global model, and FedAvg moves it between rounds
    truth = json.loads((tasks.root / "truth.json").read_text())
    assert len(truth["client_indices"]) == 3
    # a plain directory of observations (captured elsewhere) is a task set too
    plain = tmp_path / "plain"
    plain.mkdir()
    for i in (0, 3):
        tasks[i].save(plain / f"upload{i}")
    loaded = TaskSet.load(plain)
    assert len(loaded) == 2 and torch.equal(loaded[1].update["classifier.weight"], tasks[3].update["classifier.weight"])


def test_beta_one_takes_w_prime_beta_zero_keeps_w(tasks):
    prior, w, new_w, stats, *_ = _step(tasks, beta=1.0)
    w_prime = get_weights(prior)  # the module holds w' after the τ meta steps
    assert all(torch.equal(new_w[k], w_prime[k]) for k in w)
    assert any(not torch.equal(new_w[k], w[k]) for k in w)
    prior, w, new_w, *_ = _step(tasks, beta=0.0)
    assert all(torch.equal(new_w[k], w[k]) for k in w)
    prior, w, new_w, *_ = _step(tasks, beta=0.25)
    w_prime = get_weights(prior)
    assert all(torch.allclose(new_w[k], 0.75 * w[k] + 0.25 * w_prime[k]) for k in w)


def test_meta_step_is_gradient_descent_on_the_task_cost(tasks):
    prior, w, new_w, stats, obs, model, cfg = _step(tasks, beta=1.0, tau=1, alpha=0.05)
    set_weights(prior, w)
    names = list(w)
    params = dict(prior.net.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    total = sum(task_cost(prior, o, z, o.labels, model, cfg) for o, z in zip(obs, stats["z"]))
    grads = torch.autograd.grad(total, [params[n] for n in names])
    for n, g in zip(names, grads):
        params[n].requires_grad_(False)
        assert torch.allclose(new_w[n], w[n] - 0.05 * g, atol=1e-7)
    assert stats["meta"][0] == pytest.approx(float(total.detach()), rel=1e-5)


def test_meta_steps_reduce_the_task_cost(tasks):
    *_, stats, _, _, _ = _step(tasks, tau=4, alpha=0.05, latent_iterations=5)
    assert len(stats["meta"]) == 5
    assert stats["meta"][-1] < stats["meta"][0]


def test_resume_after_interrupt_equals_uninterrupted_run(tasks, tmp_path):
    cfg = _cfg(steps=4, checkpoint_every=2)
    full = train_giml(cfg, tasks, tmp_path / "full", progress=False)

    def interrupt(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_giml(cfg, tasks, tmp_path / "cut", progress=False, on_step=interrupt)
    meta = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())
    assert meta["step"] == 3  # the completed step 3 was saved although K = 2
    resumed = train_giml(cfg, tasks, tmp_path / "cut", progress=False)
    from safetensors.torch import load_file

    a, b = load_file(str(full)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((tmp_path / "full" / "checkpoint.json").read_text())["history"]
    hb = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["history"]
    assert [h["meta"] for h in ha] == [h["meta"] for h in hb]
    for s in (0, 2, 4):
        assert (tmp_path / "full" / "steps" / f"step_{s:06d}.safetensors").is_file()
        assert (tmp_path / "full" / "samples" / f"step_{s:06d}.png").is_file()
    assert (tmp_path / "full" / "samples.png").is_file() and (tmp_path / "full" / "history.csv").is_file()
    # changed settings refuse to resume
    with pytest.raises(UserError, match="different settings"):
        train_giml(_cfg(steps=4, lam=0.5), tasks, tmp_path / "cut", progress=False)


def test_output_is_a_gias_prior(tasks, tmp_path):
    train_giml(_cfg(steps=1, checkpoint_every=1), tasks, tmp_path / "g", progress=False)
    obs = tasks[0]
    for spec in (tmp_path / "g", tmp_path / "g" / "steps" / "step_000001.safetensors"):
        for name, opts in (("gi-z", {"iterations": 2}), ("gi-zw", {"iterations_z": 1, "iterations_w": 1})):
            attack = build_attack(name, prior=str(spec), restarts=1, **opts)
            rec = attack(obs, labels=obs.labels, progress=False)
            assert rec.images.shape == (2, 1, 32, 32)


def _victim():
    return init_model(build_model("lenet", 10, 1, 32, width=4), 0)


@pytest.mark.parametrize("setting", ["reinit", "trained"])
def test_multi_gradient_cost_is_batched_and_zero_at_the_data(setting):
    model = _victim()
    x, y = torch.rand(5, 1, 32, 32), torch.tensor([0, 1, 2, 3, 4])
    seq = observe_sequence(model, x, y, steps=3, subset=2, setting=setting, lr=0.5, seed=3)
    assert seq.subsets.shape == (3, 2)
    p0, p1 = seq.observations[0].parameters, seq.observations[1].parameters
    assert any(not torch.equal(p0[k], p1[k]) for k in p0)  # θ changes between steps in both settings
    trial = torch.stack([x, torch.rand_like(x)])  # restart 0: the true data
    cost = multi_gradient_cost(model, seq, trial, y, "cosine")
    assert cost[0] < 1e-5 < cost[1]
    loop = 0.0  # the same sum, one step at a time through the client's own code
    for o, idx in zip(seq.observations, seq.subsets):
        g = client_update(model, o.parameters, o.buffers, trial[1, idx], y[idx], o.protocol)
        loop += float(cosine_distance([g[k][None] for k in o.parameters], [o.update[k] for k in o.parameters]))
    assert float(cost[1]) == pytest.approx(loop, rel=1e-4)


def test_multi_gradient_inversion_lowers_the_cost():
    model = _victim()
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    seq = observe_sequence(model, x, y, steps=2, subset=2, seed=0)
    rec = MultiGradientInversion(iterations=8, restarts=2)(seq, model=model, progress=False)
    assert rec.images.shape == x.shape and rec.all_images.shape == (2, *x.shape)
    first = min(r["loss"] for r in rec.trace if r["iteration"] == 0)
    assert float(rec.losses.min()) < first


def test_bad_inputs_are_one_line_errors(tasks, tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        TaskSet.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no tasks"):
        TaskSet.load(tmp_path / "empty")
    with pytest.raises(UserError, match="giml.beta"):
        GIMLConfig(beta=1.5).check()
    with pytest.raises(UserError, match="giml.distance"):  # checked before anything is written
        train_giml(GIMLConfig(distance="nope"), tasks, tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()
    with pytest.raises(UserError, match="subset"):
        observe_sequence(_victim(), torch.rand(3, 1, 32, 32), torch.arange(3), steps=2, subset=4)
    with pytest.raises(UserError, match="setting"):
        observe_sequence(_victim(), torch.rand(3, 1, 32, 32), torch.arange(3), steps=2, setting="frozen")
    mixed = tmp_path / "mixed"
    shutil.copytree(tasks.root, mixed)
    meta = json.loads((mixed / "task_000005.json").read_text())
    meta["model"]["options"]["width"] = 5
    (mixed / "task_000005.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="another victim"):
        TaskSet.load(mixed)
    bad = tmp_path / "bad"
    shutil.copytree(tasks.root, bad)
    (bad / "tasks.json").write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "gradleak.cli", "giml", "--tasks", str(bad), "--out",
                        str(tmp_path / "o"), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: giml --tasks: cannot read") and r.stderr.count("\n") == 1
