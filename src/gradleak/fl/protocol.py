"""Client protocols: what an FL client computes from its private batch before uploading.

The protocols themselves are registered in :data:`gradleak.fl.protocols.PROTOCOLS`, one file each (FedSGD,
FedAvg, FedProx, SCAFFOLD; docs/protocols.md). This module holds :class:`Protocol`, the settings the server
knows, whose fields are derived from :data:`COMMON` plus each registered protocol's own settings (the run
config's ``client`` section is derived from the same list: :data:`SETTINGS`).

FedSGD (McMahan et al., 2017): the upload is the gradient of the mean batch loss,
    g = ∇_θ (1/B) Σ_i ℓ(f_θ(N(x_i)), y_i).
FedAvg: τ local steps of an optimizer (SGD with momentum / dampening / Nesterov / weight decay, Adam or
AdamW — :mod:`gradleak.fl.optim`, state from zero) on local mini-batches of size b,
    θ_{t+1} = OptStep(θ_t, ∇_θ (1/b) Σ_{i ∈ batch_t} ℓ(f_{θ_t}(N(x_i)), y_i)),
and the upload is, by ``update`` (stated in the Observation, never guessed):
``old_minus_new`` Δ = θ_0 − θ_τ (the default: Δ = η g for one SGD step, pointing along the gradient),
``new_minus_old`` θ_τ − θ_0, or ``new_weights`` θ_τ itself.

N is the client's input normalization, (x − mean_c) / std_c per channel, applied inside the client so
images stay in [0, 1] for the attacker and the metrics. ℓ is cross-entropy with optional label smoothing
and class weights (``torch.nn.CrossEntropyLoss``'s weighted mean), or any ``package.module:function``
``(logits, labels) -> scalar``.

Local data order (the client's dataset is the batch in the order given):
* ``sequential`` without ``epochs`` (the historical schedule): mini-batch t covers samples
  (t·b mod n) … (t·b + b − 1 mod n), wrapping around.
* with ``epochs`` E: E passes over the data, each split into consecutive mini-batches of b, the last
  incomplete one kept or dropped (``drop_last``) — ``torch.utils.data.DataLoader`` batching.
* ``shuffled`` with ``seed`` s: the order of ``DataLoader(data, batch_size=b, shuffle=True,
  drop_last=…, generator=torch.Generator().manual_seed(s))`` iterated once per epoch (the same loader,
  so every epoch draws a new permutation); without ``epochs`` the first τ mini-batches of those passes.
* ``unknown``: the client shuffles with a seed the server does not know. The Observation then holds no
  seed (:meth:`Protocol.server_view`) and the attacker re-runs every epoch in sequential order. For one
  epoch that model is exact up to a relabelling of the batch: a shuffle only regroups the (image, label)
  pairs into mini-batches, and the sequential re-run of the pairs in the client's order reproduces the
  update (tested). The attacker does not know that order, though: its image slots are free, but labels it
  was given (or recovered) sit in their original order, so the label groups of the mini-batches are wrong
  unless the shuffle happened to keep them; over several epochs every epoch regroups differently. The cost
  is measured in ``benchmarks/deployment.py`` (docs/deployment.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict
from typing import Any

from gradleak.errors import UserError, bad_value
from gradleak.fl.protocols import PROTOCOLS, Setting, protocol_of
from gradleak.fl.protocols.base import UPDATES

OPTIMIZERS = ("sgd", "adam", "adamw")
ORDERS = ("sequential", "shuffled", "unknown")

#: the settings every protocol shares (a protocol's own ones come from its ``settings``), in field order
COMMON: tuple[Setting, ...] = (
    Setting("local_steps", 1, "int", "τ: local steps (without epochs)", ge=1),
    Setting("lr", 0.1, "float", "η: the local learning rate", gt=0),
    Setting("local_batch_size", None, "int", "b: local mini-batch size (null: the whole local batch)",
            nullable=True, ge=1),
    Setting("epochs", None, "int", "if set, E passes over the local data", nullable=True, ge=1),
    Setting("bn_mode", "train", "choice", "BatchNorm mode of the client's forward", choices=("train", "eval")),
    Setting("share_bn_stats", False, "bool", "the client shares its batch BN statistics"),
    Setting("optimizer", "sgd", "choice", "the local optimizer", choices=OPTIMIZERS),
    Setting("momentum", 0.0, "float", "SGD momentum", ge=0, lt=1),
    Setting("dampening", 0.0, "float", "SGD dampening", ge=0, le=1),
    Setting("nesterov", False, "bool", "SGD Nesterov momentum"),
    Setting("weight_decay", 0.0, "float", "L2 weight decay (AdamW: decoupled)", ge=0),
    Setting("betas", (0.9, 0.999), "floats", "Adam/AdamW betas", length=2),
    Setting("eps", 1e-8, "float", "Adam/AdamW eps", ge=0),
    Setting("loss", "cross_entropy", "str", "cross_entropy or 'package.module:function' (logits, labels) -> scalar"),
    Setting("label_smoothing", 0.0, "float", "cross-entropy label smoothing", ge=0, le=1),
    Setting("class_weights", None, "floats", "cross-entropy class weights", nullable=True, positive=True),
    Setting("mean", None, "floats", "per-channel input normalization (x - mean) / std", nullable=True),
    Setting("std", None, "floats", "per-channel input normalization (x - mean) / std", nullable=True,
            positive=True),
    Setting("order", "sequential", "choice", "local data order", choices=ORDERS),
    Setting("seed", None, "int", "shuffle seed (order shuffled; the client's own one for unknown)",
            nullable=True),
    Setting("drop_last", False, "bool", "drop an incomplete last mini-batch (with epochs)"),
    Setting("update", "old_minus_new", "choice", "the upload's convention", choices=UPDATES),
)


def all_settings() -> tuple[Setting, ...]:
    """:data:`COMMON` then every registered protocol's own settings, in registration order."""
    own = [s for rule in dict.fromkeys(PROTOCOLS.values()) for s in rule.settings]
    names = [s.name for s in (*COMMON, *own)]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"protocol settings declared twice: {sorted(dup)}")
    return (*COMMON, *own)


#: the settings :class:`Protocol` and the config's ``client`` section are built from (fixed at import: a
#: protocol with settings of its own is imported by :mod:`gradleak.fl.protocols` to be part of both)
SETTINGS: tuple[Setting, ...] = all_settings()


class _ProtocolBase:
    """Methods of :class:`Protocol` (its fields are derived from :func:`all_settings`)."""

    def __post_init__(self) -> None:
        rule = protocol_of(self.kind)
        late = [s.name for s in rule.settings if s not in SETTINGS]
        if late:
            raise ValueError(f"protocol {self.kind!r} was registered after gradleak.fl.protocol was imported and has "
                             f"settings {late}: import it from gradleak.fl.protocols so Protocol has those fields")
        for s in SETTINGS:
            value = getattr(self, s.name)
            if s.owner is not None and s.owner != self.kind:
                if value != s.default:
                    raise bad_value(f"client.{s.name}", value, f"{s.default!r} with protocol {self.kind} "
                                                                f"({s.name} is a setting of protocol {s.owner})")
                continue
            object.__setattr__(self, s.name, s.check(value))
        if any(not 0 <= b < 1 for b in self.betas):
            raise bad_value("client.betas", self.betas, "two numbers in [0, 1)")
        if (self.mean is None) != (self.std is None) or (self.mean and len(self.mean) != len(self.std)):
            raise bad_value("client.std", self.std, "a list as long as client.mean (both or neither)")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise bad_value("client.nesterov", self.nesterov, "false, or true with momentum > 0 and dampening 0")
        if self.optimizer != "sgd" and (self.momentum or self.dampening or self.nesterov):
            raise bad_value("client.momentum", self.momentum, f"0 with optimizer {self.optimizer} (use betas)")
        if not (self.loss == "cross_entropy" or ":" in self.loss):
            raise bad_value("client.loss", self.loss, "cross_entropy or an import path 'package.module:function'")
        if self.loss != "cross_entropy" and (self.label_smoothing or self.class_weights):
            raise bad_value("client.loss", self.loss, "cross_entropy when label_smoothing or class_weights is set")
        if self.order == "shuffled" and self.seed is None:
            raise bad_value("client.seed", None, "an integer with order shuffled (or order unknown)")
        rule.check(self)
        if self.state is not None:
            missing = [k for k in rule.state if k not in self.state]
            unknown = [k for k in self.state if k not in rule.state]
            if missing or unknown:
                raise UserError(f"protocol state: got {sorted(self.state)}; allowed: exactly "
                                f"{list(rule.state) or 'none'} for protocol {self.kind}")

    @property
    def rule(self):
        """The registered :class:`gradleak.fl.protocols.ClientProtocol` of ``kind``."""
        return PROTOCOLS[self.kind]

    def server_view(self) -> "Protocol":
        """The protocol as the server knows it: with order ``unknown`` the client's seed is removed."""
        return dataclasses.replace(self, seed=None) if self.order == "unknown" else self

    def with_state(self, state: dict | None) -> "Protocol":
        """The same settings with the known per-parameter state (SCAFFOLD's control variates)."""
        return dataclasses.replace(self, state=state)

    def state_or_initial(self, params: dict) -> dict:
        """``state``, or the protocol's initial state (zeros) for ``params`` when none is set."""
        return self.state if self.state is not None else self.rule.initial_state(params)

    def schedule(self, n: int) -> list[tuple[int, ...]]:
        """Index tuples of the mini-batch used at each local step (one entry for FedSGD)."""
        return list(self.rule.schedule(self, n))

    def to_dict(self) -> dict:
        """The settings (no state tensors); a protocol's own settings only for that protocol."""
        own = {s.name for s in SETTINGS if s.owner is not None and s.owner != self.kind}
        d = {k: v for k, v in asdict(self).items() if k != "state" and k not in own}
        for k in ("betas", "class_weights", "mean", "std"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        """From ``to_dict`` output; keys missing in older files take their defaults."""
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "state"]
        for k in d:
            if k not in fields:
                raise UserError(f"protocol key {k!r}: unknown key; allowed keys: {', '.join(fields)}")
        return cls(**d)


def _field(s: Setting) -> tuple[str, Any, Any]:
    return s.name, s.annotation, dataclasses.field(default=s.default)


#: The client settings the server knows (frozen, hashable). Fields: ``kind`` (a registered protocol name),
#: every :class:`Setting` of :func:`all_settings`, and ``state`` — per-parameter tensor sets the server knows
#: and the protocol reads ({set name: {parameter name: tensor}}, SCAFFOLD's control variates; not compared,
#: hashed or printed, and saved by the Observation, not by :meth:`to_dict`).
Protocol = dataclasses.make_dataclass(
    "Protocol",
    [("kind", str, dataclasses.field(default="fedsgd")), *(_field(s) for s in SETTINGS),
     ("state", "dict | None", dataclasses.field(default=None, compare=False, repr=False))],
    bases=(_ProtocolBase,), frozen=True)
Protocol.__module__ = __name__
Protocol.__doc__ = (
    "The client protocol as the server knows it: ``kind`` (a registered protocol), the settings of "
    ":func:`all_settings` and the known ``state`` (see the module docstring).")
