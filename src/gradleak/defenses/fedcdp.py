"""FedCDP (Wei et al., 2021): per-example clipping and Gaussian noise on the client, with its (ε, δ).

ROG paper §5.1, eq. (17)–(18). At every local step the client computes the gradient g_i of every example
i of its mini-batch (b examples) and clips **every layer** ℓ (parameter tensor) separately,

    ĝ_{i,ℓ} = g_{i,ℓ} / max(1, ‖g_{i,ℓ}‖₂ / C),                                        (17)

then adds Gaussian noise to the sum and averages (DP-SGD, Abadi et al., 2016, which FedCDP follows),

    ḡ = (1/b) (Σ_i ĝ_i + n),   n ~ N(0, σ² C² I),                                         (18)

and takes the SGD step with ḡ (FedSGD uploads ḡ; FedAvg uploads Δ = θ_0 − θ_τ after τ such steps).

Per-example gradients are computed in one call with ``torch.func.vmap`` over ``torch.func.grad`` of
the single-example loss via ``functional_call`` — no Python loop over examples. BatchNorm cannot be
evaluated on a single example in train mode (and per-example DP needs examples that do not interact), so
**the model runs in eval mode (running statistics) for FedCDP**, whatever ``client.bn_mode`` says; for
an exact attacker forward model on a BN network set ``client.bn_mode: eval``. BN-free models (LeNet,
``convnet`` with ``batchnorm: false``) are unaffected. A PRECODE model's noise under the per-example
vmap is the first row of its seeded noise for every example (documented limitation).

Noise strength, exactly one of:

* ``epsilon`` (with ``delta``): the privacy target. σ is the smallest noise that Opacus' RDP accountant
  certifies as giving (ε, δ) for the stated setting below,
  σ = √L · ``opacus.accountants.utils.get_noise_multiplier``(ε, δ, q, T), fixed for every step
  (:func:`sigma_for_epsilon`); the accounted ε of that σ is ≤ the target (Opacus' search stops within
  0.01 of it).
* ``sigma`` directly.
* ``snr_db``, a target SNR over the clipped gradient as the ROG paper uses ("we treat the clipped gradient
  ĝ as the raw signal"): σ = ‖Σ_i ĝ_i‖ / (C √(d · 10^(SNR/10))) with d the number of parameters, set at
  every local step. An SNR carries no privacy guarantee by itself: σ then depends on the data, and the
  ε it maps to is only reported.

Whichever is given, ``describe()`` reports all of them: σ used, z = σ/√L, the accounted ε (and the
target), and the realised SNR of the first step, 10·log10(‖Σ_i ĝ_i‖² / (d σ² C²)).

Privacy accounting (Opacus ``RDPAccountant``, Mironov 2017 / sampled Gaussian mechanism). Clipping each
of the L layers to C bounds an example's contribution to the joined gradient by C√L, and the noise per
coordinate is σC, so the noise multiplier with respect to the sensitivity is z = σ / √L. The stated
setting: the client holds ``dataset_size`` examples and samples its mini-batch of b with rate
q = b / ``dataset_size`` (Poisson-sampling approximation, as Opacus assumes); the client takes part in
``rounds`` rounds of τ local steps each (T = rounds · τ noisy steps, FedSGD: τ = 1), each with the σ
of this round; δ = ``delta``. ``describe()`` reports ε and the mapping SNR → ε for this setting
(:func:`snr_epsilon_table`, which can also be called and printed on its own).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Annotated, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

from gradleak.defenses.base import AttackerView, ClientContext, Defense, Params, check, register
from gradleak.errors import UserError
from gradleak.fl.protocol import Protocol

ROG_SNRS_DB = (-20.0, -15.0, -10.0, -5.0, 0.0)


def per_example_grads(model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor) -> Params:
    """{name: (b, *shape)} gradients of CE(f(x_i), y_i) for every example, via vmap(grad(·)).
    The model must already be in the mode wanted (FedCDP: eval)."""

    def loss_one(p, bufs, xi, yi):
        return F.cross_entropy(functional_call(model, {**p, **bufs}, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    return torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, None, 0, 0))(params, buffers, x, y)


def clip_per_example(grads: Params, clip: float) -> Params:
    """Eq. (17): every layer of every example scaled to norm ≤ C."""
    out = {}
    for n, g in grads.items():
        norms = g.reshape(g.shape[0], -1).norm(dim=1)
        factor = 1.0 / torch.clamp(norms / clip, min=1.0)
        out[n] = g * factor.reshape(-1, *([1] * (g.dim() - 1)))
    return out


def sigma_for_snr(clipped_sum: Params, clip: float, snr_db: float) -> float:
    """σ with ‖Σ ĝ_i‖² / (d σ² C²) = 10^(SNR/10)."""
    sq = sum(float(t.double().pow(2).sum()) for t in clipped_sum.values())
    d = sum(t.numel() for t in clipped_sum.values())
    return math.sqrt(sq / (d * 10 ** (snr_db / 10))) / clip


@functools.lru_cache(maxsize=256)
def sigma_for_epsilon(epsilon: float, delta: float, sample_rate: float, steps: int, num_layers: int) -> float:
    """σ for a target (ε, δ): Opacus' ``get_noise_multiplier`` (RDP accountant) for sample rate q and
    T = ``steps`` noisy steps gives the noise multiplier z w.r.t. the sensitivity C√L of the per-layer
    clipping, so σ = z·√L (module docstring). One-line UserError when the target cannot be met."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z = get_noise_multiplier(target_epsilon=float(epsilon), target_delta=float(delta),
                                     sample_rate=float(sample_rate), steps=int(steps), accountant="rdp")
    except ValueError as err:  # opacus: "The privacy budget is too low."
        raise UserError(f"defense fedcdp.epsilon: got {epsilon}; allowed: a target reachable for "
                        f"sample rate {sample_rate:g}, {steps} steps, delta {delta:g} (opacus: {err})") from None
    return float(z) * math.sqrt(num_layers)


def realised_snr_db(clipped: Params, clip: float, sigma: float) -> float:
    """10·log10(‖Σ ĝ_i‖² / (d σ² C²)): the SNR a given σ gives over the clipped gradient (∞ for σ = 0)."""
    if sigma <= 0:
        return math.inf
    sq = sum(float(t.double().pow(2).sum()) for t in clipped.values())
    d = sum(t.numel() for t in clipped.values())
    return 10 * math.log10(max(sq, 1e-300) / (d * sigma ** 2 * clip ** 2))


def fedcdp_epsilon(sigma: float | Sequence[float], num_layers: int, sample_rate: float, rounds: int,
                   delta: float) -> float:
    """ε of FedCDP with Opacus' RDP accountant: per round one noisy step per entry of ``sigma`` (the σ of
    each local step), noise multiplier z = σ/√L, sample rate q, repeated for ``rounds`` rounds."""

    sigmas = [sigma] if isinstance(sigma, (int, float)) else list(sigma)
    if any(s <= 0 for s in sigmas):
        return math.inf
    return _accounted(tuple(float(s) for s in sigmas), int(num_layers), float(sample_rate), int(rounds), float(delta))


@functools.lru_cache(maxsize=4096)
def _accounted(sigmas: tuple[float, ...], num_layers: int, sample_rate: float, rounds: int, delta: float) -> float:
    """:func:`fedcdp_epsilon`'s accountant call, cached: the RDP orders cost about a second per call, and a
    FedAvg simulation asks the same question at every local round."""
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(s / math.sqrt(num_layers), sample_rate, rounds) for s in sigmas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus warns when the optimal order is at the edge of the grid
        eps = float(acc.get_epsilon(delta=delta))
    return eps if math.isfinite(eps) else math.inf


def clipped_sum(model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor, clip: float) -> Params:
    """Σ_i ĝ_i over the batch (eval-mode model)."""
    g = clip_per_example(per_example_grads(model, params, buffers, x, y), clip)
    return {n: t.sum(0) for n, t in g.items()}


def snr_epsilon_table(model: nn.Module, params: Params, buffers: Params, images: Tensor, labels: Tensor,
                      protocol: Protocol | None = None, clip: float = 4.0, dataset_size: int = 500,
                      rounds: int = 100, delta: float = 1e-5,
                      snrs_db: Sequence[float] = ROG_SNRS_DB) -> list[dict]:
    """For a setting (victim at θ_0, the client's batch, protocol) the σ each target SNR over the clipped
    first-step gradient needs and the ε it gives (FedSGD: one noisy step per round; FedAvg: τ steps
    with the same σ). Rows ``{snr_db, sigma, noise_multiplier, epsilon}``."""
    protocol = protocol or Protocol()
    sched = protocol.schedule(images.shape[0])
    idx = list(sched[0])
    was = model.training
    model.eval()
    try:
        s = clipped_sum(model, params, buffers, images[idx], labels[idx], clip)
    finally:
        model.train(was)
    L = len(params)
    q = len(idx) / dataset_size
    rows = []
    for snr in snrs_db:
        sigma = sigma_for_snr(s, clip, snr)
        rows.append({"snr_db": float(snr), "sigma": sigma, "noise_multiplier": sigma / math.sqrt(L),
                     "epsilon": fedcdp_epsilon([sigma] * len(sched), L, q, rounds, delta)})
    return rows


def format_snr_epsilon_table(rows: list[dict], title: str = "") -> str:
    """Markdown table of :func:`snr_epsilon_table` rows."""
    lines = ([title, ""] if title else []) + ["| SNR (dB) | σ | z = σ/√L | ε |", "|---:|---:|---:|---:|"]
    for r in rows:
        eps = "∞" if math.isinf(r["epsilon"]) else f"{r['epsilon']:.4g}"
        lines.append(f"| {r['snr_db']:g} | {r['sigma']:.4g} | {r['noise_multiplier']:.4g} | {eps} |")
    return "\n".join(lines)


def print_snr_epsilon_table(*args, **kwargs) -> list[dict]:
    """:func:`snr_epsilon_table`, printed as Markdown; returns the rows."""
    rows = snr_epsilon_table(*args, **kwargs)
    print(format_snr_epsilon_table(rows))
    return rows


@register
class FedCDP(Defense):
    """FedCDP (Wei et al., 2021; ROG eq. 17–18): per-example per-layer clipping to C, Gaussian noise σC
    on the sum, then the mean; σ from a target (ε, δ) via Opacus, given directly, or from a target SNR
    (dB) over the clipped gradient. Reports σ, the realised SNR and (ε, δ) from Opacus' RDP accountant
    for the stated setting (see module docstring)."""

    name = "fedcdp"
    recomputes = True

    def __init__(self, clip: Annotated[float, Field(gt=0)] = 4.0, sigma: Annotated[float, Field(ge=0)] | None = None,
                 snr_db: float | None = None, epsilon: Annotated[float, Field(gt=0)] | None = None,
                 dataset_size: Annotated[int, Field(ge=1)] = 500,
                 rounds: Annotated[int, Field(ge=1)] = 100, delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5,
                 attacker_knows: bool = True):
        check(self.name, "clip", clip > 0 and math.isfinite(clip), clip, "a number > 0")
        check(self.name, "sigma", sigma is None or (sigma >= 0 and math.isfinite(sigma)), sigma, "a number >= 0")
        given = [k for k, v in (("epsilon", epsilon), ("sigma", sigma), ("snr_db", snr_db)) if v is not None]
        check(self.name, given[1] if len(given) > 1 else "epsilon", len(given) == 1,
              ", ".join(given) or "none", "exactly one of epsilon, sigma and snr_db")
        check(self.name, "epsilon", epsilon is None or (epsilon > 0 and math.isfinite(epsilon)), epsilon,
              "a finite number > 0")
        check(self.name, "snr_db", snr_db is None or math.isfinite(snr_db), snr_db, "a finite number of dB")
        check(self.name, "dataset_size", dataset_size >= 1, dataset_size, "an integer >= 1")
        check(self.name, "rounds", rounds >= 1, rounds, "an integer >= 1")
        check(self.name, "delta", 0 < delta < 1, delta, "a number in (0, 1)")
        self.clip = float(clip)
        self.sigma = None if sigma is None else float(sigma)
        self.snr_db = None if snr_db is None else float(snr_db)
        self.epsilon = None if epsilon is None else float(epsilon)
        self.dataset_size, self.rounds, self.delta = int(dataset_size), int(rounds), float(delta)
        self.attacker_knows = attacker_knows
        self._report: dict = {}
        self._accounting: tuple | None = None

    @classmethod
    def attacker_view(cls, told: dict) -> AttackerView:
        sigma = told.get("sigma") if told.get("sigma") is not None else told.get("sigma_used")
        return AttackerView(noise=True, noise_sigma=sigma if isinstance(sigma, (int, float)) else None,
                            clip=told.get("clip"))

    def apply(self, update: Params, ctx: ClientContext) -> Params:
        model, proto = ctx.model, ctx.protocol
        x, y = ctx.images, ctx.labels
        if proto.kind not in ("fedsgd", "fedavg"):  # the two rounds Fed-CDP's own clipped SGD replaces
            raise UserError(f"defense fedcdp: got client.protocol {proto.kind!r}; allowed: fedsgd | fedavg "
                            "(Fed-CDP runs per-example clipped plain SGD)")
        for key in ("optimizer", "momentum", "weight_decay", "loss", "label_smoothing", "class_weights", "mean",
                    "update"):  # Fed-CDP replaces the local round by its own per-example clipped plain SGD
            if getattr(proto, key) != getattr(Protocol(), key):
                raise UserError(f"defense fedcdp: got client.{key} {getattr(proto, key)!r}; allowed: the default "
                                f"{getattr(Protocol(), key)!r} (Fed-CDP runs per-example clipped plain SGD)")
        sched = proto.schedule(x.shape[0])
        b = len(sched[0])
        if b > self.dataset_size:
            raise UserError(f"defense fedcdp.dataset_size: got {self.dataset_size}; allowed: an integer >= the "
                            f"mini-batch size {b} (sample rate = batch / dataset_size)")
        names = list(ctx.params)
        L, q = len(names), b / self.dataset_size
        fixed = self.sigma
        if self.epsilon is not None:
            fixed = sigma_for_epsilon(self.epsilon, self.delta, q, self.rounds * len(sched), L)
        was = model.training
        model.eval()
        sigmas: list[float] = []
        table_sum = None
        try:
            p = {n: ctx.params[n].detach() for n in names}
            bufs = {n: t.detach().clone() for n, t in ctx.buffers.items()}
            for idx in sched:
                s = clipped_sum(model, p, bufs, x[list(idx)], y[list(idx)], self.clip)
                table_sum = s if table_sum is None else table_sum
                sigma = fixed if self.snr_db is None else sigma_for_snr(s, self.clip, self.snr_db)
                sigmas.append(sigma)
                gbar = {n: (s[n] + sigma * self.clip * torch.randn(s[n].shape, generator=ctx.generator,
                                                                    dtype=s[n].dtype)) / len(idx) for n in names}
                if proto.rule.uploads_gradient:
                    out = gbar
                    break
                p = {n: p[n] - proto.lr * gbar[n] for n in names}
            else:
                out = {n: ctx.params[n].detach() - p[n] for n in names}
        finally:
            model.train(was)
        # the accountant's numbers (ε of this σ, the SNR → ε table) are computed when describe() asks for them:
        # the accountant costs about a second per call, and a FedAvg simulation applies this every local round
        self._accounting = (list(sigmas), L, q, len(sched),
                            [sigma_for_snr(table_sum, self.clip, snr) for snr in ROG_SNRS_DB])
        self._report = {
            "sigma_used": sigmas[0] if len(sigmas) == 1 else sigmas,
            "noise_multiplier": sigmas[0] / math.sqrt(L),
            "num_layers": L, "sample_rate": q, "steps": self.rounds * len(sched),
            "epsilon_target": self.epsilon,
            "snr_db_realised": realised_snr_db(table_sum, self.clip, sigmas[0]),
            "set_by": "epsilon" if self.epsilon is not None else ("snr_db" if self.snr_db is not None else "sigma"),
            "bn_mode": "eval",
        }
        return out

    def describe(self) -> dict:
        """The parameters and realised values, with the accounted ε of the σ used and the SNR → ε table of the
        last :meth:`apply` (accounted here, once, not at every local round)."""
        acc = getattr(self, "_accounting", None)
        if acc is not None and "epsilon" not in self._report:
            sigmas, L, q, steps, snr_sigmas = acc
            self._report["epsilon"] = fedcdp_epsilon(sigmas, L, q, self.rounds, self.delta)
            self._report["snr_to_epsilon"] = [
                {"snr_db": snr, "sigma": sg, "noise_multiplier": sg / math.sqrt(L),
                 "epsilon": fedcdp_epsilon([sg] * steps, L, q, self.rounds, self.delta)}
                for snr, sg in zip(ROG_SNRS_DB, snr_sigmas)]
        return super().describe()
