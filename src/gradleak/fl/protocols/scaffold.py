"""SCAFFOLD (Karimireddy et al., 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", Algorithm 1 with option II). The server holds its control variate c and each client its own
c_i. A client starting from the server's weights x takes K local steps
    y ← y − η (g_i(y) − c_i + c)
(here: the corrected gradient g_i(y) − c_i + c is what the local optimizer is fed, which for plain SGD is
exactly the line above), then updates its control variate (option II)
    c_i⁺ = c_i − c + (x − y) / (K η)
and uploads Δy = y − x (here in the stated ``update`` convention, x − y by default) and
Δc = c_i⁺ − c_i = −c + (x − y) / (K η).

Threat model (docs/protocols.md): the honest-but-curious server knows c (its own state) and c_i — the
sum of the Δc this client uploaded before (zero at its first participation, as c_i is initialised to 0),
so both are the Observation's known state (``Protocol.state``: ``server_control``, ``client_control``).
Δc is computed from the (defended) Δ: a defense on the model update then covers Δc, which would
otherwise hand the attacker the undefended Δ = K η (Δc + c); without a defense it is exactly the line
above. A simulated client with no state given starts from zeros (c = c_i = 0, a first round)."""
from __future__ import annotations

from gradleak.fl.protocols.base import ClientProtocol, register_protocol


@register_protocol("scaffold")
class Scaffold(ClientProtocol):
    state = ("server_control", "client_control")
    uploads = ("control_update",)

    def direction(self, p, theta, theta0, grads, state):
        c, ci = state["server_control"], state["client_control"]
        return {k: g - ci[k] + c[k] for k, g in grads.items()}

    def extra_uploads(self, p, delta, n, state):
        K = len(self.schedule(p, n))
        c = state["server_control"]
        return {"control_update": {k: d / (K * p.lr) - c[k] for k, d in delta.items()}}

    def gradient_offset(self, p, state):
        c, ci = state["server_control"], state["client_control"]
        return {k: c[k] - ci[k] for k in c}

    def describe(self, p, n: int) -> str:
        if p.state is None:
            return super().describe(p, n) + ", control variates c, c_i known to the server"
        norm = {k: sum(float(t.double().pow(2).sum()) for t in d.values()) ** 0.5 for k, d in p.state.items()}
        return (super().describe(p, n) + f", control variates known to the server (‖c‖ = "
                f"{norm['server_control']:.3g}, ‖c_i‖ = {norm['client_control']:.3g}"
                + ("; zero: a first round" if not any(norm.values()) else "") + ")")
