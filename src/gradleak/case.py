"""A Case is the client side of one audit: victim model, private batch, protocol, defense chain.
``capture`` runs the client and returns the Observation the server would hold.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gradleak.defenses import ClientContext, Defense
from gradleak.errors import UserError
from gradleak.fl.aggregation import Aggregation
from gradleak.fl.client import bn_batch_statistics, client_update, split_state
from gradleak.fl.observation import Observation
from gradleak.fl.protocol import Protocol
from gradleak.fl.protocols import from_delta, to_delta


@dataclass
class Case:
    model: nn.Module
    images: Tensor  # (B, C, H, W) in [0, 1]
    labels: Tensor  # (B,)
    protocol: Protocol = field(default_factory=Protocol)
    defenses: list[Defense] = field(default_factory=list)
    model_spec: dict | None = None  # how the server rebuilds the model; inferred when None
    give_labels: bool = False  # threat model: does the server receive the labels?


def model_spec_of(model: nn.Module, images: Tensor, num_classes: int | None = None) -> dict:
    """Architecture id for the Observation; models built by gradleak carry ``gradleak_spec``."""
    spec = getattr(model, "gradleak_spec", None)
    if spec is not None:
        return dict(spec)
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model.eval()(images[:1]).shape[-1])
    return {"name": getattr(model, "gradleak_name", type(model).__name__), "num_classes": num_classes,
            "in_channels": images.shape[1], "resolution": images.shape[-1], "options": {}}


def rebuildable(spec: dict) -> bool:
    """Whether ``spec`` names a registered model or a ``package.module:factory`` path (else the Observation
    keeps the model object, and loading it back from a file needs ``Observation.load(path, model=...)``)."""
    from gradleak.models import MODELS

    name = spec.get("name")
    return isinstance(name, str) and (name.lower() in MODELS or ":" in name)


def capture(case: Case, seed: int = 0) -> Observation:
    """Simulate the client: compute its upload, apply the defense chain φ, package what the server sees.

    The defense chain acts on the update as Δ = θ_0 − θ_τ (what a real client clips, noises or sparsifies),
    which is then stated in the protocol's ``update`` convention; the protocol's extra uploads (SCAFFOLD's
    Δc) are computed from the defended Δ. The protocol's state (``protocol.state``, zeros when unset) is
    known to the server and kept on the Observation's protocol."""
    params, buffers = split_state(case.model)
    proto = case.protocol.with_state(case.protocol.state_or_initial(params))
    if case.defenses:
        as_delta = dataclasses.replace(proto, update="old_minus_new") if not proto.rule.uploads_gradient else proto
        delta = client_update(case.model, params, buffers, case.images, case.labels, as_delta)
        ctx = ClientContext(case.model, params, buffers, case.images, case.labels, as_delta,
                            torch.Generator().manual_seed(seed))
        for d in case.defenses:
            delta = d.apply(delta, ctx)
        update = from_delta(delta, params, proto.update)
    else:  # computed in the stated convention directly (new weights exactly θ_τ)
        update = client_update(case.model, params, buffers, case.images, case.labels, proto)
        delta = to_delta(update, params, proto.update)
    extra = proto.rule.extra_uploads(proto, delta, case.images.shape[0], proto.state)
    bn = bn_batch_statistics(case.model, params, buffers, case.images, proto) if proto.share_bn_stats else None
    spec = case.model_spec or model_spec_of(case.model, case.images)
    rebuilt = rebuildable(spec)
    return Observation(  # the server's copies of the victim are copied from the client's model, not rebuilt
        model_spec=spec, model=None if rebuilt else case.model, template=case.model if rebuilt else None,
        parameters=params, buffers=buffers, update=update, protocol=proto.server_view(),
        num_images=case.images.shape[0], image_shape=tuple(case.images.shape[1:]),
        labels=case.labels.clone() if case.give_labels else None, bn_stats=bn,
        defenses=[d.describe() for d in case.defenses], extra_uploads=extra,
    )


def capture_aggregate(cases: list[Case], reduction: str = "weighted_mean", seed: int = 0,
                      give_labels: bool = False) -> Observation:
    """Simulate K clients under secure aggregation: each case is one client (same model and θ_0, its own
    batch and protocol); the server's Observation is the aggregate (1) of their uploads, computed by each
    client's own code (:func:`capture`, in Δ = θ_0 − θ_τ; the
    aggregate is :mod:`gradleak.fl.secagg`'s eq. 1). ``give_labels``: the server is
    given all N labels (in slot order) — the threat model's choice, as for one client. Client defenses are
    refused (the re-run would not model them); defenses on the aggregate belong to the caller."""
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
    return Observation(model_spec=base.model_spec, model=base.model, template=base.template, parameters=base.parameters,
                       buffers=base.buffers, update=update, protocol=agg.protocols[0], num_images=agg.num_images,
                       image_shape=base.image_shape, labels=labels, aggregation=agg,
                       extra={"aggregate": {"clients": agg.clients, "reduction": reduction}})
