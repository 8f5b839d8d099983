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

:func:`attacker_view` is the whole chain's :class:`~gradleak.defenses.base.AttackerView`: each defense states
its own (``Defense.attacker_view``, from what the attacker was told), and what the upload itself betrays is
added (sign-like, sparse, quantized values), so a captured upload that declares nothing is still read.

:func:`choose_distance` is the attack option ``distance: auto``: the views of the defenses the attacker was
told about decide first — signs only → tanh-vs-sign (ROG eq. 15), unknown support → masked cosine — else
the estimate: sign-like → ``tanh_sign``, sparsity ≥ 0.3 → ``masked_cosine``, otherwise ``cosine``.
"""
from __future__ import annotations

import math

import torch

from gradleak.defenses.base import DEFENSES, AttackerView
from gradleak.fl.observation import Observation

SPARSE_THRESHOLD = 0.3


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


def told_view(obs: Observation) -> AttackerView:
    """The merged views of the defenses whose parameters the attacker was told (``attacker_knows``)."""
    view = AttackerView()
    for d in obs.defenses:
        cls = DEFENSES.get(d.get("name")) if isinstance(d.get("name"), str) else None
        if d.get("attacker_knows", True) is not False and cls is not None:
            view = view.merge(cls.attacker_view(d))
    return view


def attacker_view(obs: Observation) -> AttackerView:
    """The attacker-side view of the Observation's whole defense chain (see the module docstring): every
    declared defense's own view (an untold one states what its kind leaves, from its name alone), merged with
    what the upload betrays (:func:`estimate_defense`) where the declaration may be incomplete: a defense told
    by name only (all three signatures: sign-like, sparse, quantized), or none declared (sign-like and
    quantized only — a ReLU network's own zeros make an unobfuscated update sparse)."""
    view = AttackerView()
    untold = not obs.defenses
    for d in obs.defenses:
        name = d.get("name")
        cls = DEFENSES.get(name) if isinstance(name, str) else None
        untold |= d.get("attacker_knows", True) is False
        if cls is None:
            view = view.merge(AttackerView(unmodelled=f"defense {name!r} is not one gradleak models"))
        else:
            view = view.merge(cls.attacker_view(d))
    if untold:
        est = estimate_defense(obs)
        sign = est["sign_like"]
        sparse = bool(obs.defenses) and est["sparsity"] >= SPARSE_THRESHOLD and not sign
        view = view.merge(AttackerView(sign=sign, support=sparse, quantized=est["quantized"] and not sign))
    return view


def choose_distance(obs: Observation, view: AttackerView | None = None) -> str:
    """The distance ``auto`` resolves to for this Observation (see the module docstring); ``view``: its
    :func:`told_view` when the caller has it already."""
    view = told_view(obs) if view is None else view
    if view.sign:
        return "tanh_sign"
    if view.support:
        return "masked_cosine"
    est = estimate_defense(obs)
    if est["sign_like"]:
        return "tanh_sign"
    if est["sparsity"] >= SPARSE_THRESHOLD:
        return "masked_cosine"
    return "cosine"
