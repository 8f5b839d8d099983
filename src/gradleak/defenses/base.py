"""Defense interface: a named, seeded transform φ of the client's upload.

A defense sees the clean upload and the client context (model, θ_0, private batch, protocol) — most
only transform the upload (sparsification, quantisation, noise); some recompute it (FedCDP's
per-example clipping, Soteria's pruned representation). ``describe()`` is what the threat model lets the
attacker know about it and is recorded in the Observation and the run directory.

Threat model. Every defense takes ``attacker_knows: bool = True``. When true, ``describe()`` returns the
defense's name, its parameters and what it realised on this upload (e.g. the σ a target SNR gave);
when false it returns only ``{"name": ..., "attacker_knows": False}`` — the attacker learns that the
transform was applied (the format of the upload usually betrays it anyway) but none of its parameters,
and must estimate them (:func:`gradleak.defenses.estimate.estimate_defense`).

Randomness. Every random draw uses ``ctx.generator`` (seeded by ``capture(case, seed)``), so a capture
is reproducible bit for bit.

Chains. ``defense: [...]`` is applied in order, φ_n ∘ … ∘ φ_1. Defenses with ``recomputes = True``
(FedCDP, PRECODE with a hidden seed) compute the upload afresh from the private batch, discarding their
input, so :func:`build_defenses` refuses them anywhere but first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gradleak.registry import Registry
from gradleak.errors import UserError, bad_value
from gradleak.fl.protocol import Protocol

Params = dict[str, Tensor]


@dataclass(frozen=True)
class AttackerView:
    """What a defense leaves the attacker to model (issue 22, item 3): the distances (:mod:`.estimate`), ROG and
    the audit's portfolio read this, never defense names.

    ``support``: the upload's zeros are *unknown* entries, not zeros (Top-k, per-layer sparsity, pruning) —
    match on the observed support (masked distances); ``sign``: only signs were sent (tanh–sign distance);
    ``quantized``: values lie on a grid of ``levels`` magnitudes per tensor; ``noise``: Gaussian noise of known
    scale ``noise_sigma`` (None: unknown) was added; ``clip``: the norm was clipped to ``clip``; ``mixed``: the
    upload is averaged with ``mixed`` other clients' (no attack here separates them); ``unmodelled``: why the
    attacker cannot model the transform (e.g. a hidden noise seed), None when it can."""

    support: bool = False
    sign: bool = False
    quantized: bool = False
    levels: int | None = None
    noise: bool = False
    noise_sigma: float | None = None
    clip: float | None = None
    mixed: int | None = None
    unmodelled: str | None = None

    @property
    def obfuscated(self) -> bool:
        """The upload is not the client's update up to scale: an obfuscation-aware attack (ROG) is in order."""
        return self.support or self.sign or self.quantized or self.noise

    def merge(self, other: "AttackerView") -> "AttackerView":
        """The view of a chain: each property holds if it holds for any member."""
        return AttackerView(
            support=self.support or other.support, sign=self.sign or other.sign,
            quantized=self.quantized or other.quantized, levels=other.levels or self.levels,
            noise=self.noise or other.noise, noise_sigma=other.noise_sigma if other.noise else self.noise_sigma,
            clip=other.clip or self.clip, mixed=other.mixed or self.mixed,
            unmodelled="; ".join(x for x in (self.unmodelled, other.unmodelled) if x) or None)

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if v not in (None, False)}


@dataclass
class ClientContext:
    model: nn.Module
    params: Params
    buffers: Params
    images: Tensor
    labels: Tensor
    protocol: Protocol
    generator: torch.Generator
    #: optional pool of other clients' data ``(images (N,C,H,W), labels (N,))`` for ``aggregate``
    pool: tuple[Tensor, Tensor] | None = None


class Defense:
    """Base class. Subclasses set ``name``, validate parameters in ``__init__`` and implement ``apply``.

    Public attributes (not starting with ``_``) are the defense's parameters and are what
    ``describe()`` reports when ``attacker_knows``; ``self._report`` holds values realised by the last
    ``apply`` (e.g. the noise σ used) that are reported too."""

    name = "defense"
    recomputes = False  # True: computes the upload from ctx and ignores its input (must be first)
    attacker_knows: bool = True

    def apply(self, update: Params, ctx: ClientContext) -> Params:
        raise NotImplementedError

    @classmethod
    def attacker_view(cls, told: dict) -> AttackerView:
        """The attacker-side view this defense leaves, from what the attacker was told about it (``told`` =
        :meth:`describe` as stored in the Observation). Default: nothing to model (the identity)."""
        return AttackerView()

    def describe(self) -> dict:
        """What the attacker is told: name and parameters (+ realised values) or only the name."""
        if not getattr(self, "attacker_knows", True):
            return {"name": self.name, "attacker_knows": False}
        out: dict[str, Any] = {"name": self.name}
        out.update({k: _jsonable(v) for k, v in vars(self).items() if not k.startswith("_")})
        out.update({k: _jsonable(v) for k, v in getattr(self, "_report", {}).items()})
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _jsonable(v: Any) -> Any:
    if isinstance(v, Tensor):
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no inf/nan
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def check(defense: str, key: str, ok: bool, value: object, allowed: str) -> None:
    """Raise the standard one-line UserError ``defense <name>.<key>: got …; allowed: …`` unless ``ok``."""
    if not ok:
        raise bad_value(f"defense {defense}.{key}", value, allowed)


DEFENSES = Registry("defense")


def register(cls: type[Defense]) -> type[Defense]:
    """Class decorator: register a defense under its ``name`` (a taken name is refused)."""
    return DEFENSES.register(cls.name)(cls)


def build_defenses(specs: list[dict]) -> list[Defense]:
    """``[{"name": "topk", "sparsity": 0.9}, ...]`` → Defense objects, validated (one-line errors)."""
    from gradleak.validate import validate_options

    out = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise UserError(f"defense[{i}]: got {spec!r}; allowed: a mapping with 'name' and the defense's parameters")
        spec = dict(spec)
        name = spec.pop("name", None)
        if name not in DEFENSES:
            raise UserError(f"defense[{i}].name: got {name!r}; allowed: {', '.join(sorted(DEFENSES)) or '(none registered)'}")
        cls = DEFENSES[name]
        if cls.recomputes and i > 0:
            raise UserError(f"defense[{i}].name: got {name!r} after another defense; allowed: {name!r} only first "
                            "in the chain (it recomputes the upload from the private batch)")
        try:
            out.append(cls(**validate_options(cls.__init__, spec, f"defense[{i}]")))
        except UserError as err:
            msg = str(err)
            raise UserError(msg if msg.startswith("defense") else f"defense[{i}] ({name}): {msg}") from None
    return out
