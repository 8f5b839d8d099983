"""Gradient obfuscations and defenses applied to the client's upload (φ), and their attacker-side view.

Registered names (``defense: [{name: ..., ...}]`` in a run config):

* ``topk`` / ``gradient_sparsity`` — Top-k sparsification, GIAS per-layer sparsity (:mod:`.sparsify`)
* ``quantize`` / ``qsgd`` / ``sign`` — uniform s-level quantiser (ROG eq. 6), QSGD (eq. 7), signSGD
  (:mod:`.quantize`)
* ``noise`` / ``clip`` — Gaussian noise by σ or target SNR, norm clipping (:mod:`.noise`)
* ``fedcdp`` — per-example clipping + noise with Opacus (ε, δ) (:mod:`.fedcdp`)
* ``soteria`` — representation pruning at the final FC layer (:mod:`.soteria`)
* ``aggregate`` — mean with n − 1 other clients' uploads (:mod:`.aggregate`)
* ``precode`` — threat-model entry for the PRECODE model's noise seed (:mod:`.precode`)

:func:`~gradleak.defenses.estimate.estimate_defense` reads what an upload betrays about its
obfuscation (sparsity, quantisation levels, norms) for attacks whose defense parameters are unknown.
"""
from gradleak.defenses.base import DEFENSES, ClientContext, Defense, build_defenses, register
from gradleak.defenses import aggregate, fedcdp, noise, precode, quantize, soteria, sparsify  # noqa: F401  (register)
from gradleak.defenses.estimate import choose_distance, estimate_defense

__all__ = ["DEFENSES", "ClientContext", "Defense", "build_defenses", "register", "estimate_defense",
           "choose_distance"]
