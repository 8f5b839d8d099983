"""``gradleak audit``'s attack portfolio: chosen from what the observation is, run under one budget.

* :mod:`.plan` — the :class:`~gradleak.attacks.base.Situation` of an observation (its defenses' attacker view,
  labels given or recovered) and the portfolio: every attack family that states a place for itself
  (``Attack.audit_plan``), closed-form ones first;
* :mod:`.run` — the budget split among them (fixed rules), anytime: Ctrl-C or the end of the budget keeps
  what has been reconstructed so far.

The audit around it (worst case per image, positive control, verdict) is :mod:`gradleak.autoaudit`.
"""
from gradleak.portfolio.plan import choose, situation_of
from gradleak.portfolio.run import AttackRun, PortfolioRun, run_portfolio

__all__ = ["choose", "situation_of", "AttackRun", "PortfolioRun", "run_portfolio"]
