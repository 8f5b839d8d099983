"""FedAvg (McMahan et al., 2017): τ local steps of an optimizer (SGD with momentum / dampening / Nesterov /
weight decay, Adam or AdamW — :mod:`gradleak.fl.optim`, state from zero) on local mini-batches of size b,
    θ_{t+1} = OptStep(θ_t, ∇_θ (1/b) Σ_{i ∈ batch_t} ℓ(f_{θ_t}(N(x_i)), y_i)),
uploading θ_0 − θ_τ in the stated convention — :class:`gradleak.fl.protocols.base.ClientProtocol`'s
default round, unchanged."""
from __future__ import annotations

from gradleak.fl.protocols.base import ClientProtocol, register_protocol


@register_protocol("fedavg")
class FedAvg(ClientProtocol):
    pass
