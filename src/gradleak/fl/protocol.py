"""Client protocols: what an FL client computes from its private batch before uploading.

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
import functools
import math
from dataclasses import asdict, dataclass
from typing import Literal

from gradleak.errors import UserError, bad_value

PROTOCOLS = ("fedsgd", "fedavg")
OPTIMIZERS = ("sgd", "adam", "adamw")
ORDERS = ("sequential", "shuffled", "unknown")
UPDATES = ("old_minus_new", "new_minus_old", "new_weights")


def _number(key: str, value, lo: float | None = None, hi: float | None = None, lo_open=False, hi_open=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        hi_s = "" if hi is None else (f"< {hi}" if hi_open else f"<= {hi}")
        raise bad_value(f"client.{key}", value, "a number " + " and ".join(s for s in (lo_s, hi_s) if s))


def _floats(key: str, value, length: int | None = None, positive: bool = False) -> tuple[float, ...] | None:
    if value is None:
        return None
    allowed = f"a list of {length or 'one or more'} {'positive ' if positive else ''}numbers"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise bad_value(f"client.{key}", value, allowed) from None
    if (length is not None and len(out) != length) or not out or any(not math.isfinite(v) for v in out) \
            or (positive and any(v <= 0 for v in out)):
        raise bad_value(f"client.{key}", value, allowed)
    return out


@dataclass(frozen=True)
class Protocol:
    kind: Literal["fedsgd", "fedavg"] = "fedsgd"
    local_steps: int = 1  # τ
    lr: float = 0.1  # η
    local_batch_size: int | None = None  # b; None = the whole local batch
    epochs: int | None = None  # if set, E passes over the local data
    bn_mode: Literal["train", "eval"] = "train"
    share_bn_stats: bool = False
    # local optimizer (FedAvg)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # loss and input pipeline
    loss: str = "cross_entropy"  # or 'package.module:function' (logits, labels) -> scalar
    label_smoothing: float = 0.0
    class_weights: tuple[float, ...] | None = None
    mean: tuple[float, ...] | None = None  # per-channel input normalization (x - mean) / std
    std: tuple[float, ...] | None = None
    # local data order and the upload
    order: Literal["sequential", "shuffled", "unknown"] = "sequential"
    seed: int | None = None  # shuffle seed (order shuffled; the client's own one for unknown)
    drop_last: bool = False
    update: Literal["old_minus_new", "new_minus_old", "new_weights"] = "old_minus_new"

    def __post_init__(self) -> None:
        if self.kind not in PROTOCOLS:
            raise bad_value("client.protocol", self.kind, " | ".join(PROTOCOLS))
        for key, v, allow_none in (("local_steps", self.local_steps, False),
                                   ("local_batch_size", self.local_batch_size, True),
                                   ("epochs", self.epochs, True)):
            if (v is None and not allow_none) or (v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1)):
                raise bad_value(f"client.{key}", v, "integer >= 1" + (" or null" if allow_none else ""))
        _number("lr", self.lr, 0, lo_open=True)
        if self.bn_mode not in ("train", "eval"):
            raise bad_value("client.bn_mode", self.bn_mode, "train | eval")
        if self.optimizer not in OPTIMIZERS:
            raise bad_value("client.optimizer", self.optimizer, " | ".join(OPTIMIZERS))
        _number("momentum", self.momentum, 0, 1, hi_open=True)
        _number("dampening", self.dampening, 0, 1)
        _number("weight_decay", self.weight_decay, 0)
        _number("eps", self.eps, 0)
        _number("label_smoothing", self.label_smoothing, 0, 1)
        betas = _floats("betas", self.betas, 2)
        if any(not 0 <= b < 1 for b in betas):
            raise bad_value("client.betas", self.betas, "two numbers in [0, 1)")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "class_weights", _floats("class_weights", self.class_weights, positive=True))
        object.__setattr__(self, "mean", _floats("mean", self.mean))
        object.__setattr__(self, "std", _floats("std", self.std, positive=True))
        if (self.mean is None) != (self.std is None) or (self.mean and len(self.mean) != len(self.std)):
            raise bad_value("client.std", self.std, "a list as long as client.mean (both or neither)")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise bad_value("client.nesterov", self.nesterov, "false, or true with momentum > 0 and dampening 0")
        if self.optimizer != "sgd" and (self.momentum or self.dampening or self.nesterov):
            raise bad_value("client.momentum", self.momentum, f"0 with optimizer {self.optimizer} (use betas)")
        if not isinstance(self.loss, str) or not (self.loss == "cross_entropy" or ":" in self.loss):
            raise bad_value("client.loss", self.loss, "cross_entropy or an import path 'package.module:function'")
        if self.loss != "cross_entropy" and (self.label_smoothing or self.class_weights):
            raise bad_value("client.loss", self.loss, "cross_entropy when label_smoothing or class_weights is set")
        if self.order not in ORDERS:
            raise bad_value("client.order", self.order, " | ".join(ORDERS))
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise bad_value("client.seed", self.seed, "an integer or null")
        if self.order == "shuffled" and self.seed is None:
            raise bad_value("client.seed", None, "an integer with order shuffled (or order unknown)")
        if self.update not in UPDATES:
            raise bad_value("client.update", self.update, " | ".join(UPDATES))
        if self.kind == "fedsgd":
            # FedSGD uploads the gradient: optimizer settings would be silently ignored, so refuse them
            for key, default in (("optimizer", "sgd"), ("momentum", 0.0), ("weight_decay", 0.0),
                                 ("nesterov", False), ("update", "old_minus_new")):
                if getattr(self, key) != default:
                    raise bad_value(f"client.{key}", getattr(self, key),
                                    f"{default} with protocol fedsgd (it uploads the gradient; "
                                    f"use protocol fedavg for local optimizer steps)")

    def server_view(self) -> "Protocol":
        """The protocol as the server knows it: with order ``unknown`` the client's seed is removed."""
        return dataclasses.replace(self, seed=None) if self.order == "unknown" else self

    def schedule(self, n: int) -> list[tuple[int, ...]]:
        """Index tuples of the mini-batch used at each local step (one entry for FedSGD)."""
        return list(_schedule(self, n))

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("betas", "class_weights", "mean", "std"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        """From ``to_dict`` output; keys missing in older files take their defaults."""
        fields = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            if k not in fields:
                raise UserError(f"protocol key {k!r}: unknown key; allowed keys: {', '.join(fields)}")
        return cls(**d)


@functools.lru_cache(maxsize=256)
def _schedule(p: Protocol, n: int) -> tuple[tuple[int, ...], ...]:
    if p.kind == "fedsgd":
        return (tuple(range(n)),)
    b = min(p.local_batch_size or n, n)
    if p.order == "sequential" and p.epochs is None:
        return tuple(tuple((t * b + i) % n for i in range(b)) for t in range(p.local_steps))
    shuffled = p.order == "shuffled" or (p.order == "unknown" and p.seed is not None)
    if shuffled:
        import torch
        from torch.utils.data import DataLoader

        loader = DataLoader(range(n), batch_size=b, shuffle=True, drop_last=p.drop_last,
                            generator=torch.Generator().manual_seed(p.seed))
        one_epoch = lambda: (tuple(int(i) for i in batch) for batch in loader)  # noqa: E731
    else:
        starts = [s for s in range(0, n, b) if not (p.drop_last and s + b > n)]
        one_epoch = lambda: (tuple(range(s, min(s + b, n))) for s in starts)  # noqa: E731
    out: list[tuple[int, ...]] = []
    if p.epochs is not None:
        for _ in range(p.epochs):
            out.extend(one_epoch())
        return tuple(out)
    while len(out) < p.local_steps:
        for batch in one_epoch():
            out.append(batch)
            if len(out) == p.local_steps:
                break
    return tuple(out)
