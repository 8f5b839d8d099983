"""R-GAP: recursive gradient attack on privacy (Zhu & Blaschko, ICLR 2021), its rank analysis, and
R-GAP with a generative prior (GIAS appendix C, eq. 9–11).

R-GAP inverts one sample's gradient without a loss search. The victim must be in R-GAP's *standard form*:
a chain of linear layers  z_r = Θ_r x_r (+ β_r)  (convolutions or fully connected), each followed by an
invertible activation x_{r+1} = σ_r(z_r) (LeakyReLU, sigmoid, tanh, identity), the last layer linear with the
client's cross-entropy. With k_r = ∂ℓ/∂z_r the upload holds ∇Θ_r = k_r x_rᵀ (convolution: the same outer
product summed over the patch positions), which is *linear in x_r once k_r is known*. From the top:

* last layer: k_R = ∇β_R when it has a bias; without one k_R ∝ the left singular vector of ∇Θ_R, its scale c
  the root of softmax(Θ_R ∇Θ_Rᵀ v / c) − e_y = c·v (R-GAP's ``inverse_udldu`` for the multi-class loss);
  then x_R = ∇Θ_Rᵀ k_R / ‖k_R‖²;
* layer r < R, from the recovered x_{r+1}: z_r = σ_r⁻¹(x_{r+1}) − β_r and k_r = σ_r'(z_r) ⊙ Θ_{r+1}ᵀ k_{r+1};
  x_r solves the linear system (eq. 9)

      A_r x_r = b_r,   A_r = [ Θ_r ; K_r ],   b_r = [ z_r ; vec ∇Θ_r ],

  where Θ_r x is the layer's forward map (bias removed: the *forward constraints*, one per output) and
  K_r x = ∇_Θ ⟨k_r, Θ x⟩ the gradient operator at the known k_r (the *gradient constraints*, one per weight).
  The solution is the least-squares / minimum-norm x_r = A_r⁺ b_r.

**Rank analysis** (R-GAP's RA-i): for every layer, |x_r| unknowns against the |z_r| + |Θ_r| constraints and the
numerical rank of A_r. A layer with rank(A_r) < |x_r| is under-determined: A_r⁺ b_r returns only the part of x_r
in the row space, and that error propagates to every layer below it. The rank depends on the architecture
(weights generic), so :func:`analyze_model` is an attack-free leakage indicator from a random input.

**R-GAP + generative prior** (GIAS eq. 11): for the chosen layers, min_z ‖A_r f_{θ,r}(G_w(z)) − b_r‖ replaces the
closed form, f_{θ,r} being the victim's layers below r (x_r as a function of the image) and G_w a prior
(:mod:`gradleak.priors`); ``search: zw`` adds a per-image search of w from the found z (GIAS Algorithm 1).
``fill: nullspace`` keeps the closed form's row-space part and takes only the null-space part from the prior.

Numerics: everything in float64. A_rᵀA_r (n×n, n = |x_r|) is assembled directly from the patch structure,
rank and solution come from LAPACK's pivoted Cholesky (``dpstrf``; relative tolerance ``rcond`` on the
eigenvalues, i.e. √rcond on the singular values), so a 3×32×32 layer costs seconds, not an SVD.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import lapack, solve_triangular
from torch import Tensor, nn

from gradleak.attacks.artifacts import Artifact
from gradleak.attacks.base import ATTACKS, Attack, AuditPlan, Reconstruction
from gradleak.attacks.engine import Stage, lr_scheduler
from gradleak.errors import UserError
from gradleak.fl.observation import Observation, validate_against
from gradleak.validate import Iterations, LearningRate, Steps

DT = torch.float64
ACTIVATIONS = (nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Identity)
_FORM = "R-GAP's standard form: Conv2d/Linear layers, each followed by at most one invertible activation " \
        "(LeakyReLU, Sigmoid, Tanh), Flatten; batch 1, cross-entropy"


# --- the victim as a chain ------------------------------------------------------------------------------------

@dataclass
class ChainLayer:
    """One linear layer of the chain and the activation applied to its output (None: identity / top layer)."""

    index: int  # 1 = the layer that reads the image
    name: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    activation: nn.Module | None

    @property
    def kind(self) -> str:
        return "conv" if isinstance(self.module, nn.Conv2d) else "linear"


def _refuse(name: str, module: nn.Module, why: str) -> UserError:
    return UserError(f"rgap: layer {name!r} ({type(module).__name__}) {why}; allowed: {_FORM}")


def parse_chain(model: nn.Module, image_shape: tuple[int, ...]) -> list[ChainLayer]:
    """The model as R-GAP's chain, or a one-line :class:`UserError` naming the first layer outside the form.

    The leaves are read in definition order; the chain they describe must compute exactly ``model``'s
    forward (checked on a random input), so a model whose forward skips, reorders or adds operations
    (residuals, pooling in ``forward``) is refused as well."""
    layers: list[tuple[str, nn.Module]] = []
    acts: list[nn.Module | None] = []
    act_names: dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):  # a shared activation instance counts at every use
        if any(True for _ in m.children()):
            continue
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or tuple(m.dilation) != (1, 1):
                raise _refuse(name, m, "has groups or dilation")
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise _refuse(name, m, f"has padding {m.padding!r} / padding_mode {m.padding_mode!r} (only explicit "
                                       "zero padding is modelled)")
            layers.append((name, m))
            acts.append(None)
        elif isinstance(m, nn.Linear):
            layers.append((name, m))
            acts.append(None)
        elif isinstance(m, ACTIVATIONS):
            if isinstance(m, nn.LeakyReLU) and not m.negative_slope > 0:
                raise _refuse(name, m, f"has negative_slope {m.negative_slope} (not invertible)")
            if isinstance(m, nn.Identity):
                continue
            if not layers or acts[-1] is not None:
                raise _refuse(name, m, "does not follow a Conv2d/Linear layer")
            acts[-1] = m
            act_names[len(acts) - 1] = name
        elif isinstance(m, nn.Flatten):
            continue
        elif isinstance(m, nn.ReLU):
            raise _refuse(name, m, "is not invertible (it zeroes negative inputs; R-GAP needs e.g. LeakyReLU)")
        else:  # pooling, normalisation, dropout, anything else
            raise _refuse(name, m, "is not a Conv2d/Linear layer or an invertible activation")
    if not layers or not isinstance(layers[-1][1], nn.Linear):
        name, m = layers[-1] if layers else ("<model>", model)
        raise _refuse(name, m, "is the last layer; R-GAP needs a final Linear layer (the classifier)")
    if acts[-1] is not None:
        raise _refuse(act_names[len(acts) - 1], acts[-1], "follows the final layer (the logits must feed the loss directly)")
    own = {n for n, _ in model.named_parameters()}
    chain_params = {f"{n}.{p}" for n, m in layers for p, _ in m.named_parameters(recurse=False)}
    if len({id(m) for _, m in layers}) != len(layers):
        raise UserError(f"rgap: model {type(model).__name__} reuses a Conv2d/Linear module; allowed: {_FORM}")
    if own != chain_params:
        extra = sorted(own - chain_params)[0]
        raise UserError(f"rgap: parameter {extra!r} is not a Conv2d/Linear weight or bias; allowed: {_FORM}")
    # shapes, and the chain must be the model's forward
    x = torch.rand(1, *image_shape, generator=torch.Generator().manual_seed(0))
    out, shapes = x, []
    with torch.no_grad():
        for (name, m), act in zip(layers, acts):
            if isinstance(m, nn.Linear):
                out = out.flatten(1)
            elif out.dim() != 4:
                raise _refuse(name, m, "receives a flattened input")
            shapes.append(tuple(out.shape[1:]))
            out = m(out)
            if act is not None:
                out = act(out)
            shapes[-1] = (shapes[-1], tuple(out.shape[1:]))
        was = model.training
        ref = model.eval()(x)
        model.train(was)
    if ref.shape != out.shape or not torch.allclose(ref, out, rtol=1e-4, atol=1e-5):
        raise UserError(f"rgap: model {type(model).__name__}: its forward is not the chain of its layers in "
                        f"definition order; allowed: {_FORM}")
    return [ChainLayer(i + 1, n, m, s[0], s[1], a) for i, ((n, m), a, s) in enumerate(zip(layers, acts, shapes))]


def _act_inverse(act: nn.Module | None, y: Tensor) -> Tensor:
    if act is None:
        return y
    if isinstance(act, nn.LeakyReLU):
        return torch.where(y >= 0, y, y / act.negative_slope)
    eps = 1e-12
    if isinstance(act, nn.Sigmoid):
        y = y.clamp(eps, 1 - eps)
        return torch.log(y) - torch.log1p(-y)
    return torch.atanh(y.clamp(-1 + eps, 1 - eps))  # Tanh


def _act_derivative(act: nn.Module | None, z: Tensor) -> Tensor:
    if act is None:
        return torch.ones_like(z)
    if isinstance(act, nn.LeakyReLU):
        return torch.where(z >= 0, torch.ones_like(z), torch.full_like(z, act.negative_slope))
    if isinstance(act, nn.Sigmoid):
        s = torch.sigmoid(z)
        return s * (1 - s)
    return 1 - torch.tanh(z) ** 2


def chain_forward(chain: list[ChainLayer], params: dict[str, Tensor], x: Tensor, upto: int) -> Tensor:
    """f_{θ,r}(x): the input of layer ``upto`` (1-based) for images ``x`` (N, C, H, W) — the layers below it
    with their activations, at the weights ``params``."""
    out = x
    for layer in chain[: upto - 1]:
        out = _linear(layer, params, out, bias=True)
        if layer.activation is not None:
            out = layer.activation(out)
    return out.reshape(out.shape[0], *chain[upto - 1].in_shape)


def _weight(layer: ChainLayer, params: dict[str, Tensor]) -> Tensor:
    return params[f"{layer.name}.weight"].to(DT) if params is not None else layer.module.weight


def _bias(layer: ChainLayer, params: dict[str, Tensor]) -> Tensor | None:
    if layer.module.bias is None:
        return None
    return params[f"{layer.name}.bias"].to(DT)


def _linear(layer: ChainLayer, params: dict[str, Tensor], x: Tensor, bias: bool) -> Tensor:
    m, W = layer.module, _weight(layer, params).to(x.dtype)
    b = _bias(layer, params) if bias else None
    b = b.to(x.dtype) if b is not None else None
    if isinstance(m, nn.Conv2d):
        return F.conv2d(x, W, b, stride=m.stride, padding=m.padding)
    return F.linear(x.flatten(1), W, b)


def _linear_adjoint(layer: ChainLayer, params: dict[str, Tensor], y: Tensor) -> Tensor:
    """Θ_rᵀ y for one output-shaped y (no batch dim) → input-shaped."""
    m, W = layer.module, _weight(layer, params)
    if isinstance(m, nn.Conv2d):
        return torch.nn.grad.conv2d_input((1, *layer.in_shape), W, y[None], stride=m.stride, padding=m.padding)[0]
    return (W.T @ y.reshape(-1)).reshape(layer.in_shape)


# --- one layer's linear system (eq. 9) --------------------------------------------------------------------

@dataclass
class LayerSystem:
    """A_r x = b_r for one layer: forward rows Θ x = z (bias removed) and gradient rows K x = ∇Θ at k."""

    layer: ChainLayer
    weight: Tensor  # Θ_r (float64)
    k: Tensor  # ∂ℓ/∂z_r, output-shaped
    z: Tensor  # Θ_r x_r (pre-activation minus bias), output-shaped
    grad_weight: Tensor  # ∇Θ_r
    grad_scale: float = 1.0  # weight of the gradient rows (1 = R-GAP's plain concatenation; see balanced_scale)

    def balanced_scale(self) -> float:
        """The gradient-row weight s that gives both blocks of A_r the same Frobenius norm (row equilibration:
        |k_r| is small when the loss is, which otherwise leaves the gradient rows nearly unweighted). For a
        consistent system the solution is the same; with noisy right-hand sides it is weighted better."""
        m = self.layer.module
        if isinstance(m, nn.Linear):
            fwd, grad = float((self.weight ** 2).sum()), float((self.k ** 2).sum()) * self.unknowns
        else:
            valid = (_patch_index(self.layer.in_shape, m) >= 0).to(DT)  # (Q, L)
            O = self.weight.shape[0]
            fwd = float((self.weight.reshape(O, -1) ** 2).sum(0) @ valid.sum(1))
            grad = float((self.k.reshape(O, -1) ** 2).sum(0) @ valid.sum(0))
        return math.sqrt(fwd / grad) if grad > 0 else 1.0

    @property
    def unknowns(self) -> int:
        return math.prod(self.layer.in_shape)

    @property
    def counts(self) -> tuple[int, int]:
        """(forward constraints |z_r|, gradient constraints |Θ_r|)."""
        return self.z.numel(), self.grad_weight.numel()

    def _patches(self, x: Tensor) -> Tensor:
        m = self.layer.module
        return F.unfold(x, m.kernel_size, padding=m.padding, stride=m.stride)  # (N, Q, L)

    def apply(self, x: Tensor) -> Tensor:
        """A x for a batch x (N, *in_shape) → (N, |z| + |Θ|)."""
        m, n = self.layer.module, x.shape[0]
        x = x.to(DT)
        if isinstance(m, nn.Conv2d):
            fwd = F.conv2d(x, self.weight, stride=m.stride, padding=m.padding).reshape(n, -1)
            k = self.k.reshape(self.k.shape[0], -1)  # (O, L)
            grad = torch.einsum("ol,nql->noq", k, self._patches(x)).reshape(n, -1)
        else:
            xf = x.reshape(n, -1)
            fwd = xf @ self.weight.T
            grad = (self.k[None, :, None] * xf[:, None, :]).reshape(n, -1)
        return torch.cat([fwd, self.grad_scale * grad], 1)

    def rhs(self) -> Tensor:
        return torch.cat([self.z.reshape(-1), self.grad_scale * self.grad_weight.reshape(-1)])

    def normal(self) -> tuple[Tensor, Tensor]:
        """(AᵀA, Aᵀb), assembled from the patch structure without forming A."""
        m, n = self.layer.module, self.unknowns
        if isinstance(m, nn.Linear):
            W, k = self.weight, self.k.reshape(-1)
            s2 = self.grad_scale ** 2
            G = W.T @ W + s2 * (k @ k) * torch.eye(n, dtype=DT)
            c = W.T @ self.z.reshape(-1) + s2 * (self.grad_weight.T @ k)
            return G, c
        idx = _patch_index(self.layer.in_shape, m)  # (Q, L), -1 = padding
        O = self.weight.shape[0]
        Wf = self.weight.reshape(O, -1)  # (O, Q)
        k = self.k.reshape(O, -1)  # (O, L)
        G = torch.zeros(n * n, dtype=DT)
        _scatter_blocks(G, n, idx.T, Wf.T @ Wf)  # forward rows: Σ_L Σ_qq' (ΘᵀΘ)_qq' at (idx[q,L], idx[q',L])
        _scatter_blocks(G, n, idx, self.grad_scale ** 2 * (k.T @ k))  # gradient rows: Σ_q Σ_LL' (kᵀk)_LL' at (idx[q,L], idx[q,L'])
        c_fwd = torch.nn.grad.conv2d_input((1, *self.layer.in_shape), self.weight, self.z[None],
                                           stride=m.stride, padding=m.padding)[0]
        cols = (k.T @ self.grad_weight.reshape(O, -1)).T  # (Q, L)
        c_grad = F.fold(cols[None], self.layer.in_shape[1:], m.kernel_size, padding=m.padding, stride=m.stride)[0]
        return G.reshape(n, n), (c_fwd + self.grad_scale ** 2 * c_grad).reshape(-1)


def _patch_index(in_shape: tuple[int, ...], m: nn.Conv2d) -> Tensor:
    n = math.prod(in_shape)
    ids = torch.arange(1, n + 1, dtype=DT).reshape(1, *in_shape)
    return F.unfold(ids, m.kernel_size, padding=m.padding, stride=m.stride)[0].round().long() - 1


def _scatter_blocks(G: Tensor, n: int, idx: Tensor, block: Tensor, budget: int = 4_000_000) -> None:
    """G[idx[a, i], idx[a, j]] += block[i, j] for every row a of ``idx`` (entries −1 skipped), in chunks."""
    A, P = idx.shape
    step = max(1, budget // (P * P))
    for s in range(0, A, step):
        part = idx[s: s + step]  # (a, P)
        rows, cols = part[:, :, None], part[:, None, :]
        valid = (rows >= 0) & (cols >= 0)
        flat = (rows * n + cols)[valid]
        vals = block[None].expand(part.shape[0], P, P)[valid]
        G.index_add_(0, flat, vals)


@dataclass
class PSDSolve:
    """Minimum-norm solution of G x = c (G = AᵀA) from the pivoted Cholesky PᵀGP = UᵀU of rank r: G = BᵀB with
    B = U Pᵀ (r × n); for r < n, x = Bᵀ(BBᵀ)⁻²B c (the pseudo-inverse A⁺b when c = Aᵀb)."""

    rank: int
    condition: float  # max/min |U_ii| over the kept pivots: an estimate of κ(A) (pivoted Cholesky's diagonal)
    B: Tensor
    U: np.ndarray  # (r, n) upper triangular in pivoted column order
    piv: np.ndarray  # 0-based pivot order
    S_chol: Tensor | None = None  # Cholesky factor of BBᵀ, only when r < n

    def solve(self, c: Tensor) -> Tensor:
        if self.S_chol is None:  # full rank: Uᵀ U (Pᵀx) = Pᵀc
            w = solve_triangular(self.U, c.numpy()[self.piv], trans="T", lower=False)
            v = solve_triangular(self.U, w, lower=False)
            x = np.empty_like(v)
            x[self.piv] = v
            return torch.from_numpy(x)
        y = torch.cholesky_solve((self.B @ c)[:, None], self.S_chol)
        y = torch.cholesky_solve(y, self.S_chol)
        return (self.B.T @ y)[:, 0]

    def project_row(self, v: Tensor) -> Tensor:
        """Projection onto the row space of A (= range of G): Bᵀ(BBᵀ)⁻¹B v."""
        if self.S_chol is None:
            return v.clone()
        y = torch.cholesky_solve((self.B @ v)[:, None], self.S_chol)
        return (self.B.T @ y)[:, 0]


def psd_solve(G: Tensor, rcond: float) -> PSDSolve:
    """Pivoted Cholesky (LAPACK dpstrf) of G with tolerance rcond · max diag(G); rank = the pivots kept."""
    Gn = G.numpy()
    tol = rcond * float(np.max(np.diag(Gn))) if Gn.size else 0.0
    c, piv, rank, info = lapack.dpstrf(Gn, lower=0, tol=tol)
    if info < 0:
        raise RuntimeError(f"dpstrf failed (info {info})")
    piv = (piv - 1).astype(np.int64)
    n = Gn.shape[0]
    U = np.triu(c[:rank, :])
    B = torch.zeros(rank, n, dtype=DT)
    B[:, torch.from_numpy(piv)] = torch.from_numpy(U)
    S_chol = None if rank == n else torch.linalg.cholesky(B @ B.T)
    d = np.abs(np.diag(U)) if rank else np.ones(1)
    return PSDSolve(rank, float(d.max() / d.min()), B, U, piv, S_chol)


# --- the report: rank analysis ------------------------------------------------------------------------------

@dataclass
class LayerRank:
    """One row of the rank analysis (layer 1 reads the image)."""

    layer: int
    name: str
    kind: str
    unknowns: int  # |x_r|, padding excluded
    forward_constraints: int  # |z_r|
    gradient_constraints: int  # |Θ_r|
    rank: int  # numerical rank of A_r
    solver: str = "closed form"  # closed form | gradient (top layer) | generative (z / zw)
    residual: float = 0.0  # ‖A_r x̂_r − b_r‖ / ‖b_r‖ of the solution used
    condition: float = 1.0  # estimated condition number of A_r on its row space (noise amplification)

    @property
    def deficiency(self) -> int:
        return self.unknowns - self.rank

    @property
    def determined(self) -> bool:
        return self.deficiency <= 0


@dataclass
class RankAnalysis(Artifact):
    """R-GAP's per-layer rank analysis and what the recursion recovered (``inputs``: x̂_r per layer, input first,
    kept out of :meth:`to_dict`). As a reconstruction's artifact: ``analysis`` in ``metrics.json``, one line
    per layer in the command-line summary."""

    layers: list[LayerRank]
    label: int
    inputs: list[Tensor] = field(default_factory=list, repr=False)

    @property
    def rank_deficient(self) -> list[int]:
        return [r.layer for r in self.layers if not r.determined]

    def to_dict(self) -> dict:
        rows = []
        for r in self.layers:
            d = asdict(r)
            d.update(deficiency=r.deficiency, determined=r.determined)
            rows.append(d)
        return {"kind": "rgap rank analysis", "layers": rows, "rank_deficient": self.rank_deficient,
                "label": self.label}

    fact_labels = {"analysis": "R-GAP rank analysis"}

    def describe(self) -> dict:
        return {"analysis": self.to_dict()}

    def summary(self) -> list[str]:
        return [f"  layer {r.layer} {r.name} ({r.kind}): {r.unknowns} unknowns, {r.forward_constraints} + "
                f"{r.gradient_constraints} constraints, rank {r.rank}"
                f"{'' if r.determined else ' (under-determined by %d)' % r.deficiency}, {r.solver}"
                for r in self.layers]

    def table(self) -> str:
        head = f"{'layer':>5} {'name':<18} {'kind':<6} {'unknowns':>8} {'fwd':>7} {'grad':>8} {'rank':>7} " \
               f"{'deficit':>7} {'cond':>8} {'residual':>9}  solver"
        lines = [head]
        for r in self.layers:
            lines.append(f"{r.layer:>5} {r.name[-18:]:<18} {r.kind:<6} {r.unknowns:>8} {r.forward_constraints:>7} "
                         f"{r.gradient_constraints:>8} {r.rank:>7} {r.deficiency:>7} {r.condition:>8.1e} {r.residual:>9.2e}  "
                         f"{r.solver}")
        return "\n".join(lines)


# --- the recursion ---------------------------------------------------------------------------------------------

def observed_gradient(obs: Observation) -> dict[str, Tensor]:
    """The one gradient R-GAP inverts: the FedSGD upload, or Δ/η − o for one full-batch local SGD step (o the
    protocol's known offset, SCAFFOLD's c − c_i; Δ = θ_0 − θ_1 whatever convention was stated)."""
    obs = obs.as_delta()
    if obs.num_images != 1:
        raise UserError(f"rgap: data.batch_size: got {obs.num_images}; allowed: 1 (R-GAP inverts one sample's gradient)")
    p = obs.protocol
    if p.rule.uploads_gradient:
        return {k: v.to(DT) for k, v in obs.update.items()}
    if getattr(p, "optimizer", "sgd") != "sgd" or getattr(p, "weight_decay", 0.0):
        raise UserError(f"rgap: client.optimizer: got {getattr(p, 'optimizer', 'sgd')} with weight_decay "
                        f"{getattr(p, 'weight_decay', 0.0)}; allowed: sgd without weight decay (the upload must be "
                        "a multiple of one gradient)")
    if len(p.schedule(1)) == 1:  # one SGD step: Δ = η g (Nesterov's first step: η (1 + μ) g)
        scale = p.lr * (1 + p.momentum if getattr(p, "nesterov", False) else 1)
        offset = p.rule.gradient_offset(p, p.state) or {}
        return {k: v.to(DT) / scale - (offset[k].to(DT) if k in offset else 0) for k, v in obs.update.items()}
    raise UserError(f"rgap: client.local_steps: got {len(p.schedule(1))} local steps; allowed: fedsgd or one local "
                    "step (R-GAP inverts one gradient)")


def _top_k(W: Tensor, gW: Tensor, gb: Tensor | None, label: int | None) -> tuple[Tensor, int]:
    """k_R = ∂ℓ/∂z_R of the last layer, and the label (given, or the one entry of k with its own sign)."""
    if gb is not None and gb.abs().max() > 0:
        k = gb.clone()
        return k, int(k.argmin()) if label is None else label
    # ∇Θ = k xᵀ: k ∝ the left singular vector v; with k = c v (c > 0) the logits are z = Θ∇Θᵀv / c
    U, S, _ = torch.linalg.svd(gW, full_matrices=False)
    v = U[:, 0]
    K = v.numel()
    if label is None:
        neg = int((v < 0).sum())
        if neg > K - neg:
            v = -v
        label = int(v.argmin())
    elif v[label] > 0:
        v = -v
    a = W @ (gW.T @ v)
    e = torch.zeros(K, dtype=DT)
    e[label] = 1

    def misfit(logc: Tensor) -> Tensor:  # ‖k(c)/c − v‖, k(c) = softmax(a/c) − e_y
        c = torch.exp(logc)[:, None]
        return ((torch.softmax(a[None] / c, -1) - e) / c - v).norm(dim=-1)

    grid = torch.linspace(math.log(1e-10), math.log(4.0), 4001, dtype=DT)
    f = misfit(grid)
    i = int(f.argmin())
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.numel() - 1)]
    for _ in range(100):  # golden-section refinement
        m1, m2 = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        f1, f2 = misfit(torch.stack([m1, m2]))
        lo, hi = (lo, m2) if f1 < f2 else (m1, hi)
    c = torch.exp((lo + hi) / 2)
    return c * v, label


def _layer_system(layer: ChainLayer, above: ChainLayer, params, grads, x_above: Tensor, k_above: Tensor) -> LayerSystem:
    z = _act_inverse(layer.activation, x_above.reshape(layer.out_shape))
    dx = _linear_adjoint(above, params, k_above)
    k = _act_derivative(layer.activation, z) * dx.reshape(layer.out_shape)
    b = _bias(layer, params)
    if b is not None:
        z = z - (b[:, None, None] if layer.kind == "conv" else b)
    return LayerSystem(layer, _weight(layer, params), k, z, grads[f"{layer.name}.weight"])


def _relative_residual(system: LayerSystem, x: Tensor) -> float:
    b = system.rhs()
    r = system.apply(x.reshape(1, *system.layer.in_shape))[0] - b
    return float(r.norm() / b.norm().clamp_min(1e-300))


class LayerSolver:
    """Solves a chosen layer's system other than in closed form (R-GAP + generative prior): gets the system, the
    chain, θ_0, the closed-form solution and its factorisation; returns x_r (flat) and a label for the report."""

    def solve(self, system: LayerSystem, chain, params, closed: Tensor, factor: PSDSolve) -> tuple[Tensor, str]:
        raise NotImplementedError


def recursive_inversion(obs: Observation, model: nn.Module, label: int | None = None, rcond: float = 1e-10,
                        max_unknowns: int = 8192, layer_solver: LayerSolver | None = None,
                        solver_layers: Union[list[int], Literal["auto"]] = "auto", balance: bool = False,
                        ) -> tuple[Tensor, RankAnalysis]:
    """Run R-GAP on ``obs``; returns the image (1, C, H, W) (unclamped) and the rank analysis.

    With ``layer_solver``, the layers ``solver_layers`` (1-based; ``"auto"`` = the rank-deficient ones) are solved
    by it instead of the closed form."""
    chain = parse_chain(model, tuple(obs.image_shape))
    grads = observed_gradient(obs)
    params = {k: v.to(DT) for k, v in obs.parameters.items()}
    for layer in chain:
        n = math.prod(layer.in_shape)
        if layer is not chain[-1] and n > max_unknowns:
            raise UserError(f"rgap: layer {layer.name!r} has {n} unknowns; allowed: at most attack.options.max_unknowns "
                            f"= {max_unknowns} (the normal matrix is n×n)")
    top = chain[-1]
    W = _weight(top, params)
    gW = grads[f"{top.name}.weight"]
    gb = grads.get(f"{top.name}.bias")
    k, y = _top_k(W, gW, gb, label)
    kk = float(k @ k)
    if kk == 0:
        raise UserError("rgap: the last layer's gradient is zero; nothing to invert")
    x = (gW.T @ k) / kk
    rows = [LayerRank(top.index, top.name, "linear", x.numel(), k.numel(), gW.numel(), x.numel(),
                      "gradient (top layer)", float((torch.outer(k, x) - gW).norm() / gW.norm()))]
    inputs = [x.reshape(top.in_shape)]
    k_above, above = k, top
    for layer in reversed(chain[:-1]):
        system = _layer_system(layer, above, params, grads, inputs[0], k_above)
        if balance:
            system.grad_scale = system.balanced_scale()
        G, c = system.normal()
        factor = psd_solve(G, rcond)
        x = factor.solve(c)
        solver = "closed form"
        chosen = factor.rank < system.unknowns if solver_layers == "auto" else layer.index in solver_layers
        if layer_solver is not None and chosen:
            x, solver = layer_solver.solve(system, chain, obs.parameters, x, factor)
        fwd, grd = system.counts
        rows.insert(0, LayerRank(layer.index, layer.name, layer.kind, system.unknowns, fwd, grd, factor.rank, solver,
                                 _relative_residual(system, x), factor.condition))
        inputs.insert(0, x.reshape(layer.in_shape))
        k_above, above = system.k, layer
    image = inputs[0].reshape(1, *obs.image_shape)
    return image, RankAnalysis(rows, y, inputs)


# --- the attacks ------------------------------------------------------------------------------------------------

@ATTACKS.register("rgap")
class RGAP(Attack):
    """R-GAP (Zhu & Blaschko, 2021): closed-form, layer-by-layer inversion of one sample's gradient (module
    docstring). No iterations, no restarts. Labels: given ones are used; without (``attack.labels: learn``) the
    label is read from the sign pattern of the last layer's gradient. ``balance`` (default) weights each layer's
    gradient rows so both blocks of A_r have the same norm (:meth:`LayerSystem.balanced_scale`); ``false`` is
    R-GAP's plain concatenation, whose conditioning suffers when |k_r| is small. ``rcond``: relative eigenvalue
    tolerance of the rank decision; ``max_unknowns``: refuse layers with larger inputs (the normal matrix is n×n)."""

    name = "rgap"
    default_labels = "oracle"
    generative_layers: Union[list[int], Literal["auto"]] = "auto"  # only used with a layer solver (rgap-gen)

    def __init__(self, balance: bool = True, rcond: float = 1e-10, max_unknowns: Iterations = 8192):
        self.balance = bool(balance)
        if not 0 < rcond < 1:
            raise UserError(f"attack.options.rcond: got {rcond}; allowed: a number in (0, 1)")
        if max_unknowns < 1:
            raise UserError(f"attack.options.max_unknowns: got {max_unknowns}; allowed: integer >= 1")
        self.rcond, self.max_unknowns = float(rcond), int(max_unknowns)

    @classmethod
    def audit_plan(cls, situation):
        """Closed form, when it applies: one image, one gradient step, no obfuscation, the victim in R-GAP's
        standard form, and the rank analysis (at the observation's own θ_0) says every layer is determined."""
        obs = situation.obs
        if obs.num_images != 1 or situation.view.obfuscated or len(obs.protocol.schedule(1)) != 1:
            return None
        try:
            parse_chain(situation.model, tuple(obs.image_shape))
            analysis = analyze_model(copy.deepcopy(situation.model).cpu(), tuple(obs.image_shape))
        except (UserError, RuntimeError, ValueError):
            return None
        if analysis.rank_deficient:
            return None
        return AuditPlan(cls(), "closed form: the rank analysis says every layer is determined", closed_form=True)

    def _model(self, obs: Observation, model: nn.Module | None) -> nn.Module:
        if model is None:
            return obs.build_model()
        validate_against(model, obs)
        return model

    def _layer_solver(self, labels: Tensor | None, seed: int) -> LayerSolver | None:
        return None

    def __call__(self, obs: Observation, labels: Tensor | None = None, seed: int = 0, model: nn.Module | None = None,
                 progress: bool = True) -> Reconstruction:
        t0 = time.perf_counter()
        with torch.device("cpu"):  # LAPACK linear algebra in float64: R-GAP computes on the CPU on any --device
            obs = obs.to("cpu").as_delta()
            model = self._model(obs, model)
            if any(p.device.type != "cpu" for p in model.parameters()):
                model = copy.deepcopy(model).cpu()
            labels = None if labels is None else labels.cpu()
            label = None if labels is None else int(labels.reshape(-1)[0])
            image, analysis = recursive_inversion(obs, model, label, self.rcond, self.max_unknowns,
                                                  self._layer_solver(labels, seed), self.generative_layers,
                                                  self.balance)
        return Reconstruction(images=image.to(torch.float32).clamp(0, 1), labels=torch.tensor([analysis.label]),
                              attack=self.name, seconds=time.perf_counter() - t0, artifacts=[analysis])


class GenerativeLayerSolver(LayerSolver):
    """GIAS eq. (11): min_z ‖A_r f_{θ,r}(G_w(z)) − b_r‖² / ‖b_r‖² over R restarts (Adam, lr ×0.1 at 3/8, 5/8, 7/8),
    then optionally w per image from the found z; the restart with the lowest residual is kept."""

    def __init__(self, prior, labels, iterations, iterations_w, restarts, lr_z, lr_w, seed, fill):
        self.prior, self.labels = prior, labels
        self.iterations, self.iterations_w, self.restarts = iterations, iterations_w, restarts
        self.lr_z, self.lr_w, self.seed, self.fill = lr_z, lr_w, seed, fill

    def solve(self, system, chain, params, closed, factor):
        from gradleak.attacks.generative import GeneratorWeights, Latent

        image_shape = tuple(chain[0].in_shape)
        b = system.rhs()
        scale = b.norm().clamp_min(1e-300) ** 2
        pf = {k: v.to(DT) for k, v in params.items()}
        gen = torch.Generator().manual_seed(self.seed)
        R = self.restarts

        def objective(images: Tensor) -> Tensor:  # images (R, 1, C, H, W) → (R,)
            xr = chain_forward(chain, pf, images.reshape(R, *image_shape).to(DT), system.layer.index)
            return ((system.apply(xr) - b) ** 2).sum(1) / scale

        lat = Latent(self.prior)
        stages = [("z", lat, self.iterations, self.lr_z)]
        if self.iterations_w:
            stages.append(("w", GeneratorWeights(self.prior, lat), self.iterations_w, self.lr_w))
        best = None
        for _, param, iters, lr in stages:
            param.labels = self.labels
            variables = param.start(R, 1, image_shape, None, gen)
            opt = torch.optim.Adam(variables, lr=lr)
            sched = lr_scheduler(opt, Stage("s", param, iters, lr))
            for _ in range(iters):
                opt.zero_grad(set_to_none=True)
                loss = objective(param.images())
                loss.sum().backward()
                opt.step()
                sched.step()
            with torch.no_grad():
                best = param.images().detach()
        with torch.no_grad():
            final = objective(best)
            i = int(torch.nan_to_num(final, nan=math.inf).argmin())
            xr = chain_forward(chain, pf, best[i].to(DT), system.layer.index)[0].reshape(-1)
        if self.fill == "nullspace":
            xr = closed + xr - factor.project_row(xr)
        return xr, "generative (" + ("zw" if self.iterations_w else "z") + (", null space" if self.fill == "nullspace"
                                                                             else "") + ")"


@ATTACKS.register("rgap-gen")
class RGAPGenerative(RGAP):
    """R-GAP with a generative prior (GIAS appendix C, eq. 11): the layers in ``generative_layers`` (1 = the
    layer reading the image; ``auto`` = the rank-deficient ones) are solved by searching the prior's latent z
    through f_{θ,r}(G_w(z)) — plus w from the found z when ``iterations_w`` > 0 — the others in closed form.
    ``fill``: ``replace`` (eq. 11: x_r = f_{θ,r}(G(z*))) or ``nullspace`` (closed-form row-space part + the
    prior's null-space part). GIAS appendix G step sizes: lr_z 3e-2, lr_w 1e-3 (relative). ``prior``: a built-in
    name (digits, photos), a path or import path, or a :class:`gradleak.priors.Prior` (Python API)."""

    name = "rgap-gen"

    def __init__(self, prior: Any = "digits", generative_layers: Union[list[int], Literal["auto"]] = "auto",
                 iterations: Iterations = 500, iterations_w: Steps = 0, restarts: Iterations = 4,
                 lr_z: LearningRate = 3e-2, lr_w: LearningRate = 1e-3, fill: Literal["replace", "nullspace"] = "replace",
                 space: Literal["z", "w", "w+"] = "w+", balance: bool = True, rcond: float = 1e-10,
                 max_unknowns: Iterations = 8192):
        super().__init__(balance, rcond, max_unknowns)
        from gradleak.priors.prior import load_prior

        if generative_layers != "auto" and (not isinstance(generative_layers, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in generative_layers)):
            raise UserError(f"attack.options.generative_layers: got {generative_layers!r}; allowed: auto or a list of "
                            "layer numbers >= 1 (1 = the layer reading the image)")
        for key, v, lo in (("iterations", iterations, 1), ("iterations_w", iterations_w, 0), ("restarts", restarts, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise UserError(f"attack.options.{key}: got {v!r}; allowed: integer >= {lo}")
        for key, v in (("lr_z", lr_z), ("lr_w", lr_w)):
            if not v > 0:
                raise UserError(f"attack.options.{key}: got {v!r}; allowed: a learning rate > 0")
        if fill not in ("replace", "nullspace"):
            raise UserError(f"attack.options.fill: got {fill!r}; allowed: replace, nullspace")
        self.generative_layers = generative_layers if generative_layers == "auto" else list(generative_layers)
        self.iterations, self.iterations_w, self.restarts = iterations, iterations_w, restarts
        self.lr_z, self.lr_w, self.fill = float(lr_z), float(lr_w), fill
        self.prior = load_prior(prior, space=space)  # a bad prior fails here, before anything runs

    def _layer_solver(self, labels, seed):
        if self.prior.conditional and labels is None:
            raise UserError(f"prior {self.prior.name!r} is label-conditional: the attack needs labels "
                            "(attack.labels: oracle or recover)")
        return GenerativeLayerSolver(self.prior, labels, self.iterations, self.iterations_w, self.restarts,
                                     self.lr_z, self.lr_w, seed, self.fill)


def analyze_model(model: nn.Module, image_shape: tuple[int, int, int], label: int = 0, seed: int = 0,
                  rcond: float = 1e-10, balance: bool = True) -> RankAnalysis:
    """Attack-free rank analysis of an architecture: R-GAP's systems at a random input (uniform [0, 1]) and the
    model's current weights. The rank of A_r is generic in the data, so this predicts which layers of any
    sample's gradient are under-determined."""
    from gradleak.fl.client import client_update, split_state
    from gradleak.fl.protocol import Protocol

    x = torch.rand(1, *image_shape, generator=torch.Generator().manual_seed(seed))
    params, buffers = split_state(model)
    update = client_update(model, params, buffers, x, torch.tensor([label]), Protocol())
    spec = {"name": type(model).__name__, "num_classes": 0, "in_channels": image_shape[0],
            "resolution": image_shape[-1], "options": {}}
    obs = Observation(model_spec=spec, parameters=params, buffers=buffers, update=update, protocol=Protocol(),
                      num_images=1, image_shape=tuple(image_shape))
    _, analysis = recursive_inversion(obs, model, label, rcond, balance=balance)
    return analysis


def true_layer_inputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """The true input of every chain layer for one image (for per-layer error plots, GIAS Figure A2)."""
    chain = parse_chain(model, tuple(x.shape[1:]))
    params = {k: v.detach().to(DT) for k, v in model.named_parameters()}
    with torch.no_grad():
        return [chain_forward(chain, params, x.to(DT), layer.index)[0] for layer in chain]
