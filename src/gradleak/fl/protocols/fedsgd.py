"""FedSGD (McMahan et al., 2017): the upload is the gradient of the mean batch loss,
    g = ∇_θ (1/B) Σ_i ℓ(f_θ(N(x_i)), y_i)."""
from __future__ import annotations

from gradleak.errors import bad_value
from gradleak.fl.protocols.base import ClientProtocol, register_protocol


@register_protocol("fedsgd")
class FedSGD(ClientProtocol):
    uploads_gradient = True

    def check(self, p) -> None:
        # FedSGD uploads the gradient: optimizer settings would be silently ignored, so refuse them
        for key, default in (("optimizer", "sgd"), ("momentum", 0.0), ("weight_decay", 0.0),
                             ("nesterov", False), ("update", "old_minus_new")):
            if getattr(p, key) != default:
                raise bad_value(f"client.{key}", getattr(p, key),
                                f"{default} with protocol fedsgd (it uploads the gradient; "
                                f"use protocol fedavg for local optimizer steps)")

    def schedule(self, p, n: int):
        return (tuple(range(n)),)

    def run(self, p, theta0, grad, n, state, between=None):
        return grad(theta0, tuple(range(n)))

    def describe(self, p, n: int) -> str:
        return "fedsgd"
