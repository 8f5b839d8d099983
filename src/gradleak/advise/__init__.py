"""``gradleak advise``: the weakest setting of each defense family that stops the attacks, and what it costs.

* :mod:`.families` — the defense families, each a strength axis (weakest first) registered by name;
* :mod:`.search` — coarse grid, then bisection, for the weakest safe setting, with the monotonicity check;
* :mod:`.run` — privacy (an audit of the defended client) and utility (FedAvg accuracy, upload size) of every
  candidate, resumable, and the outputs (recommendations, Pareto chart, caveats).
"""
from gradleak.advise.families import FAMILIES, Family
from gradleak.advise.search import Threshold, find_threshold

__all__ = ["FAMILIES", "Family", "Threshold", "find_threshold"]
