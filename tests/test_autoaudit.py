"""``gradleak audit`` (issue 27): the portfolio chosen from the observation, the budget, successive halving,
the positive control and its verdict rule, Ctrl-C, bad input. Tiny LeNet / MLP / ConvNet cases on the
built-in digits (1×32×32), seconds each."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gradleak.attacks.budget import AuditBudget, Budget, budgeted, halving_points, parse_budget, relative_cost
from gradleak.audit import build_case
from gradleak.case import capture
from gradleak.config import load_config
from gradleak.errors import UserError
from gradleak.portfolio import choose, situation_of

BASE = ["data.channels=1", "data.batch_size=2", "metrics.tagger=none", "attack.name=auto"]


@pytest.fixture(autouse=True)
def _default_sigint_handler():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _situation(*overrides):
    cfg = load_config(None, BASE + list(overrides))
    case = build_case(cfg)
    obs = capture(case)
    return situation_of(obs, obs.build_model(), None), case


def _plans(*overrides) -> dict:
    s, _ = _situation(*overrides)
    return {p.attack.name: p for p in choose(s)}


# --- the portfolio is chosen from the observation ------------------------------------------------------------

def test_plain_upload_gets_gradient_matching_and_the_fitting_prior_but_no_obfuscation_attack():
    plans = _plans()
    assert "invertgrad" in plans and plans["invertgrad"].attack.distance == "auto"
    assert "gi-zw" in plans  # the shipped digits prior produces 1×32×32
    assert "rog" not in plans and "gi-x" not in plans and "rgap" not in plans
    assert plans["invertgrad"].attack.restarts == 4


def test_shared_bn_statistics_add_the_bn_prior():
    plans = _plans("model.name=convnet", "model.options={width: 4}", "client.share_bn_stats=true")
    assert plans["gi-x"].attack.bn > 0 and plans["gi-x"].attack.bn_source == "exact"


@pytest.mark.parametrize("defense,view,distance", [
    ("{name: quantize, bits: 3}", "quantized", None),
    ("{name: topk, sparsity: 0.9}", "support", "masked_cosine"),
    ("{name: sign}", "sign", "tanh_sign"),
    ("{name: noise, sigma: 0.01}", "noise", "cosine"),
])
def test_obfuscated_uploads_add_rog_with_the_distance_the_defense_view_calls_for(defense, view, distance):
    from gradleak.defenses.estimate import choose_distance

    s, _ = _situation(f"defense=[{defense}]")
    assert getattr(s.view, view) and s.view.obfuscated
    names = [p.attack.name for p in choose(s)]
    assert "rog" in names and "invertgrad" in names
    if distance is not None:
        assert choose_distance(s.obs) == distance
    rog = next(p.attack for p in choose(s) if p.attack.name == "rog")
    want = {"sign": "tanh_sign", "support": "masked_l2"}.get(view, "l2")
    assert rog.resolved_distance(s.obs) == want


def test_a_defense_told_by_name_only_still_states_its_view():
    s, _ = _situation("defense=[{name: topk, sparsity: 0.9, attacker_knows: false}]")
    assert s.view.support
    s, _ = _situation("defense=[{name: aggregate, clients: 2, attacker_knows: true}]")
    assert s.view.unmodelled


def test_determined_rank_puts_the_closed_form_first():
    plans = list(_plans("data.batch_size=1"))
    assert plans[0] == "rgap"  # LeNet at batch 1: R-GAP's rank analysis says every layer is determined
    plans = list(_plans("data.batch_size=1", "model.name=mlp"))
    assert plans[0] == "fc-analytic"
    assert "fc-analytic-batch" in _plans("model.name=mlp")  # a batch: the row-isolating variant
    assert "rgap" not in _plans("data.batch_size=1", "defense=[{name: sign}]")  # closed form needs the exact gradient


# --- budget ----------------------------------------------------------------------------------------------------

def test_parse_budget():
    assert parse_budget("90s").seconds == 90 and parse_budget("10m").seconds == 600
    assert parse_budget("120").seconds == 120 and parse_budget("1.5h").seconds == 5400
    assert parse_budget("500it") == AuditBudget(iterations=500, text="500it")
    for bad in ("0", "0s", "-5s", "abc", "10x", "1.5it", ""):
        with pytest.raises(UserError, match="--budget"):
            parse_budget(bad)


def test_halving_schedule_costs_at_most_twice_one_restart():
    assert halving_points(4) == [1 / 8, 1 / 4]
    assert relative_cost(4, True) == pytest.approx(1.5)
    assert relative_cost(16, True) <= 2.0 and relative_cost(1, True) == 1.0


def test_audit_respects_the_wall_clock_budget_within_ten_percent(tmp_path):
    from gradleak.autoaudit import audit_auto
    from gradleak.report.writer import write_run

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # one-off imports, as the CLI's setup does
    cfg = load_config(None, BASE + ["defense=[{name: noise, sigma: 1.0}]"])  # the control runs too
    budget = 12.0
    t0 = time.perf_counter()
    result = audit_auto(cfg, f"{budget}s")
    write_run(result, tmp_path / "run")
    took = time.perf_counter() - t0
    assert took <= 1.1 * budget, took
    assert took >= 0.4 * budget, took  # the budget is used, not skipped
    a = result.audit
    assert a.control is not None and a.control.skipped is None and a.control.attacks
    assert all(r.iterations > 0 for r in a.attacks if r.stopped != "skipped")


# --- successive halving -------------------------------------------------------------------------------------------

def test_successive_halving_keeps_the_restart_a_full_run_picks_on_a_clear_case():
    from gradleak.attacks.engine import Objective, Stage, search
    from gradleak.attacks.parametrizations import Pixels

    _, case = _situation()
    case.give_labels = True
    obs = capture(case)

    class OneGoodStart(Pixels):  # restart 2 starts near the truth: the clear winner
        def start(self, restarts, batch, shape, prev, gen):
            x = super().start(restarts, batch, shape, prev, gen)
            if restarts == 4:
                with torch.no_grad():
                    self.x[2] = 0.9 * case.images + 0.05
            return x

    def run(halving: bool):
        with budgeted(Budget(iterations=64, halving=halving, plateau=None)):
            return search(obs, [Stage("x", OneGoodStart(box=True), 64, 0.025, signed=True)],
                          Objective("cosine", tv=1e-4), obs.labels, restarts=4, seed=0, progress=False)

    full, pruned = run(False), run(True)
    assert full.best_restart == 2 and full.halving == []
    assert [h["iteration"] for h in pruned.halving] == [8, 16]
    assert pruned.halving[-1]["kept"] == [2] and pruned.all_images.shape[0] == 1
    assert pruned.iterations == 64
    # the kept restart's final loss is the one the full run reached with it (same iterates: Adam is per element)
    assert float(pruned.losses[0]) == pytest.approx(float(full.losses[2]), rel=1e-4)


def test_a_search_cut_short_by_time_keeps_its_first_lr_to_five_eighths_then_decays(monkeypatch):
    """A multistep stage that a time budget cuts far below its planned iterations keeps lr to 5/8 of its fitted
    length (budget.TRUNCATED); one that fits keeps the planned 3/8, 5/8, 7/8 (the lr Adam was given is recorded)."""
    from gradleak.attacks.engine import Objective, Stage, search
    from gradleak.attacks.parametrizations import Pixels

    _, case = _situation()
    case.give_labels = True
    obs = capture(case)
    seen: list[float] = []
    step = torch.optim.Adam.step

    def recording(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)

    def lrs(planned: int, **budget) -> list[float]:
        seen.clear()
        with budgeted(Budget(plateau=None, halving=False, **budget)):
            search(obs, [Stage("x", Pixels(box=True), planned, 0.1, signed=True)], Objective("cosine", tv=1e-4),
                   obs.labels, restarts=1, seed=0, progress=False)
        return list(seen)

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # one-off imports, as the CLI's setup does
    cut = lrs(10 ** 6, seconds=3.0)
    n = len(cut)
    assert n >= 30, n
    first_decay = next(i for i, v in enumerate(cut) if v < 0.1)
    assert 0.45 * n <= first_decay <= 0.8 * n, (first_decay, n)  # 5/8 of the fitted length (the fit is ±)
    assert min(cut) <= 1e-3 + 1e-9, cut[-5:]  # the decays come before the time ends (the fit is conservative)
    fits = lrs(64, iterations=64)  # an iteration budget is never "cut short": the planned 3/8 schedule
    assert len(fits) == 64 and next(i for i, v in enumerate(fits) if v < 0.1) == 24


def test_when_time_cuts_even_one_restart_short_the_best_goes_on_alone_without_plateau_jumps():
    """Depth before breadth, and no plateau jumps in a stage cut short (budget module): with the time far below
    the planned schedule, 4 restarts become 1 after the first timing, and its schedule positions run without
    gaps (a jump would skip to the next milestone). With time to spare the planned halvings happen instead."""
    from gradleak.attacks.engine import Objective, Stage, search
    from gradleak.attacks.parametrizations import Pixels

    _, case = _situation()
    case.give_labels = True
    obs = capture(case)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # one-off imports, as the CLI's setup does

    def run(planned: int, seconds: float):
        with budgeted(Budget(seconds=seconds, halving=True)):  # the default plateau rule is on
            return search(obs, [Stage("x", Pixels(box=True), planned, 0.025, signed=True)],
                          Objective("cosine", tv=1e-4), obs.labels, restarts=4, seed=0, progress=False)

    cut = run(10 ** 6, 3.0)
    assert len(cut.halving) == 1 and "cuts even one restart short" in cut.halving[0]["why"]
    assert cut.halving[0]["iteration"] <= 10 and cut.all_images.shape[0] == 1
    its = [t["iteration"] for t in cut.trace if t["restart"] == cut.halving[0]["kept"][0]]
    assert len(its) > 30 and its == list(range(its[0], its[0] + len(its)))  # no jump ahead
    fits = run(64, 30.0)
    assert [h["iteration"] for h in fits.halving] == [8, 16] and all("why" not in h for h in fits.halving)


# --- the control rule ------------------------------------------------------------------------------------------

def test_verdict_rule_never_says_no_leakage_without_a_control_that_worked():
    from gradleak.autoaudit import verdict_of

    assert verdict_of("recognisable", None, False, None) == "leaks"
    assert verdict_of("partial", None, False, None) == "partial"
    assert verdict_of("none", "recognisable", False, None) == "no leakage found"
    for control in ("partial", "none", None):
        assert verdict_of("none", control, False, None) == "inconclusive"
    assert verdict_of("none", "recognisable", True, None) == "inconclusive"  # interrupted
    assert verdict_of("none", "recognisable", False, "hidden seed") == "inconclusive"
    assert verdict_of(None, "recognisable", False, None) == "inconclusive"  # no attack returned images


def test_a_control_that_fails_prints_inconclusive_not_none(cli, tmp_path):
    cfg = tmp_path / "case.yaml"
    cfg.write_text("data: {name: digits, channels: 1, batch_size: 2}\nmetrics: {tagger: none}\n"
                   "defense: [{name: noise, sigma: 1.0}]\n")
    r = cli("audit", cfg, "--budget", "2it", "--out", tmp_path / "run")  # 2 iterations: the control cannot work
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    a = m["audit"]
    assert a["verdict"] == "inconclusive" and a["control"]["level"] != "recognisable"
    assert a["budget_iterations"] == 2 and all(x["iterations"] <= 2 for x in a["attacks"])
    assert r.stdout.startswith("Inconclusive") and "no leakage found" not in r.stdout.lower()
    assert "could not reconstruct even the undefended update" in r.stdout
    html = (tmp_path / "run" / "report.html").read_text()
    assert "inconclusive" in html and "No leakage found" not in html and "Verdict: <span class=\"level\">none" not in html


# --- Ctrl-C --------------------------------------------------------------------------------------------------------

def test_ctrl_c_writes_the_best_so_far_labelled_interrupted_and_exits_130(cli, tmp_path, monkeypatch):
    import gradleak.attacks.engine as engine

    orig, count = engine._value_and_grads, [0]

    def hooked(*a, **k):
        count[0] += 1
        if count[0] == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return orig(*a, **k)

    monkeypatch.setattr(engine, "_value_and_grads", hooked)
    cfg = tmp_path / "case.yaml"
    cfg.write_text("data: {name: digits, channels: 1, batch_size: 2}\nmetrics: {tagger: none}\n")
    out = tmp_path / "run"
    r = cli("audit", cfg, "--budget", "10m", "--out", out)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "interrupted"
    for name in ("metrics.json", "report.html", "reconstruction.png", "config.yaml", "observation.json"):
        assert (out / name).is_file(), name
    a = json.loads((out / "metrics.json").read_text())["audit"]
    assert a["interrupted"] is True and a["verdict"] in ("leaks", "partial", "inconclusive")
    assert a["attacks"][0]["stopped"] == "interrupted" and 0 < a["attacks"][0]["iterations"] < 10
    assert all(x["stopped"] == "skipped" for x in a["attacks"][1:])
    assert a["control"]["skipped"] and "interrupted" in a["sentence"]
    assert "interrupted" in (out / "report.html").read_text()


# --- bad input ------------------------------------------------------------------------------------------------------

def _refused(r, key: str, out: Path) -> None:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and key.lower() in lines[0].lower(), r.stderr
    assert not out.exists()


@pytest.mark.parametrize("budget", ["0", "0s", "soon", "-1m"])
def test_bad_budget_is_refused(cli, tmp_path, budget):
    cfg = tmp_path / "case.yaml"
    cfg.write_text("data: {name: digits, channels: 1, batch_size: 2}\n")
    _refused(cli("audit", cfg, "--budget", budget, "--out", tmp_path / "run"), "--budget", tmp_path / "run")


def test_prior_of_the_wrong_shape_is_refused(cli, tmp_path):
    cfg = tmp_path / "case.yaml"
    cfg.write_text("data: {name: digits, channels: 1, batch_size: 2, resolution: 16}\nmetrics: {tagger: none}\n")
    _refused(cli("audit", cfg, "--budget", "5s", "--prior", "digits", "--out", tmp_path / "run"), "--prior",
             tmp_path / "run")


def test_observation_with_nothing_attackable_is_refused(cli, tmp_path):
    _, case = _situation()
    obs = capture(case)
    obs.update = {k: torch.zeros_like(v) for k, v in obs.update.items()}
    obs.save(tmp_path / "obs" / "observation")
    save_file({"images": case.images.contiguous()}, str(tmp_path / "truth.safetensors"))
    _refused(cli("audit", tmp_path / "obs", "--truth", tmp_path / "truth.safetensors", "--budget", "5s",
                 "--out", tmp_path / "run"), "observation", tmp_path / "run")


# --- a captured observation, and sweeps ----------------------------------------------------------------------------

def test_audit_of_a_captured_observation_builds_its_control_from_the_observation(cli, tmp_path):
    _, case = _situation("defense=[{name: noise, sigma: 1.0}]")
    obs = capture(case)  # labels not given: recovered first
    obs.save(tmp_path / "obs" / "observation")
    save_file({"images": case.images.contiguous()}, str(tmp_path / "truth.safetensors"))
    out = tmp_path / "run"
    r = cli("audit", tmp_path / "obs", "--truth", tmp_path / "truth.safetensors", "--public", "digits:public",
            "--budget", "3it", "--out", out)
    assert r.returncode == 0, r.stderr
    a = json.loads((out / "metrics.json").read_text())["audit"]
    assert a["label_mode"] == "recover" and a["budget_iterations"] == 3
    assert [x["name"] for x in a["attacks"]][:1] == ["invertgrad"] and "rog" in [x["name"] for x in a["attacks"]]
    assert a["control"]["built"].startswith("the observation's model") and a["control"]["batch"] == 2
    assert a["verdict"] in ("leaks", "partial", "inconclusive")  # 3 iterations: never "no leakage found" unchecked
    assert a["verdict"] != "no leakage found" or a["control"]["level"] == "recognisable"
    assert len(a["winners"]) == 2 and (out / "attacks.png").is_file() and (out / "worst_pair.png").is_file()
    r = cli("audit", tmp_path / "obs", "--budget", "3it", "--out", tmp_path / "run2")
    _refused(r, "--truth", tmp_path / "run2")


def test_sweeps_accept_attack_auto_and_check_its_budget(tmp_path):
    from gradleak.experiments.sweep import load_sweep

    base = "base: {data: {name: digits, channels: 1, batch_size: 1}, attack: {name: auto, options: {budget: %s}}}\n"
    ok = tmp_path / "ok.yaml"
    ok.write_text(base % "5s" + "axes: {seed: [0, 1]}\n")
    assert len(load_sweep(ok).runs()) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(base % "never" + "axes: {seed: [0, 1]}\n")
    with pytest.raises(UserError, match="attack.options.budget"):
        load_sweep(bad)


def test_gradleak_run_with_attack_auto_runs_the_audit(cli, tmp_path):
    cfg = tmp_path / "case.yaml"
    cfg.write_text("data: {name: digits, channels: 1, batch_size: 1}\nmetrics: {tagger: none}\n"
                   "attack: {name: auto, options: {budget: 2it}}\n")
    r = cli("run", cfg, "--out", tmp_path / "run", "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["attack"] == "auto" and m["audit"]["budget_iterations"] == 2
    assert m["audit"]["attacks"][0]["name"] == "rgap"  # LeNet at batch 1: the closed form first
    assert m["audit"]["sentence"].split(":")[0] in ("Leaks", "Partial leakage", "Inconclusive", "No leakage found")
