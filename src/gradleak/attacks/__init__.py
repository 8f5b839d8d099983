"""Attacks: observation in, reconstruction out (:mod:`gradleak.attacks.base`).

Importing the package registers every attack in :data:`ATTACKS`: the search presets (DLG, iDLG,
InvertGrad), the GIAS family, ROG and ROGS, R-GAP (closed form and with a generative prior) and the analytic
FC-layer attacks. What one family produces besides the images is a typed
:class:`~gradleak.attacks.artifacts.Artifact` of its reconstruction.
"""
from gradleak.attacks.artifacts import Artifact
from gradleak.attacks.base import ATTACKS, Attack, LabelMode, Reconstruction, build_attack
from gradleak.attacks import presets, generative, rog, rogs, rgap, analytic  # noqa: F401,E402  (register)

__all__ = ["ATTACKS", "Artifact", "Attack", "LabelMode", "Reconstruction", "build_attack"]
