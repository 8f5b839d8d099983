"""What a secure aggregate is made of (:mod:`gradleak.fl.secagg`, eq. 1): the K summands' batch sizes, protocols
and weights, as the :class:`gradleak.fl.observation.Observation` of an aggregate carries them. Kept apart from the
computation so that the observation (a lower layer) can hold it without importing the client simulation."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from gradleak.errors import UserError
from gradleak.fl.protocol import Protocol

REDUCTIONS = ("sum", "mean", "weighted_mean")
Reduction = Literal["sum", "mean", "weighted_mean"]


def weights_of(reduction: str, sizes: list[int]) -> tuple[float, ...]:
    """w_k of (1) for the clients' batch sizes ``sizes`` under ``reduction``."""
    if reduction == "sum":
        return tuple(1.0 for _ in sizes)
    if reduction == "mean":
        return tuple(1.0 / len(sizes) for _ in sizes)
    if reduction == "weighted_mean":
        total = sum(sizes)
        return tuple(n / total for n in sizes)
    raise UserError(f"aggregation.reduction: got {reduction!r}; allowed: {' | '.join(REDUCTIONS)}")


@dataclass(frozen=True)
class Aggregation:
    """The K summands of an aggregate upload (1): client k's batch size n_k, protocol and weight w_k.

    Every protocol states ``update: old_minus_new`` (the aggregate of Δ_k = θ_0 − θ_τ,k; other conventions
    are converted when the aggregate is built). ``reduction`` names how the weights were chosen."""

    sizes: tuple[int, ...]
    protocols: tuple[Protocol, ...]
    weights: tuple[float, ...]
    reduction: str = "weighted_mean"

    def __post_init__(self) -> None:
        K = len(self.sizes)
        if K < 1 or len(self.protocols) != K or len(self.weights) != K:
            raise UserError(f"aggregation: got {K} sizes, {len(self.protocols)} protocols, {len(self.weights)} "
                            "weights; allowed: one of each per client, at least one client")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.sizes):
            raise UserError(f"aggregation.sizes: got {list(self.sizes)}; allowed: integers >= 1")
        if any(not isinstance(w, (int, float)) or not math.isfinite(w) for w in self.weights):
            raise UserError(f"aggregation.weights: got {list(self.weights)}; allowed: finite numbers")
        if self.reduction not in REDUCTIONS + ("custom",):
            raise UserError(f"aggregation.reduction: got {self.reduction!r}; allowed: {' | '.join(REDUCTIONS)} | custom")
        for k, p in enumerate(self.protocols):
            if not isinstance(p, Protocol):
                raise UserError(f"aggregation.protocols[{k}]: got {type(p).__name__}; allowed: a gradleak Protocol")
            if p.update != "old_minus_new":
                raise UserError(f"aggregation.protocols[{k}].update: got {p.update!r}; allowed: old_minus_new "
                                "(the aggregate of Δ_k = θ_0 − θ_τ,k)")

    @classmethod
    def of(cls, sizes: list[int], protocols: list[Protocol] | Protocol, reduction: str = "weighted_mean") -> "Aggregation":
        """K clients of batch sizes ``sizes`` (one protocol each, or one for all) under ``reduction``."""
        protos = [protocols] * len(sizes) if isinstance(protocols, Protocol) else list(protocols)
        protos = [delta_protocol(p) for p in protos]
        return cls(tuple(int(n) for n in sizes), tuple(protos), weights_of(reduction, list(sizes)), reduction)

    @property
    def clients(self) -> int:
        return len(self.sizes)

    @property
    def num_images(self) -> int:
        return sum(self.sizes)

    def slices(self) -> list[slice]:
        """Client k's image slots in the aggregate's batch of N."""
        out, start = [], 0
        for n in self.sizes:
            out.append(slice(start, start + n))
            start += n
        return out

    def to_dict(self) -> dict:
        return {"sizes": list(self.sizes), "protocols": [p.to_dict() for p in self.protocols],
                "weights": list(self.weights), "reduction": self.reduction}

    @classmethod
    def from_dict(cls, d: dict) -> "Aggregation":
        if not isinstance(d, dict) or not {"sizes", "protocols", "weights"} <= set(d):
            raise UserError(f"aggregation: got {d!r}; allowed: a mapping with sizes, protocols, weights, reduction")
        return cls(tuple(int(n) for n in d["sizes"]), tuple(Protocol.from_dict(p) for p in d["protocols"]),
                   tuple(float(w) for w in d["weights"]), str(d.get("reduction", "custom")))


def delta_protocol(p: Protocol) -> Protocol:
    """``p`` stating the ``old_minus_new`` convention (FedSGD already does)."""
    return p if p.update == "old_minus_new" else dataclasses.replace(p, update="old_minus_new")
