"""The portfolio of an observation: which attacks an audit runs, decided from the observation alone.

Each attack family states its own place (``Attack.audit_plan``, in its module): R-GAP and the analytic
fully-connected attack when their closed form applies (rank analysis / first layer), InvertGrad always (with
the distance the defenses' attacker view calls for), GI-x + BN prior when BN statistics are shared, GIAS when a
generative prior fits the images' shape, ROG when the upload is obfuscated. This module only asks them, in
registry order, and puts the closed-form attacks first (AutoAttack's fixed, diverse portfolio; Croce & Hein,
2020). The private images are never looked at.
"""
from __future__ import annotations

from torch import Tensor, nn

from gradleak.attacks import ATTACKS
from gradleak.attacks.base import AuditPlan, Situation
from gradleak.fl.observation import Observation

RESTARTS = 4  # every search starts 4 restarts, pruned by successive halving (≈ 1.5× one restart's time)


def situation_of(obs: Observation, model: nn.Module, labels: Tensor | None, prior: str | None = None) -> Situation:
    """What the portfolio is chosen from (the defense chain's attacker view is read here)."""
    from gradleak.defenses.estimate import attacker_view

    return Situation(obs=obs, view=attacker_view(obs), model=model, labels=labels, prior=prior, restarts=RESTARTS)


def choose(situation: Situation) -> list[AuditPlan]:
    """The plans of every registered family that has a place in this situation (closed-form first)."""
    seen, plans = set(), []
    for cls in ATTACKS.values():
        if cls in seen or "audit_plan" not in vars(cls):
            continue
        seen.add(cls)
        plan = cls.audit_plan(situation)
        if plan is not None:
            plans.append(plan)
    return sorted(plans, key=lambda p: not p.closed_form)
