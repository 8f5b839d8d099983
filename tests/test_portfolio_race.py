"""The portfolio's budget allocation (issue 27): searches take turns on one CPU (``budget.Turn``), race to a
probe, are ranked by one common truth-free matching distance, and the leader continues from its state with
the time left. Tiny LeNet cases on the built-in digits, seconds each."""
from __future__ import annotations

import itertools
import threading
import time

import pytest
import torch

from gradleak.attacks.base import AuditPlan
from gradleak.attacks.budget import Budget, Turn
from gradleak.attacks.presets import InvertGrad
from gradleak.audit import build_case
from gradleak.case import capture
from gradleak.config import load_config
from gradleak.portfolio import run_portfolio
from gradleak.portfolio.run import RACE_POINT, matching_distance


class _Stuck(InvertGrad):
    """InvertGrad with a step too small to move: it stays at its random start (a clearly worse attack)."""

    name = "stuck"


def _case(batch: int = 2):
    cfg = load_config(None, ["data.channels=1", f"data.batch_size={batch}", "metrics.tagger=none"])
    case = build_case(cfg)
    case.give_labels = True
    obs = capture(case)
    return obs, obs.build_model(), case.images


@pytest.fixture(scope="module", autouse=True)
def _warm():
    """One-off first-search costs (lazy imports, first autograd graphs) outside the timed runs."""
    obs, model, _ = _case()
    run_portfolio(obs, [AuditPlan(InvertGrad(), "warm-up")], obs.labels, model, iterations=2)


def _plans():
    # the worse attack first: the leader must win the race, not the portfolio's order
    return [AuditPlan(_Stuck(lr=1e-9, restarts=2), "a clearly worse search"),
            AuditPlan(InvertGrad(restarts=2), "gradient matching")]


def test_turn_counts_only_the_time_it_holds_the_cpu_and_hands_back_at_the_granted_point():
    ticks = itertools.count()  # a fake clock: every read is one second later
    turn = Turn(clock=lambda: float(next(ticks)))
    budget = Budget(seconds=100.0, turn=turn)
    seen = []

    def search():
        turn.begin()
        for _ in range(40):
            t = budget.now(lambda: torch.zeros(1))
            if t == float("inf"):
                break
            seen.append(t)
        turn.end()

    th = threading.Thread(target=search, daemon=True)
    th.start()
    turn.grant(10.0)
    turn.wait()
    assert not turn.done and 10.0 <= turn.used <= 11.0 and turn.images is not None
    time.sleep(0.05)  # paused: its clock does not move while another search would hold the CPU
    assert turn.used <= 11.0 and seen[-1] < 10.0
    turn.grant(turn.used + 5.0)
    turn.wait()
    assert 15.0 <= turn.used <= 17.0
    assert all(b > a for a, b in zip(seen, seen[1:]))  # one clock, never set back by a pause
    turn.grant(turn.used, stop=True)  # told to stop: its next check reads +inf (past any deadline)
    turn.wait()
    th.join(2)
    assert turn.done and len(seen) < 40


def test_matching_distance_prefers_the_truth_to_noise_without_looking_at_it():
    obs, model, images = _case()
    noise = torch.rand((3, *images.shape), generator=torch.Generator().manual_seed(0))
    d_truth = matching_distance(obs, model, obs.labels, images)
    d_noise = matching_distance(obs, model, obs.labels, noise)
    assert d_truth < 1e-4 < d_noise
    # the best over restarts: adding the truth as a fourth restart gives the truth's value
    both = torch.cat([noise, images[None]])
    assert matching_distance(obs, model, obs.labels, both) == pytest.approx(d_truth, abs=1e-6)


def test_the_race_gives_the_clearly_better_search_most_of_the_budget_and_keeps_to_it():
    obs, model, _ = _case()
    budget = 3.0
    run = run_portfolio(obs, _plans(), obs.labels, model, seconds=budget, clock="cpu")
    stuck, good = run.runs
    assert run.race["order"] == ["invertgrad", "stuck"]
    assert good.race_rank == 1 and stuck.race_rank == 2 and good.race_distance < stuck.race_distance
    assert run.race["nominal"] == pytest.approx(budget, rel=0.05)  # each fitted as if alone
    assert run.race["probe"] == pytest.approx(RACE_POINT * run.race["nominal"], abs=2e-3)
    # who got the CPU: both probes (1/16 of the budget, plus at most an iteration), then the leader with all
    # the time left; only if the leader ended on its own (schedule done, plateau) does the loser resume
    turns = run.race["turns"]
    assert [t[0] for t in turns[:3]] == ["stuck", "invertgrad", "invertgrad"]
    probe = run.race["probe"]
    assert probe <= turns[0][2] <= 0.2 * budget and probe <= turns[1][2] <= 0.2 * budget
    given, ran, ended = turns[2][1:]
    assert given >= 0.65 * budget and (ran >= 0.9 * given or (ended and good.stopped in ("plateau", "completed")))
    assert len(turns) == 3 or (ended and turns[3][0] == "stuck")
    assert stuck.reconstruction is not None and stuck.stopped in ("budget", "plateau", "completed")
    assert stuck.seconds + good.seconds <= 1.1 * budget
    # it continued from its probe's state: its schedule positions never start over
    its = [t["iteration"] for t in good.reconstruction.trace if t["restart"] == good.reconstruction.trace[-1]["restart"]]
    assert its == sorted(set(its)) and good.iterations == good.reconstruction.iterations > 0


def test_a_search_given_its_last_turn_fits_what_is_left_of_its_schedule_to_it(monkeypatch):
    """Fitted to 30 s but granted a probe and then a last turn of 1.5 s (what a search resumed after the leader
    gets): it fits its schedule to that turn and runs it to its last phases — not cut at its first lr."""
    from gradleak.portfolio.run import AttackRun, _Worker

    obs, model, _ = _case()
    seen: list[float] = []
    step = torch.optim.Adam.step

    def recording(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    plan = AuditPlan(InvertGrad(restarts=1), "gradient matching")
    w = _Worker(plan, AttackRun(name="invertgrad", reason="", closed_form=False),
                Budget(seconds=30.0, halving=True, turn=Turn(time.thread_time)), obs, obs.labels, 0, model,
                False, "cpu")
    w.give(0.2)
    assert not w.turn.done and seen and max(seen) == min(seen)  # the probe: first lr only
    w.give(w.turn.used + 1.5, final=True)
    if not w.turn.done:  # (without the fit it would still be inside its schedule here)
        w.give(w.turn.used, stop=True)
    assert w.error is None and w.rec is not None
    # it reached its last lr phases within the turn (fitted to 30 s it would still be at its first lr); the fit
    # keeps a two-iteration margin, so on a loaded machine it may still end at the turn's end inside that phase
    assert min(seen) <= InvertGrad().lr * 1e-2 + 1e-12, sorted(set(seen))


def test_the_race_respects_a_wall_clock_budget_within_ten_percent():
    obs, model, _ = _case()
    budget = 3.0
    t0 = time.perf_counter()
    run = run_portfolio(obs, _plans(), obs.labels, model, seconds=budget)
    took = time.perf_counter() - t0
    assert took <= 1.1 * budget, took
    assert run.runs[1].race_rank == 1 and run.runs[1].seconds >= 0.5 * budget


def test_an_iteration_budget_runs_every_search_that_many_iterations_without_a_race():
    obs, model, _ = _case()
    run = run_portfolio(obs, _plans(), obs.labels, model, iterations=6)
    assert run.race is None and [r.iterations for r in run.runs] == [6, 6]


def test_the_racing_searches_keep_the_callers_backend_setting():
    """The searches run in threads; the execution setting (a context variable) must hold there too."""
    from gradleak.backends.setting import using

    obs, model, _ = _case()
    with using("vmap"):
        run = run_portfolio(obs, _plans(), obs.labels, model, seconds=1.0, clock="cpu")
    assert run.race is not None
    assert [r.reconstruction.backend for r in run.runs] == ["vmap", "vmap"]
