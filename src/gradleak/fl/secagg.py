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

Label recovery on an aggregate works on the single-batch view (:meth:`Observation.as_one_batch`): the update
divided by Σ_k w_k with client 1's protocol — exact for FedSGD clients of equal size (the mean of the
clients' mean gradients is the gradient of the mean loss over all N images), an approximation otherwise.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from gradleak.errors import UserError
from gradleak.fl.aggregation import REDUCTIONS, Aggregation, Reduction, delta_protocol, weights_of  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from gradleak.fl.observation import Observation

Params = dict[str, Tensor]


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


# --- building an aggregate ---------------------------------------------------------------------------------

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
           "aggregate_observation", "delta_protocol"]
