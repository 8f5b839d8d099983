"""FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous Networks", Algorithm 2): the client
minimises its loss plus a proximal term that keeps it near the round's global weights w₀,
    h(w; w₀) = F(w) + (μ/2) ‖w − w₀‖²,
with the same local round as FedAvg (τ steps of the local optimizer on mini-batches), so each step is fed
    ∇h = ∇F(w) + μ (w − w₀),
and the upload is w₀ − w_τ in the stated convention, as FedAvg's. μ = 0 is FedAvg. (A PyTorch client
writes ``loss = ce + mu / 2 * sum(((p - p0) ** 2).sum() ...)``: the same gradient, tested.)"""
from __future__ import annotations

from gradleak.errors import bad_value
from gradleak.fl.protocols.base import ClientProtocol, Setting, register_protocol


@register_protocol("fedprox")
class FedProx(ClientProtocol):
    settings = (Setting("mu", None, "float", "FedProx's proximal weight μ (required with protocol fedprox)",
                        nullable=True, ge=0.0),)

    def check(self, p) -> None:
        if p.mu is None:
            raise bad_value("client.mu", None, "a number >= 0 with protocol fedprox (the proximal weight μ)")

    def direction(self, p, theta, theta0, grads, state):
        if not p.mu:
            return grads
        return {k: g.add(theta[k] - theta0[k], alpha=p.mu) for k, g in grads.items()}

    def describe(self, p, n: int) -> str:
        return super().describe(p, n) + f", proximal μ {p.mu}"
