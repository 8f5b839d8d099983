"""Client protocols: what an FL client computes from its private batch before uploading.

FedSGD (McMahan et al., 2017): the upload is the gradient of the mean batch loss,
    g = ∇_θ (1/B) Σ_i ℓ(f_θ(x_i), y_i).
FedAvg: τ local SGD steps with learning rate η on local mini-batches of size b,
    θ_{t+1} = θ_t − η ∇_θ (1/b) Σ_{i ∈ batch_t} ℓ(f_{θ_t}(x_i), y_i),
and the upload is the weight difference Δ = θ_0 − θ_τ (sign chosen so that Δ = η g for τ = 1,
i.e. it points along the gradient; the server sees the same information either way).

Mini-batch t covers the samples (t·b mod n) … (t·b + b − 1 mod n), walking through the client's data
in order and wrapping around; ``epochs`` E, when given, sets τ = E·⌈n/b⌉. The schedule is part of the
protocol the server knows, so the attacker re-runs exactly the same steps.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from gradleak.errors import bad_value

PROTOCOLS = ("fedsgd", "fedavg")


@dataclass(frozen=True)
class Protocol:
    kind: Literal["fedsgd", "fedavg"] = "fedsgd"
    local_steps: int = 1  # τ
    lr: float = 0.1  # η
    local_batch_size: int | None = None  # b; None = the whole local batch
    epochs: int | None = None  # if set, τ = epochs · ⌈n / b⌉
    bn_mode: Literal["train", "eval"] = "train"
    share_bn_stats: bool = False

    def __post_init__(self) -> None:
        if self.kind not in PROTOCOLS:
            raise bad_value("client.protocol", self.kind, " | ".join(PROTOCOLS))
        if self.local_steps < 1:
            raise bad_value("client.local_steps", self.local_steps, "integer >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise bad_value("client.lr", self.lr, "a finite number > 0")
        if self.local_batch_size is not None and self.local_batch_size < 1:
            raise bad_value("client.local_batch_size", self.local_batch_size, "integer >= 1 or null")
        if self.epochs is not None and self.epochs < 1:
            raise bad_value("client.epochs", self.epochs, "integer >= 1 or null")
        if self.bn_mode not in ("train", "eval"):
            raise bad_value("client.bn_mode", self.bn_mode, "train | eval")

    def schedule(self, n: int) -> list[tuple[int, ...]]:
        """Index tuples of the mini-batch used at each local step (one entry for FedSGD)."""
        if self.kind == "fedsgd":
            return [tuple(range(n))]
        b = min(self.local_batch_size or n, n)
        steps = self.epochs * math.ceil(n / b) if self.epochs else self.local_steps
        return [tuple((t * b + i) % n for i in range(b)) for t in range(steps)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        return cls(**d)
