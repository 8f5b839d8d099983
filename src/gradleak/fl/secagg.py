"""Secure aggregation: what the server holds when only the aggregate of K clients' uploads is revealed.

Under secure aggregation (Bonawitz et al., 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning") the server learns one vector per round,

    u_agg = Σ_{k=1..K} w_k · U_k(x_k, y_k),                                              (1)

where U_k is client k's upload (its own protocol, :func:`gradleak.fl.client.client_update`, in the
``old_minus_new`` convention Δ_k = θ_0 − θ_τ,k; FedSGD: the gradient g_k) computed from its own n_k
private images x_k, and w_k the weight the aggregation gives it:

* ``sum``: w_k = 1 — the raw output of the secure-aggregation protocol (Bonawitz et al. reveal Σ_k U_k);
* ``mean``: w_k = 1/K;
* ``weighted_mean``: w_k = n_k / N with N = Σ_k n_k — **what Flower reveals**: its SecAgg+ workflow
  (``flwr.server.workflow.SecAggPlusWorkflow`` with ``secaggplus_mod``) sums the clients' arrays
  multiplied by their ``num-examples`` and divides by Σ n_k, i.e. FedAvg's aggregate
  θ_new = Σ_k (n_k/N) θ_τ,k, so θ_0 − θ_new = Σ_k (n_k/N) Δ_k (Flower's quantisation of the masked
  vectors adds a rounding error of the order of its clipping range / 2^bits, not modelled here).

An aggregate is an ordinary :class:`gradleak.fl.observation.Observation` whose ``aggregation`` field is an
:class:`Aggregation` (the clients' n_k, protocols and weights — public in every FL deployment: the
server configures the protocol and receives n_k); its ``num_images`` is N and its image slots are the
clients' batches one after another (slots n_1 + … + n_{k−1} … + n_k − 1 are client k's). The attacker's
differentiable re-run (:func:`observed_rerun`) evaluates (1) on its K·B candidate images, so every
optimisation attack applies unchanged: it optimises all N images at once. From the true data the re-run
reproduces the aggregate exactly (tests/test_secagg.py).

Label recovery on an aggregate works on the single-batch view (:func:`single_batch_view`): the update
divided by Σ_k w_k with client 1's protocol — exact for FedSGD clients of equal size (the mean of the
clients' mean gradients is the gradient of the mean loss over all N images), an approximation otherwise.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from gradleak.errors import UserError
from gradleak.fl.protocol import Protocol

if TYPE_CHECKING:  # pragma: no cover
    from gradleak.case import Case
    from gradleak.fl.observation import Observation

Params = dict[str, Tensor]
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


# --- the computation (1): the clients' true aggregate and the attacker's re-run -----------------------------

def aggregate_update(model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor,
                     agg: Aggregation, create_graph: bool = False) -> Params:
    """(1) on one batch ``x`` (N, C, H, W), ``y`` (N,): each client's own :func:`client_update` on its slots."""
    from gradleak.fl.client import client_update

    _check_batch(agg, x.shape[0])
    total: Params | None = None
    for sl, proto, w in zip(agg.slices(), agg.protocols, agg.weights):
        u = client_update(model, params, buffers, x[sl], y[sl], proto, create_graph=create_graph)
        total = {n: w * t for n, t in u.items()} if total is None else {n: total[n] + w * u[n] for n in total}
    return total


def aggregate_rerun(model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor, agg: Aggregation,
                    backend: str = "loop") -> Params:
    """The attacker's differentiable re-run of (1) for R restarts: ``x`` (R, N, C, H, W), ``y`` (R, N) or
    soft (R, N, K); each client's slots go through :func:`gradleak.fl.client.batched_update` with its own
    protocol, so the result is (R, *shape) per parameter, equal to :func:`aggregate_update` per restart."""
    from gradleak.fl.client import batched_update

    _check_batch(agg, x.shape[1])
    total: Params | None = None
    for sl, proto, w in zip(agg.slices(), agg.protocols, agg.weights):
        u = batched_update(model, params, buffers, x[:, sl], y[:, sl], proto, backend)
        total = {n: w * t for n, t in u.items()} if total is None else {n: total[n] + w * u[n] for n in total}
    return total


def observed_rerun(model: nn.Module, obs: "Observation", x: Tensor, y: Tensor, backend: str = "loop") -> Params:
    """What the attacker matches against ``obs.update``: the client's re-run (``batched_update``) for a
    single upload, (1) for an aggregate. ``x``: (R, num_images, C, H, W)."""
    from gradleak.fl.client import batched_update

    agg = getattr(obs, "aggregation", None)
    if agg is None:
        return batched_update(model, obs.parameters, obs.buffers, x, y, obs.protocol, backend)
    return aggregate_rerun(model, obs.parameters, obs.buffers, x, y, agg, backend)


def _check_batch(agg: Aggregation, n: int) -> None:
    if n != agg.num_images:
        raise UserError(f"aggregate: got {n} images; allowed: the {agg.num_images} of the aggregate's "
                        f"{agg.clients} clients ({', '.join(map(str, agg.sizes))})")


def single_batch_view(obs: "Observation") -> "Observation":
    """The aggregate seen as one client's upload of N images (for label recovery): the update divided by
    Σ_k w_k (a weighted mean of the Δ_k), client 1's protocol. Single uploads are returned unchanged."""
    agg = getattr(obs, "aggregation", None)
    if agg is None:
        return obs
    scale = sum(agg.weights)
    update = {n: t / scale for n, t in obs.update.items()} if scale not in (0.0, 1.0) else obs.update
    return dataclasses.replace(obs, update=update, protocol=agg.protocols[0], aggregation=None)


# --- building an aggregate ---------------------------------------------------------------------------------

def capture_aggregate(cases: list["Case"], reduction: str = "weighted_mean", seed: int = 0,
                      give_labels: bool = False) -> "Observation":
    """Simulate K clients under secure aggregation: each case is one client (same model and θ_0, its own
    batch and protocol); the server's Observation is the aggregate (1) of their uploads, computed by each
    client's own code (:func:`gradleak.case.capture`, in Δ = θ_0 − θ_τ). ``give_labels``: the server is
    given all N labels (in slot order) — the threat model's choice, as for one client. Client defenses are
    refused (the re-run would not model them); defenses on the aggregate belong to the caller."""
    from gradleak.case import capture
    from gradleak.fl.observation import Observation

    if not cases:
        raise UserError("aggregate: got no clients; allowed: one or more cases")
    first = cases[0]
    obs_k = []
    for k, case in enumerate(cases):
        if case.defenses:
            raise UserError(f"aggregate: client {k} has defenses {[d.name for d in case.defenses]}; allowed: none "
                            "(apply defenses to the aggregate)")
        if tuple(case.images.shape[1:]) != tuple(first.images.shape[1:]):
            raise UserError(f"aggregate: client {k} has images of shape {tuple(case.images.shape[1:])}; allowed: "
                            f"{tuple(first.images.shape[1:])} as client 0")
        obs_k.append(capture(case, seed=seed + k).as_delta())
    base = obs_k[0]
    for k, o in enumerate(obs_k[1:], 1):
        for n, t in base.parameters.items():
            if not torch.equal(o.parameters[n], t):
                raise UserError(f"aggregate: client {k} starts from other weights θ_0 ({n!r} differs); allowed: the "
                                "same global model for every client of the round")
    agg = Aggregation.of([o.num_images for o in obs_k], [o.protocol for o in obs_k], reduction)
    update = {n: sum(w * o.update[n] for w, o in zip(agg.weights, obs_k)) for n in base.update}
    labels = torch.cat([c.labels for c in cases]).clone() if give_labels else None
    return Observation(model_spec=base.model_spec, model=base.model, parameters=base.parameters,
                       buffers=base.buffers, update=update, protocol=agg.protocols[0], num_images=agg.num_images,
                       image_shape=base.image_shape, labels=labels, aggregation=agg,
                       extra={"aggregate": {"clients": agg.clients, "reduction": reduction}})


def aggregate_observation(parts: list["Observation"], reduction: str = "weighted_mean",
                          defenses: list[dict] | None = None, extra: dict | None = None) -> "Observation":
    """The aggregate (1) of already captured single-client Observations of one round (same θ_0): what a
    server running secure aggregation would have held instead of ``parts``."""
    from gradleak.fl.observation import Observation

    if not parts:
        raise UserError("aggregate: got no observations; allowed: one or more of the same round")
    parts = [p.as_delta() for p in parts]
    agg = Aggregation.of([p.num_images for p in parts], [p.protocol for p in parts], reduction)
    base = parts[0]
    update = {n: sum(w * p.update[n] for w, p in zip(agg.weights, parts)) for n in base.update}
    return Observation(model_spec=base.model_spec, model=base.model, parameters=base.parameters,
                       buffers=base.buffers, update=update, protocol=agg.protocols[0], num_images=agg.num_images,
                       image_shape=base.image_shape, aggregation=agg, defenses=list(defenses or []),
                       extra={"aggregate": {"clients": agg.clients, "reduction": reduction}, **(extra or {})})


__all__ = ["Aggregation", "REDUCTIONS", "weights_of", "aggregate_update", "aggregate_rerun", "observed_rerun",
           "single_batch_view", "capture_aggregate", "aggregate_observation", "delta_protocol"]
