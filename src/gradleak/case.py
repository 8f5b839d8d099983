"""A Case is the client side of one audit: victim model, private batch, protocol, defense chain.
``capture`` runs the client and returns the Observation the server would hold.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gradleak.defenses import ClientContext, Defense
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
    return Observation(
        model_spec=spec, model=None if rebuildable(spec) else case.model,
        parameters=params, buffers=buffers, update=update, protocol=proto.server_view(),
        num_images=case.images.shape[0], image_shape=tuple(case.images.shape[1:]),
        labels=case.labels.clone() if case.give_labels else None, bn_stats=bn,
        defenses=[d.describe() for d in case.defenses], extra_uploads=extra,
    )
