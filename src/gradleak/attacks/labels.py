"""Label recovery from the last layer's update.

Notation: the client's batch has n images, n_k of class k; the last layer is logits = W h + b, K classes;
p_i = softmax(logits_i). For the mean cross-entropy of one batch (label smoothing ε: targets
(1 − ε)·onehot + ε/K),

    ∂L/∂b_k = (1/n) Σ_i p_ik − ((1 − ε) n_k + ε n / K) / n,        ∂L/∂W_k = (1/n) Σ_i (p_ik − ỹ_ik) h_i.   (1)

The method, selected from what the Observation states (last layer with or without bias, protocol, loss):

* **Averaged gradient** ḡ: the upload itself for FedSGD; for FedAvg with SGD ḡ = Δ / (η τ_eff) − λ θ_0,
  Δ = θ_0 − θ_τ (the *averaged-gradient approximation* of Geng et al., 2021, "Towards General Deep Leakage
  in Federated Learning", §3.2: the τ local gradients taken as one; τ_eff = the sum of the optimizer's
  coefficients on τ equal gradients: τ for plain SGD, more with momentum).
* **Stage 1, classes certainly present** (the sign rule: iDLG, Zhao et al., 2020, for n = 1; Yin et al.,
  2021, GradInversion §3.2, for distinct labels; stage 1 of LLG, Wainakh et al., 2022): the evidence
  s_k = Σ_j ḡ_W,kj + ḡ_b,k (row sum of the weight plus the bias, as before; with non-negative features h
  both terms of an absent class are ≥ 0 by (1)) plus (ε/K)(ō + 1) is ≥ 0 for every absent class, so every
  class with a negative value is in the batch (exact in FedSGD; in FedAvg with SGD every local step adds
  a non-negative term for an absent class). More than n such classes (noise, signed features): the n most
  negative. Exact for n = 1.
* **Stage 2, the remaining slots** (repeated labels, or a present class whose summed probability exceeds
  its count, Σ_i p_ik > n_k — a model that predicts it confidently for every input, which makes its
  update positive although it is present): label counts estimated from (1) as
  n̂_k = n (p̄_k − ε/K − c_k) / (1 − ε), c_k = ḡ_b,k (Σ_j ḡ_W,kj / ō without a bias), with p̄ the
  model's mean softmax and ō its mean feature sum Σ_j h_j over dummy inputs (uniform images: the attacker
  knows no data) — the label-count estimate of Geng et al. (2021, §3.2; dummy data as in LLG+ of Wainakh et al., 2022).
  Each slot takes the class with the largest remaining count n̂_k − (times already taken): the greedy
  rounding of LLG's stage 2 and of iLRG (Ma et al., 2023).

Counts need a known scale and cross-entropy: with Adam/AdamW (no linear scale), class weights or a custom
loss, stage 2 falls back to ranking by evidence (the classes with the most negative s_k not yet taken).
Stage 2 is where the method can err: p̄ on dummy inputs approximates the batch's Σ_i p_ik / n well for a
model whose outputs barely depend on the input (an untrained network) and less well for a trained one;
in FedAvg the model also learns during the τ local steps, which the approximation ignores; an update rescaled by a clip the server cannot undo scales s_k and biases n̂ (stage 1 is scale-free).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gradleak.errors import UserError
from gradleak.fl.client import client_inputs
from gradleak.fl.observation import Observation
from gradleak.fl.optim import init_state, optimizer_step

DUMMY_IMAGES = 64  # dummy inputs for p̄ and ō (stage 2)


def last_linear_names(model: nn.Module) -> tuple[str, str | None]:
    """Parameter names (weight, bias) of the model's last nn.Linear layer."""
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    if last is None:
        raise UserError("attack.labels: 'recover' needs a model with a final nn.Linear layer")
    bias = f"{last}.bias" if getattr(model.get_submodule(last), "bias", None) is not None else None
    return f"{last}.weight", bias


def effective_steps(obs: Observation) -> float | None:
    """τ_eff with Δ ≈ η τ_eff ḡ: the sum of the local optimizer's coefficients on τ equal gradients (SGD
    with momentum/dampening/Nesterov via :func:`gradleak.fl.optim.optimizer_step`); 1/η for FedSGD (the
    upload is ḡ); None for Adam/AdamW, whose update has no linear scale."""
    p = obs.protocol
    if p.rule.uploads_gradient:
        return 1.0 / p.lr
    if p.optimizer != "sgd":
        return None
    q = dataclasses.replace(p, weight_decay=0.0)
    theta, state = {"x": torch.zeros((), dtype=torch.float64)}, init_state()
    for _ in range(len(p.schedule(obs.num_images))):
        theta, state = optimizer_step(q, theta, {"x": torch.ones((), dtype=torch.float64)}, state)
    return float(-theta["x"]) / p.lr


def averaged_gradient(obs: Observation, name: str, steps: float | None = None) -> Tensor | None:
    """ḡ of parameter ``name`` (float64) of an upload given as Δ (:meth:`Observation.as_delta`): the FedSGD
    upload, or Δ / (η τ_eff) − λ θ_0 − o for local SGD (Geng et al., 2021), o the known constant the protocol
    adds to each local gradient (SCAFFOLD's c − c_i; FedProx's μ (θ − θ_0) vanishes at θ_0 and is ignored like
    the model's own drift); None where the update has no linear scale (Adam). ``steps``: τ_eff when known."""
    steps = effective_steps(obs) if steps is None else steps
    if steps is None:
        return None
    p = obs.protocol
    g = obs.update[name].double() / (p.lr * steps)
    if not p.rule.uploads_gradient and p.weight_decay:
        g = g - p.weight_decay * obs.parameters[name].double()
    offset = None if p.rule.uploads_gradient else p.rule.gradient_offset(p, p.state)
    if offset is not None:
        g = g - offset[name].double()
    return g


@torch.no_grad()
def dummy_statistics(obs: Observation, model: nn.Module, images: int = DUMMY_IMAGES,
                     seed: int = 0) -> tuple[Tensor, float]:
    """(p̄, ō): the model's mean softmax and the mean feature sum Σ_j h_j entering the last linear layer over
    ``images`` uniform dummy images, as the client's forward runs them (input normalization, BN mode); the
    model's parameters, buffers and mode are left untouched."""
    w, _ = last_linear_names(model)
    layer = model.get_submodule(w.rsplit(".", 1)[0] if "." in w else "")
    device = next(iter(obs.update.values())).device
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(images, *obs.image_shape, generator=gen).to(device)
    feats: list[Tensor] = []
    hook = layer.register_forward_pre_hook(lambda _m, inp: feats.append(inp[0].detach()))
    was_training = model.training
    model.train(obs.protocol.bn_mode == "train")
    try:
        state = {**obs.parameters, **{k: v.clone() for k, v in obs.buffers.items()}}
        logits = functional_call(model, state, (client_inputs(obs.protocol, x),))
    finally:
        hook.remove()
        model.train(was_training)
    p_bar = logits.double().softmax(-1).mean(0)
    o_bar = float(feats[0].double().flatten(1).sum(1).mean())
    return p_bar, o_bar


@dataclass
class LastLayer:
    """The upload as label recovery reads it, taken from the Observation once (:func:`last_layer`): the last
    linear layer's ḡ_W, ḡ_b (the averaged-gradient scale; the raw Δ where the update has none, ``scaled``
    False: only signs and order count then), the batch size n, the label smoothing ε, whether label counts
    exist (cross-entropy without class weights, with a linear scale) and the dummy statistics (p̄, ō), computed
    on first use only (a forward pass over the dummy images: stage 2 and label smoothing need them, the sign rule
    alone does not)."""

    n: int
    g_w: Tensor
    g_b: Tensor | None
    scaled: bool
    smoothing: float
    countable: bool
    dummy: Callable[[], tuple[Tensor, float]] = field(repr=False)

    @functools.cached_property
    def statistics(self) -> tuple[Tensor, float]:
        """(p̄, ō) of :func:`dummy_statistics`, once."""
        return self.dummy()


def last_layer(obs: Observation, model: nn.Module) -> LastLayer:
    """:class:`LastLayer` of ``obs`` in any update convention; a secure aggregate is read as one batch of its N
    images (:meth:`Observation.as_one_batch`)."""
    obs = obs.as_delta().as_one_batch()
    p, (w, b), steps = obs.protocol, last_linear_names(model), effective_steps(obs)
    g = {k: averaged_gradient(obs, k, steps) if steps is not None else obs.update[k].double()
         for k in (w, b) if k is not None}
    return LastLayer(n=obs.num_images, g_w=g[w], g_b=g.get(b), scaled=steps is not None,
                     smoothing=p.label_smoothing,
                     countable=steps is not None and p.loss == "cross_entropy" and p.class_weights is None,
                     dummy=functools.partial(dummy_statistics, obs, model))


def class_scores(view: LastLayer) -> Tensor:
    """Per-class evidence s_k (lower = more likely present): the weight rows' sums plus the bias (iDLG's
    evidence, both terms share the sign of (1)), shifted by (ε/K)(ō + 1 with a bias) under label smoothing ε
    so that absent classes keep s ≥ 0 (eq. 1; only where the update has a linear scale)."""
    s = view.g_w.sum(1) + (view.g_b if view.g_b is not None else 0)
    if not view.smoothing or not view.scaled:
        return s
    return s + view.smoothing / s.numel() * (view.statistics[1] + (1.0 if view.g_b is not None else 0.0))


def estimate_counts(view: LastLayer) -> Tensor | None:
    """n̂_k = n (p̄_k − ε/K − c_k) / (1 − ε), c_k = ḡ_b,k (Σ_j ḡ_W,kj / ō without a bias): Geng et al.
    (2021, §3.2), see the module docstring. None where the protocol gives no count (Adam, class weights, a
    custom loss)."""
    if not view.countable:
        return None
    s = view.g_b if view.g_b is not None else view.g_w.sum(1)
    p_bar, o_bar = view.statistics
    eps, k = view.smoothing, s.numel()
    o = 1.0 if view.g_b is not None else o_bar
    return view.n * (p_bar.to(s.device) - eps / k - s / o) / (1 - eps)


@dataclass
class LabelRecovery:
    """What :func:`explain_labels` found: the labels, which came from the sign rule (stage 1) and how the
    rest were chosen (stage 2: ``counts`` or ``ranking``), and the per-class evidence and counts."""

    labels: Tensor
    certain: list[int]
    stage2: str | None
    scores: Tensor
    counts: Tensor | None


def explain_labels(obs: Observation, model: nn.Module) -> LabelRecovery:
    """:func:`recover_labels` with its intermediate quantities (see the module docstring), read from the
    upload's :func:`last_layer` view."""
    view = last_layer(obs, model)
    n = view.n
    scores = class_scores(view)
    negative = [int(k) for k in scores.argsort() if scores[k] < 0]
    certain = negative[:n]
    picked = list(certain)
    counts, stage2 = None, None
    if len(picked) < n:
        counts = estimate_counts(view)
        if counts is not None:
            stage2, remaining = "counts", counts.clone()
            for c in picked:
                remaining[c] -= 1
            while len(picked) < n:
                c = int(remaining.argmax())
                picked.append(c)
                remaining[c] -= 1
        else:
            stage2 = "ranking"
            rest = [int(k) for k in scores.argsort() if int(k) not in picked]
            if len(rest) < n - len(picked):
                raise UserError(f"attack.labels: got a batch of {n} with {scores.numel()} classes and no label counts "
                                "for this protocol (Adam, class weights or a custom loss); allowed: a batch no "
                                "larger than the number of classes")
            picked += rest[: n - len(picked)]
    labels = torch.tensor(sorted(picked), dtype=torch.long, device=scores.device)
    return LabelRecovery(labels=labels, certain=certain, stage2=stage2, scores=scores, counts=counts)


def recover_labels(obs: Observation, model: nn.Module) -> Tensor:
    """The batch's labels (sorted; a multiset: repeated labels are allowed) from the last layer's update:
    the sign rule for the classes certainly present (iDLG / Yin et al., 2021), label counts for the rest
    (Geng et al., 2021, averaged gradient for FedAvg). See the module docstring."""
    return explain_labels(obs, model).labels


def label_accuracy(recovered: Tensor, true: Tensor) -> float:
    """Fraction of true labels recovered, order-free (multiset intersection / B)."""
    k = int(max(recovered.max(), true.max())) + 1
    a, b = torch.bincount(recovered.cpu(), minlength=k), torch.bincount(true.cpu(), minlength=k)
    return float(torch.minimum(a, b).sum()) / len(true)
