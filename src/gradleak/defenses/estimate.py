"""What an upload betrays about its obfuscation — for attacks whose defense parameters are not told.

:func:`estimate_defense` reads the Observation's upload only (no private data):

* ``sparsity`` — fraction of exact zeros, per layer and overall (Top-k s, GIAS p, Soteria's pruned
  columns, quantisation's zero level; natural ReLU/dead-unit zeros also count);
* ``levels`` — per layer, the number of distinct non-zero magnitudes (a b-bit uniform/QSGD quantiser has
  at most s = 2^(b−1) − 1; a float gradient has about as many as entries); ``quantized`` when a layer
  with ≥ 32 non-zeros has ≤ 64 levels (overall: most entries are in such layers) and ``bits_estimate``
  = ⌈log2(2·levels + 1)⌉ from the largest level count;
* ``sign_like`` — every value in {−1, 0, +1} (signSGD);
* ``norm`` — per layer and overall ℓ2 norms; ``clip_estimate`` — the overall norm (a lower bound on a
  global clipping bound C, equal to it when clipping was active) and, when ≥ 2 layers share the largest
  per-layer norm to 1e-4 relative, that norm as a per-layer clipping bound (``per_layer_clip: true``).

:func:`choose_distance` is the attack option ``distance: auto``: the defenses the attacker was told
about (Observation.defenses) decide first — ``sign`` → tanh-vs-sign (ROG eq. 15), ``topk`` /
``gradient_sparsity`` / ``soteria`` → masked cosine — else the estimate: sign-like → ``tanh_sign``,
sparsity ≥ 0.3 → ``masked_cosine``, otherwise ``cosine``.
"""
from __future__ import annotations

import math

import torch

from gradleak.fl.observation import Observation

SPARSE_THRESHOLD = 0.3
_SPARSE_TOLD = {"topk", "gradient_sparsity", "soteria"}


def estimate_defense(obs: Observation) -> dict:
    """Per-layer and overall statistics of the upload as Δ = θ_0 − θ_τ (:meth:`Observation.as_delta`: the same
    for every convention the client states; see the module docstring)."""
    obs = obs.as_delta()
    layers, total, zeros, q_entries, sq = {}, 0, 0, 0, 0.0
    sign_like, max_levels = True, 0
    for name, t in obs.update.items():
        t = t.detach()
        n = t.numel()
        nz = t[t != 0]
        mags = torch.unique(nz.abs())
        levels = int(mags.numel())
        quant = nz.numel() >= 32 and levels <= 64
        is_sign = bool(((t == 0) | (t.abs() == 1)).all())
        norm = float(t.double().norm())
        layers[name] = {"numel": n, "sparsity": 1 - nz.numel() / n, "levels": levels, "quantized": quant,
                        "sign_like": is_sign, "norm": norm}
        total += n
        zeros += n - nz.numel()
        sq += norm ** 2
        sign_like &= is_sign
        if quant:
            q_entries += n
            max_levels = max(max_levels, levels)
    norms = sorted((v["norm"] for v in layers.values()), reverse=True)
    per_layer_clip = len(norms) >= 2 and norms[0] > 0 and abs(norms[0] - norms[1]) <= 1e-4 * norms[0]
    quantized = q_entries > total / 2
    return {
        "sparsity": zeros / max(total, 1),
        "sign_like": sign_like and zeros < total,
        "quantized": quantized,
        "bits_estimate": math.ceil(math.log2(2 * max_levels + 1)) if quantized else None,
        "norm": math.sqrt(sq),
        "clip_estimate": norms[0] if per_layer_clip else math.sqrt(sq),
        "per_layer_clip": per_layer_clip,
        "layers": layers,
    }


def choose_distance(obs: Observation) -> str:
    """The distance ``auto`` resolves to for this Observation (see the module docstring)."""
    for d in obs.defenses:
        if d.get("attacker_knows", True) is False:
            continue
        if d.get("name") == "sign":
            return "tanh_sign"
        if d.get("name") in _SPARSE_TOLD:
            return "masked_cosine"
    est = estimate_defense(obs)
    if est["sign_like"]:
        return "tanh_sign"
    if est["sparsity"] >= SPARSE_THRESHOLD:
        return "masked_cosine"
    return "cosine"
