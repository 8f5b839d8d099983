"""Execution apart from the method (issue 22): the step backends behind one interface, the choice in one policy,
``backend`` an execution setting (config key, --backend, ``using``) and not an attack option, and the search's one
stage loop (a budget that changes nothing gives the planned search's numbers)."""
import json

import pytest
import torch

from gradleak.attacks import build_attack
from gradleak.attacks.budget import Budget, budgeted
from gradleak.attacks.engine import Objective, SearchContext, Stage, matching_problem, search
from gradleak.attacks.parametrizations import Pixels
from gradleak.backends.base import BACKENDS
from gradleak.backends.policy import choose
from gradleak.backends.setting import current, using
from gradleak.case import Case, capture, capture_aggregate
from gradleak.config import validate_config
from gradleak.devices import run_attack
from gradleak.errors import UserError
from gradleak.fl.protocol import Protocol
from gradleak.models import build_model, init_model


def _obs(batch=2):
    opts = {"width": 3}
    model = init_model(build_model("lenet", 10, 1, 8, **opts), 0)
    spec = {"name": "lenet", "num_classes": 10, "in_channels": 1, "resolution": 8, "options": opts}
    x, y = torch.rand(batch, 1, 8, 8), torch.arange(batch)
    return capture(Case(model, x, y, Protocol(), give_labels=True, model_spec=spec)), model


def _problem(obs, model, soft=False):
    names = list(obs.parameters)
    return matching_problem(SearchContext(model, obs, names, [obs.update[n] for n in names]), Objective(), soft)


def test_every_backend_is_registered_and_states_what_it_computes():
    assert {"loop", "vmap", "compiled"} <= set(BACKENDS)
    obs, model = _obs()
    for name in ("loop", "vmap", "compiled"):
        backend = BACKENDS[name]()
        assert backend.unsupported(_problem(obs, model)) == ""
        assert backend.step(_problem(obs, model)).name == name  # "compiled" until a call falls back
    # K clients' aggregate (secure aggregation): the functional steps model one client, only loop computes it
    cases = [Case(model=model, images=torch.rand(1, 1, 8, 8), labels=torch.tensor([c]), model_spec=obs.model_spec)
             for c in (1, 2)]
    agg = capture_aggregate(cases, "sum")
    agg_model = agg.build_model()
    assert BACKENDS["loop"]().unsupported(_problem(agg, agg_model)) == ""
    for name in ("vmap", "compiled"):
        assert "aggregate" in BACKENDS[name]().unsupported(_problem(agg, agg_model))
        step, timing = choose(_problem(agg, agg_model), name, 1, agg.labels, 100)
        assert step.name == "loop" and timing == {}


def test_policy_resolves_auto_in_one_place(monkeypatch):
    from gradleak.backends import policy

    obs, model = _obs()
    p = _problem(obs, model)
    assert choose(p, "auto", 2, obs.labels, 10)[0].name == "loop"  # too short to measure
    step, timing = choose(p, "auto", 2, obs.labels, 10_000, budgeted=True)
    assert step.name == "loop" and timing == {}  # a budget fits the schedule to measured time itself
    monkeypatch.setattr(policy, "AUTO_COMPILE_MIN_SECONDS", float("inf"))
    step, timing = choose(p, "auto", 2, obs.labels, 10_000)
    assert set(timing) == {"loop", "vmap"} and step.name == min(timing, key=timing.get)
    with pytest.raises(UserError, match=r"^backend: got 'jit'; allowed: loop, vmap, compiled, auto$"):
        choose(p, "jit", 2, obs.labels, 10)


def test_backend_is_an_execution_setting_around_any_attack():
    obs, model = _obs()
    attack = build_attack("invertgrad", iterations=3, restarts=2)
    assert current() == "loop"
    assert attack(obs, labels=obs.labels, progress=False).backend == "loop"
    with using("vmap"):
        assert current() == "vmap"
        assert attack(obs, labels=obs.labels, progress=False).backend == "vmap"
    assert current() == "loop"
    rec = run_attack(attack, obs, obs.labels, 0, model, backend="vmap")
    assert rec.backend == "vmap" and current() == "loop"
    ref = run_attack(attack, obs, obs.labels, 0, model)
    torch.testing.assert_close(rec.all_images, ref.all_images, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="^backend: got 'fast'"):
        with using("fast"):
            pass


def test_attack_options_backend_is_moved_to_the_setting_or_refused(capsys):
    from gradleak.backends import setting

    setting._NOTED.clear()
    cfg = validate_config({"attack": {"name": "invertgrad", "options": {"iterations": 3, "backend": "vmap"}}})
    assert cfg.backend == "vmap" and "backend" not in cfg.attack.options
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "attack.options.backend is read as the execution setting backend: vmap" in err
    validate_config({"attack": {"options": {"backend": "vmap"}}})
    assert capsys.readouterr().err == ""  # once per process (a sweep validates one config per cell)
    assert validate_config({"backend": "compiled"}).backend == "compiled"
    assert validate_config({}).backend == "loop"
    with pytest.raises(UserError, match="^attack.options.backend: got 'vmap' while backend is 'loop'"):
        validate_config({"backend": "loop", "attack": {"options": {"backend": "vmap"}}})
    with pytest.raises(UserError, match="backend"):
        validate_config({"backend": "jit"})
    with pytest.raises(UserError) as e:  # Python / `gradleak attack --set backend=...`: one line naming the setting
        build_attack("invertgrad", backend="vmap")
    assert "\n" not in str(e.value) and str(e.value).startswith("attack.options.backend: got 'vmap'; allowed: ")
    assert "--backend" in str(e.value)


def test_cli_backend_option_reaches_the_run_record(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("demo", "--out", out, "--set", "attack.options.iterations=3", "--set", "attack.options.restarts=2",
            "--set", "metrics.tagger=none", "--no-progress", "--backend", "vmap")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["backend"] == "vmap" and m["environment"]["backend"] == "vmap"  # what ran; the setting beside device
    assert "backend: vmap" in (out / "config.yaml").read_text()
    r = cli("demo", "--out", tmp_path / "bad", "--backend", "jit")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: config backend")


def _stages(schedule):
    return [Stage("a", Pixels(init="randn", box=True), 5, 0.05, signed=True, schedule=schedule),
            Stage("b", Pixels(init="previous", box=True), 4, 0.02, schedule=schedule)]


@pytest.mark.parametrize("backend", ["loop", "vmap"])
def test_a_budget_that_changes_nothing_gives_the_planned_search(backend):
    """The search has one stage loop: under an iteration budget equal to the plan, without plateau or halving,
    it runs the planned search's iterations (same images, losses and trace)."""
    obs, _ = _obs()
    ref = search(obs, _stages("constant"), Objective(tv=1e-2), obs.labels, restarts=2, seed=4, backend=backend,
                 progress=False)
    with budgeted(Budget(iterations=9, plateau=None, halving=False)):
        rec = search(obs, _stages("constant"), Objective(tv=1e-2), obs.labels, restarts=2, seed=4, backend=backend,
                     progress=False)
    assert ref.stopped is None and rec.stopped == "completed" and rec.iterations == ref.iterations == 9
    assert torch.equal(rec.all_images, ref.all_images) and torch.equal(rec.losses, ref.losses)
    assert rec.trace == ref.trace and rec.backend == ref.backend == backend
    # the closed-form schedule of a budgeted run equals torch's schedulers to rounding
    ref = search(obs, _stages("multistep"), Objective(tv=1e-2), obs.labels, restarts=2, seed=4, progress=False)
    with budgeted(Budget(iterations=9, plateau=None, halving=False)):
        rec = search(obs, _stages("multistep"), Objective(tv=1e-2), obs.labels, restarts=2, seed=4, progress=False)
    torch.testing.assert_close(rec.all_images, ref.all_images, rtol=1e-5, atol=1e-6)
