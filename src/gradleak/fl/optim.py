"""The client's local optimizer as pure functions over parameter dicts, so that the same step serves the
simulated client (detached) and the attacker's differentiable re-run (``create_graph=True``, ``vmap``).

Each step mirrors ``torch.optim``'s single-tensor implementation operation by operation (same
``add``/``lerp``/``addcmul``/``addcdiv`` calls), with the state starting from zero as a fresh client's does
(a new optimizer every round, as FedAvg clients create one):

* SGD (``torch.optim.SGD``; momentum: Sutskever et al., 2013; Nesterov as in PyTorch):
    g ← g + λθ;  b ← g (first step) else μ b + (1 − d) g;  g ← g + μ b (Nesterov) else b;  θ ← θ − η g.
* Adam (Kingma & Ba, 2015, Algorithm 1) with L2 weight decay g ← g + λθ (``torch.optim.Adam``), and AdamW
  (Loshchilov & Hutter, 2019) with decoupled decay θ ← θ(1 − ηλ) (``torch.optim.AdamW``):
    m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;  θ ← θ − (η / (1 − β₁ᵗ)) m / (√v / √(1 − β₂ᵗ) + ε).

√v is taken as 0 with a zero derivative where v = 0 (a parameter whose gradient has been exactly 0),
so the second-order derivative through Adam stays finite instead of inf · 0 = NaN.
"""
from __future__ import annotations

import torch
from torch import Tensor

Params = dict[str, Tensor]


def _safe_sqrt(v: Tensor) -> Tensor:
    tiny = torch.finfo(v.dtype).tiny
    return torch.where(v > 0, v.clamp_min(tiny).sqrt(), torch.zeros_like(v))


def init_state() -> dict:
    """Optimizer state of a fresh client: step 0, no momentum buffer or moments yet."""
    return {"step": 0}


def optimizer_step(protocol, params: Params, grads: Params, state: dict) -> tuple[Params, dict]:
    """One local step of ``protocol.optimizer`` (see the module docstring); returns (new params, new state).
    Out of place: differentiable through ``params``, ``grads`` and the state."""
    lr, wd = protocol.lr, protocol.weight_decay
    t = state["step"] + 1
    new_p, new_s = {}, {"step": t}
    if protocol.optimizer == "sgd":
        mu, damp = protocol.momentum, protocol.dampening
        for n, p in params.items():
            g = grads[n]
            if wd != 0:
                g = g.add(p, alpha=wd)
            if mu != 0:
                buf = state.get(f"buf/{n}")
                buf = g if buf is None else buf.mul(mu).add(g, alpha=1 - damp)
                new_s[f"buf/{n}"] = buf
                g = g.add(buf, alpha=mu) if protocol.nesterov else buf
            new_p[n] = p.add(g, alpha=-lr)
        return new_p, new_s
    b1, b2 = protocol.betas
    eps = protocol.eps
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    step_size = lr / bc1
    bc2_sqrt = bc2 ** 0.5
    for n, p in params.items():
        g = grads[n]
        if wd != 0:
            if protocol.optimizer == "adamw":
                p = p.mul(1 - lr * wd)
            else:
                g = g.add(p, alpha=wd)
        m, v = state.get(f"m/{n}"), state.get(f"v/{n}")
        m = torch.zeros_like(g) if m is None else m
        v = torch.zeros_like(g) if v is None else v
        m = m.lerp(g, 1 - b1)
        v = v.mul(b2).addcmul(g, g, value=1 - b2)
        denom = (_safe_sqrt(v) / bc2_sqrt).add(eps)
        new_p[n] = p.addcdiv(m, denom, value=-step_size)
        new_s[f"m/{n}"], new_s[f"v/{n}"] = m, v
    return new_p, new_s
