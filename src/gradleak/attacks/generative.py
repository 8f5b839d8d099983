"""Gradient inversion in alternative spaces (GIAS, Jeon et al., 2021) as presets of the one search engine.

Parametrizations of the unknown batch through a generative prior G_w (:mod:`gradleak.priors`):

* :class:`Latent` — GI-z, eq. (5): min_{z_1..z_B} c(G_w(z_1), …, G_w(z_B)), one latent per image;
* :class:`GeneratorWeights` — GI-w, eq. (7): min_{w_1..w_B} c(G_{w_1}(z_1), …, G_{w_B}(z_B)) from fixed
  latents: every image of every restart has its own copy of the generator's weights, held as batched
  tensors (R·B, *shape) and evaluated with ``torch.vmap`` over ``torch.func.functional_call`` — one
  vectorised call, no module copies; the copies are independent (each image's gradient only reaches its
  own copy, tested).

Presets (registered in :data:`gradleak.attacks.presets.ATTACKS`):

=================  ==========================================================================
``gi-z``           latent search only (optional ‖z‖ penalty, GIML's λ Σ_j ‖z_j‖₂)
``gi-w``           weight search from fixed random latents of the trained prior
``gi-zw``/``gias`` Algorithm 1: latent search, then per-image weight search from the found z
``gi-zx``          latent search, then pixel search from G_w(z) (InvertGrad's signed Adam, box)
``gi-w-untrained`` weight search of a freshly initialised generator (deep image prior)
``gi-x``           InvertGrad (GI-x) with the same +BN / control options
=================  ==========================================================================

Defaults are GIAS appendix G: cosine distance, Adam, lr_z = 3e-2, lr_w = 1e-3 (a step relative to each
weight tensor's RMS, as StyleGAN2's equalised layers make it; see :class:`GeneratorWeights`), ×0.1 at 3/8,
5/8, 7/8, TV 1e-4, best of 4 restarts by the final loss (the restarts run as one batched optimisation) —
except ``gi-x``, which is InvertGrad and takes InvertGrad's defaults validated on real photographs
(:data:`gradleak.attacks.presets.INVERTGRAD_TV`, docs/defaults.md), and ``gi-zx``, whose pixel stage is
InvertGrad's and takes the same TV weight and pixel step (TV 0.5, lr_x 0.05; the paper's TV 1e-4 / lr_x 0.01
left it 1.4–2.5 dB lower on held-out photographs with the Debian photo prior, docs/defaults.md);
benchmarks/gias_table.py passes the paper's TV 1e-4 (and gi-zx's lr_x 0.01) to every column explicitly.
Every preset takes ``bn`` (weight of GradInversion's BN-statistics prior, :mod:`.bn_prior`) with
``bn_source`` exact | public | running, and ``control: true`` — the "random gradient, true labels"
control: the observed upload is replaced by a random one (:func:`control_observation`), so whatever the
attack still recovers comes from the prior and the labels, not from the client's data.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gradleak.attacks.artifacts import Artifact, Figure, Scorer, brief, matched_rows
from gradleak.attacks.bn_prior import BNRegularizer
from gradleak.attacks.base import ATTACKS, AuditPlan, Reconstruction
from gradleak.attacks.engine import Objective, Stage, search
from gradleak.attacks.objectives import DISTANCES
from gradleak.attacks.parametrizations import Parametrization, Pixels, keep_rows
from gradleak.attacks.presets import INVERTGRAD_LR, INVERTGRAD_TV, InvertGrad, SearchAttack
from gradleak.devices import generator
from gradleak.errors import UserError
from gradleak.fl.observation import Observation
from gradleak.priors.prior import Prior, describe, load_prior
from gradleak.validate import Iterations, LearningRate, Steps, Weight

Distance = str  # a key of gradleak.attacks.objectives.DISTANCES (checked at construction)
PriorSpec = Union[str, Prior, nn.Module]  # built-in name, path, import path, or an object (Python API)
BNSource = Literal["exact", "public", "running"]


# --- artifacts: what a GIAS run adds to its reconstruction --------------------------------------------------

@dataclass
class SnapshotSeries(Artifact):
    """``snapshot_every``: every restart's images (R,B,C,H,W) at iteration 0 and every ``every`` optimiser
    steps (``items``: (iteration, images) pairs); ``best_restart`` is the restart the search returned."""

    every: int
    items: list[tuple[int, Tensor]] = field(default_factory=list)
    best_restart: int | None = None

    def frames(self) -> list[tuple[int, Tensor]]:
        """(iteration, the returned restart's images (B,C,H,W)) of every snapshot that holds that restart
        (successive halving drops restarts: earlier snapshots hold more of them, in another order)."""
        if self.best_restart is None or not self.items:
            return []
        final = self.items[-1][1].shape[0]
        return [(it, imgs[self.best_restart]) for it, imgs in self.items if imgs.shape[0] == final]

    def describe(self) -> dict:
        return {"snapshots": {"every": self.every, "iterations": [it for it, _ in self.items]}}

    def score(self, truth: Tensor, scorer: Scorer) -> dict:
        """The returned restart scored like the final images at each snapshot — at most 32, evenly spread, first
        and last included (GIAS Figure 1: PSNR over the iterations)."""
        return {"snapshot_scores": [{"iteration": it, **brief(scorer(images, truth))}
                                    for it, images in _spread(self.frames(), 32)]}

    def draw(self, out: Path, originals: Tensor | None, order: list[int] | None) -> list[Figure]:
        frames = _spread(self.frames(), 8)  # at most 8 rows
        if not frames:
            return []
        from gradleak.imagegrid import image_rows

        rows, labels = matched_rows([im for _, im in frames], order), [f"iteration {it}" for it, _ in frames]
        if originals is not None:
            rows, labels = rows + [originals], labels + ["original"]
        image_rows(rows, labels, out / "snapshots.png")
        return [("Snapshots of the returned restart during the search"
                 + ("; originals last" if originals is not None else ""), "snapshots.png")]


def _spread(items: list, k: int) -> list:
    """At most ``k`` of ``items``, evenly spread, the first and the last included."""
    if len(items) <= k:
        return list(items)
    return [items[j] for j in sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})]


@dataclass
class PriorUsed(Artifact):
    """The generative prior a GIAS preset searched through (:func:`gradleak.priors.prior.describe`)."""

    description: dict

    fact_labels = {"prior": "generative prior"}

    def describe(self) -> dict:
        return {"prior": self.description}


@dataclass
class RandomControl(Artifact):
    """This run was the random-gradient control (``control: true``, :func:`control_observation`): the upload
    was replaced by a random one, so what it recovers comes from the prior and the labels alone."""

    fact_labels = {"control": "random-gradient control"}

    def describe(self) -> dict:
        return {"control": True}


# --- parametrizations ------------------------------------------------------------------------------------

class _PriorParam(Parametrization):
    def __init__(self, prior: Prior):
        self.prior = prior
        self.labels: Tensor | None = None  # (B,) true/recovered labels for a conditional prior
        self.R = self.B = 0
        self.shape: tuple[int, int, int] = (0, 0, 0)

    def _flat_labels(self) -> Tensor | None:
        if not self.prior.conditional:
            return None
        if self.labels is None:
            raise UserError(f"prior {self.prior.name!r} is label-conditional: the attack needs labels "
                            "(attack.labels: oracle or recover)")
        lab = self.labels
        return lab.expand(self.R, *lab.shape).reshape(self.R * self.B, *lab.shape[1:])

    def _decode(self, raw: Tensor) -> Tensor:
        x = self.prior.to_pixels(raw, self.shape)
        return x.reshape(self.R, self.B, *self.shape)


class Latent(_PriorParam):
    """GI-z: the latents z (R, B, *latent_shape) are the variables; images = G_w(z) in pixel space."""

    name = "z"

    def __init__(self, prior: Prior):
        super().__init__(prior)
        self.z: Tensor | None = None

    def start(self, restarts, batch, shape, prev, gen):
        self.R, self.B, self.shape = restarts, batch, tuple(shape)
        z = self.prior.sample_latent(restarts * batch, gen)
        self.z = z.reshape(restarts, batch, *self.prior.latent_shape).requires_grad_()
        return [self.z]

    def images(self) -> Tensor:
        raw = self.prior.generate(self.z.reshape(self.R * self.B, *self.prior.latent_shape), self._flat_labels())
        return self._decode(raw)

    def select(self, keep):
        self.z = keep_rows(self.z, keep, self.R).requires_grad_()
        self.R = self.z.shape[0]
        return [self.z]

    def norm_penalty(self) -> Tensor:
        """Mean over the batch of ‖z_j‖₂, per restart (R,)."""
        return self.z.flatten(2).norm(dim=-1).mean(-1)


def _rms_or_one(t: Tensor) -> Tensor:
    rms = t.pow(2).mean().sqrt()
    return rms if rms > 0 else torch.ones(())


class GeneratorWeights(_PriorParam):
    """GI-w: per-image copies of the generator weights (R·B, *shape each) are the variables, the latents
    fixed — taken from a preceding :class:`Latent` stage (GIAS) or drawn at random (GI-w). With
    ``untrained=True`` the weights start from a fresh initialisation (deep image prior).

    ``relative=True`` (the presets' default) optimises u_k = w_k / s_k, s_k the RMS of the prior's tensor k
    (1 for an all-zero tensor): an Adam step of size η on u moves w_k by ≈ η·s_k, the *equalised learning
    rate* of StyleGAN (Karras et al., 2018, §4.1). GIAS appendix G's η_w = 1e-3 was set for StyleGAN2, whose
    stored weights are unit-scale, i.e. a relative step of 1e-3; ``relative`` keeps that meaning for a
    generator without equalised layers (a DCGAN's conv weights are ~0.02, where an absolute 1e-3 is a 5 %
    change per step). ``relative=False``, or a prior whose layers are already equalised
    (``Prior.equalized_lr``: the StyleGAN2 loader), steps w itself."""

    name = "w"

    def __init__(self, prior: Prior, latent: Latent | None = None, untrained: bool = False, relative: bool = True):
        super().__init__(prior)
        self.latent, self.untrained, self.relative = latent, untrained, relative
        self.u: dict[str, Tensor] = {}  # the variables, w / scale
        self.scale: dict[str, Tensor] = {}
        self.fixed: dict[str, Tensor] = {}
        self.z: Tensor | None = None
        self.net: nn.Module | None = None

    def start(self, restarts, batch, shape, prev, gen):
        self.R, self.B, self.shape = restarts, batch, tuple(shape)
        prior = self.prior.untrained(gen) if self.untrained else self.prior
        self.net = prior.net
        n = restarts * batch
        if self.latent is not None and self.latent.z is not None:
            z = self.latent.z.detach().reshape(n, *prior.latent_shape).clone()
        else:
            z = prior.sample_latent(n, gen)
        self.z = z
        adapt = set(prior.adapt_names())
        params = dict(prior.net.named_parameters())
        relative = self.relative and not prior.equalized_lr
        self.scale = {k: _rms_or_one(v.detach()) if relative else torch.ones(()) for k, v in params.items()
                      if k in adapt}
        self.u = {k: (v.detach() / self.scale[k]).unsqueeze(0).repeat(n, *[1] * v.dim()).requires_grad_()
                  for k, v in params.items() if k in adapt}
        self.fixed = {k: v.detach() for k, v in params.items() if k not in adapt}
        self.fixed |= {k: v.detach() for k, v in prior.net.named_buffers()}
        return list(self.u.values())

    def select(self, keep):
        R = self.R
        self.u = {k: keep_rows(u, keep, R).requires_grad_() for k, u in self.u.items()}
        self.z = keep_rows(self.z, keep, R)
        self.R = len(keep)
        return list(self.u.values())

    @property
    def w(self) -> dict[str, Tensor]:
        """The per-copy generator weights (R·B, *shape) = scale · u."""
        return {k: u * self.scale[k] for k, u in self.u.items()}

    def raw(self) -> Tensor:
        """Generator output (R·B, C_g, H_g, W_g): copy k applied to latent k, vectorised with vmap."""
        net, fixed, labels = self.net, self.fixed, self._flat_labels()

        if labels is None:
            def one(w, z):
                return functional_call(net, {**w, **fixed}, (z[None],))[0]
            return torch.vmap(one)(self.w, self.z)

        def one_c(w, z, y):
            return functional_call(net, {**w, **fixed}, (z[None], y[None]))[0]
        return torch.vmap(one_c)(self.w, self.z, labels)

    def images(self) -> Tensor:
        return self._decode(self.raw())


class Snapshots(Parametrization):
    """Wraps a stage's parametrization and keeps a detached copy of all restarts' images every ``every``
    optimiser steps (and at the start), shared across stages: ``store`` gets (iteration, images (R,B,C,H,W))."""

    def __init__(self, inner: Parametrization, every: int, store: list, counter: list):
        self.inner, self.every, self.store, self.counter = inner, every, store, counter
        self.name = inner.name

    def start(self, restarts, batch, shape, prev, gen):
        v = self.inner.start(restarts, batch, shape, prev, gen)
        if self.counter[0] == 0:
            self._keep()
        return v

    def images(self):
        return self.inner.images()

    def _keep(self):
        with torch.no_grad():
            self.store.append((self.counter[0], self.inner.images().detach().clamp(0, 1).clone()))

    def select(self, keep):
        return self.inner.select(keep)

    def project(self):
        self.inner.project()
        self.counter[0] += 1
        if self.counter[0] % self.every == 0:
            self._keep()


# --- the control --------------------------------------------------------------------------------------------

def control_observation(obs: Observation, seed: int = 0) -> Observation:
    """The "random gradient, true labels" control (GIAS §5.3 spirit): a copy of ``obs`` whose upload is
    replaced by Gaussian noise with each tensor's shape, support (zeros stay zero, e.g. after sparsity)
    and L2 norm; BN statistics, which are themselves batch data, are dropped. Labels are kept. The upload is
    read as Δ = θ_0 − θ_τ whatever convention the client stated, and the control states it so."""
    gen = generator(1_000_003 + seed)
    obs = obs.as_delta()  # noise with Δ's norms and support, whatever convention the client stated
    update = {}
    for name, t in obs.update.items():
        r = torch.randn(t.shape, generator=gen, dtype=t.dtype) * (t != 0).to(t.dtype)
        update[name] = r * (t.norm() / r.norm().clamp_min(1e-30))
    return Observation(model_spec=obs.model_spec, parameters=obs.parameters, buffers=obs.buffers, update=update,
                       protocol=obs.protocol, num_images=obs.num_images, image_shape=obs.image_shape,
                       labels=obs.labels, bn_stats=None, defenses=obs.defenses,
                       extra={**obs.extra, "control": "random update, true labels"},
                       # the protocol's extra uploads (SCAFFOLD's Δc) follow the random Δ, as a client computes them
                       extra_uploads=obs.protocol.rule.extra_uploads(obs.protocol, update, obs.num_images,
                                                                     obs.protocol.state),
                       model=obs.model, aggregation=obs.aggregation)


# --- presets -----------------------------------------------------------------------------------------------

def native_shape(prior: Prior) -> tuple[int, int, int]:
    """The (C, H, W) a prior's generator produces before any resizing (one sample)."""
    with torch.no_grad():
        z = prior.sample_latent(1, torch.Generator().manual_seed(0))
        y = torch.zeros(1, dtype=torch.long) if prior.conditional else None
        return tuple(prior.generate(z, y).shape[1:])


@functools.lru_cache(maxsize=None)
def _builtin_shape(name: str) -> tuple[int, int, int]:
    return native_shape(load_prior(name))  # the shipped assets never change within a process


def fitting_prior(situation) -> str | None:
    """The prior an audit uses: the user's (``situation.prior``; the caller checked its shape), else the first
    shipped prior whose native output is the observation's image shape, else None."""
    from gradleak.priors.prior import BUILTIN_PRIORS

    if situation.prior is not None:
        return situation.prior
    for name in BUILTIN_PRIORS:
        if _builtin_shape(name) == tuple(situation.obs.image_shape):
            return name
    return None


def _check_distance(distance: str) -> None:
    if distance != "auto" and distance not in DISTANCES:
        raise UserError(f"attack.options.distance: got {distance!r}; allowed: {', '.join(DISTANCES)}, auto")


class _PriorMixin:
    """Shared by every GIAS preset and GI-x: +BN regularizer, control, snapshots."""

    bn: float = 0.0
    bn_source: str = "exact"
    bn_data: str | None = None
    control: bool = False
    snapshot_every: int = 0

    def _setup_common(self, bn, bn_source, bn_data, control, snapshot_every):
        if bn < 0:
            raise UserError(f"attack.options.bn: got {bn}; allowed: a weight >= 0")
        if bn_source not in ("exact", "public", "running"):
            raise UserError(f"attack.options.bn_source: got {bn_source!r}; allowed: exact, public, running")
        self.bn, self.bn_source, self.bn_data = float(bn), bn_source, bn_data
        self.control, self.snapshot_every = bool(control), int(snapshot_every)

    def _default_bn_data(self) -> str | None:
        return self.bn_data

    def _bn_regularizers(self) -> list:
        if not self.bn:
            return []
        source = self.bn_source
        if self.control and source == "exact":  # the control sees nothing of the client's batch
            source = "public"
        data = self._default_bn_data()
        return [(self.bn, BNRegularizer(source, data))]

    def _run(self, obs, labels, seed, model, progress, stages, objective) -> Reconstruction:
        if self.control:
            obs = control_observation(obs, seed)
        snapshots: list = []  # per call: the attack object keeps no state between calls
        if self.snapshot_every > 0:
            counter = [0]
            for s in stages:
                s.parametrization = Snapshots(s.parametrization, self.snapshot_every, snapshots, counter)
        rec = search(obs, stages, objective, labels, restarts=self.restarts, seed=seed, model=model,
                     progress=progress, name=self.name + (" (control)" if self.control else ""))
        if self.control:
            rec.add(RandomControl())
        if self.snapshot_every > 0:
            rec.add(SnapshotSeries(self.snapshot_every, snapshots, rec.best_restart))
        return rec


@ATTACKS.register("gi-x")
class GIX(_PriorMixin, InvertGrad):
    """GI-x (Geiping et al., 2020 = :class:`InvertGrad`) with the +BN prior (GI-x+BN = GradInversion's
    fidelity term, Yin et al., 2021), the control and snapshots. ``bn_data`` names the public dataset
    for ``bn_source: public``."""

    name = "gi-x"

    def __init__(self, iterations: Iterations = 2000, lr: LearningRate = INVERTGRAD_LR, tv: Weight = INVERTGRAD_TV,
                 restarts: Iterations = 1,
                 signed: bool = True, box: bool = True, distance: Distance = "cosine",
                 init: Literal["randn", "uniform"] = "randn", bn: Weight = 0.0, bn_source: BNSource = "exact",
                 bn_data: str | None = None, control: bool = False, snapshot_every: Steps = 0):
        _check_distance(distance)
        InvertGrad.__init__(self, iterations, lr, tv, restarts, signed, box, distance, init)
        self._setup_common(bn, bn_source, bn_data, control, snapshot_every)

    def objective(self, obs):
        obj = InvertGrad.objective(self, obs)
        obj.regularizers = list(obj.regularizers) + self._bn_regularizers()
        return obj

    def __call__(self, obs, labels=None, seed=0, model=None, progress=True):
        return self._run(obs, labels, seed, model, progress, self.stages(), self.objective(obs))

    @classmethod
    def audit_plan(cls, situation):
        """When the client shares its batch's BN statistics: GI-x with GradInversion's BN-statistics prior on
        the exact shared statistics (weight 1e-2, the GIAS table's), distance ``auto``."""
        if situation.obs.bn_stats is None:
            return None
        return AuditPlan(cls(restarts=situation.restarts, distance="auto", bn=1e-2, bn_source="exact"),
                         "gradient matching + the shared BN statistics as prior")


class GenerativeAttack(_PriorMixin, SearchAttack):
    """Base of the GIAS presets: loads the prior, builds the objective (distance + TV + optional ‖z‖ and
    BN terms), passes the labels to conditional priors, runs the search."""

    name = "gias-base"

    def _setup(self, prior, restarts, lr_z, lr_w, tv, distance, z_penalty, bn, bn_source, bn_data, control,
               snapshot_every, space):
        SearchAttack.__init__(self, restarts)
        _check_distance(distance)
        for key, v in (("lr_z", lr_z), ("lr_w", lr_w)):
            if v <= 0:
                raise UserError(f"attack.options.{key}: got {v}; allowed: a learning rate > 0")
        if z_penalty < 0 or tv < 0:
            raise UserError(f"attack.options: tv and z_penalty must be >= 0, got {tv}, {z_penalty}")
        self.prior_spec, self.space = prior, space
        self.lr_z, self.lr_w, self.tv, self.distance, self.z_penalty = lr_z, lr_w, tv, distance, z_penalty
        self._setup_common(bn, bn_source, bn_data, control, snapshot_every)
        self._prior: Prior | None = None  # loaded once, read-only afterwards
        _ = self.prior  # load now: a bad prior is a one-line error before anything runs

    @property
    def prior(self) -> Prior:
        if self._prior is None:
            self._prior = load_prior(self.prior_spec, space=self.space)
        return self._prior

    def _default_bn_data(self):
        return self.bn_data or self.prior.meta.get("dataset")

    def objective(self, obs: Observation, latent: "Latent | None" = None) -> Objective:
        """Distance + TV + BN terms, and λ_z‖z‖ on ``latent`` (the call's latent stage) when z_penalty > 0."""
        distance = self.distance
        if distance == "auto":
            from gradleak.defenses.estimate import choose_distance

            distance = choose_distance(obs)
        regs = self._bn_regularizers()
        if self.z_penalty and latent is not None:
            lat = latent
            regs.append((self.z_penalty, lambda images, ctx: lat.norm_penalty()))
        return Objective(distance=distance, tv=self.tv, regularizers=regs)

    def __call__(self, obs: Observation, labels: Tensor | None = None, seed: int = 0, model: nn.Module | None = None,
                 progress: bool = True) -> Reconstruction:
        if self.prior.conditional and labels is None:
            raise UserError(f"prior {self.prior.name!r} is label-conditional: the attack needs labels "
                            "(attack.labels: oracle or recover)")
        latent = None
        stages = self.stages()
        for s in stages:
            if isinstance(s.parametrization, _PriorParam):
                s.parametrization.labels = labels
            if isinstance(s.parametrization, Latent):
                latent = s.parametrization
        rec = self._run(obs, labels, seed, model, progress, stages, self.objective(obs, latent))
        rec.add(PriorUsed(describe(self.prior)))
        return rec


@ATTACKS.register("gi-z")
class GIZ(GenerativeAttack):
    """GI-z: latent-space search, GIAS eq. (5)."""

    name = "gi-z"

    def __init__(self, prior: PriorSpec, iterations: Iterations = 2000, restarts: Iterations = 4,
                 lr_z: LearningRate = 3e-2, tv: Weight = 1e-4, distance: Distance = "cosine", z_penalty: Weight = 0.0,
                 bn: Weight = 0.0, bn_source: BNSource = "exact",
                 bn_data: str | None = None, control: bool = False, snapshot_every: Steps = 0,
                 space: Literal["z", "w", "w+"] = "w+"):
        self._setup(prior, restarts, lr_z, 1e-3, tv, distance, z_penalty, bn, bn_source, bn_data, control,
                    snapshot_every, space)
        self.iterations = iterations

    def stages(self):
        return [Stage("z", Latent(self.prior), self.iterations, self.lr_z)]


@ATTACKS.register("gi-w")
class GIW(GenerativeAttack):
    """GI-w: per-image generator-weight search from fixed random latents, GIAS eq. (7)."""

    name = "gi-w"
    untrained = False

    def __init__(self, prior: PriorSpec, iterations: Iterations = 2000, restarts: Iterations = 4,
                 lr_w: LearningRate = 1e-3, tv: Weight = 1e-4,
                 distance: Distance = "cosine", bn: Weight = 0.0, bn_source: BNSource = "exact",
                 bn_data: str | None = None, control: bool = False, snapshot_every: Steps = 0,
                 space: Literal["z", "w", "w+"] = "w+",
                 lr_w_relative: bool = True):
        self._setup(prior, restarts, 3e-2, lr_w, tv, distance, 0.0, bn, bn_source, bn_data, control,
                    snapshot_every, space)
        self.iterations, self.lr_w_relative = iterations, lr_w_relative

    def stages(self):
        w = GeneratorWeights(self.prior, None, untrained=self.untrained, relative=self.lr_w_relative)
        return [Stage("w", w, self.iterations, self.lr_w)]


@ATTACKS.register("gi-w-untrained")
class GIWUntrained(GIW):
    """GI-w from an untrained generator of the prior's architecture (deep image prior, Ulyanov et al., 2018)."""

    name = "gi-w-untrained"
    untrained = True


@ATTACKS.register("gi-zw", "gias")
class GIZW(GenerativeAttack):
    """GI-z/w = GIAS, Algorithm 1: latent search (eq. 5), then per-image weight search (eq. 7) from the
    latents found — each image's copy of w starts from the prior's weights."""

    name = "gi-zw"

    def __init__(self, prior: PriorSpec, iterations_z: Steps = 1000, iterations_w: Steps = 1000,
                 restarts: Iterations = 4,
                 lr_z: LearningRate = 3e-2, lr_w: LearningRate = 1e-3, tv: Weight = 1e-4, distance: Distance = "cosine",
                 z_penalty: Weight = 0.0, bn: Weight = 0.0, bn_source: BNSource = "exact", bn_data: str | None = None,
                 control: bool = False, snapshot_every: Steps = 0, space: Literal["z", "w", "w+"] = "w+",
                 lr_w_relative: bool = True):
        self._setup(prior, restarts, lr_z, lr_w, tv, distance, z_penalty, bn, bn_source, bn_data, control,
                    snapshot_every, space)
        self.iterations_z, self.iterations_w, self.lr_w_relative = iterations_z, iterations_w, lr_w_relative

    @classmethod
    def audit_plan(cls, situation):
        """When a generative prior produces the data's shape (channels and resolution) natively: the one the
        user named, else a shipped one. GIAS Algorithm 1 (GI-z then GI-w) with its appendix-G defaults,
        distance ``auto``."""
        prior = fitting_prior(situation)
        if prior is None:
            return None
        return AuditPlan(cls(prior, restarts=situation.restarts, distance="auto"),
                         f"generative prior {prior!r} fits the images' shape")

    def stages(self):
        lat = Latent(self.prior)
        return [Stage("z", lat, self.iterations_z, self.lr_z),
                Stage("w", GeneratorWeights(self.prior, lat, relative=self.lr_w_relative), self.iterations_w,
                      self.lr_w)]


@ATTACKS.register("gi-zx")
class GIZX(GenerativeAttack):
    """GI-z/x: latent search, then pixel search starting from G_w(z) (signed Adam, [0, 1] box). TV weight and
    pixel step default to InvertGrad's validated ones (:data:`~gradleak.attacks.presets.INVERTGRAD_TV`,
    :data:`~gradleak.attacks.presets.INVERTGRAD_LR`; docs/defaults.md); GIAS's were TV 1e-4, lr_x 0.01."""

    name = "gi-zx"

    def __init__(self, prior: PriorSpec, iterations_z: Steps = 1000, iterations_x: Steps = 1000,
                 restarts: Iterations = 4,
                 lr_z: LearningRate = 3e-2, lr_x: LearningRate = INVERTGRAD_LR, signed: bool = True,
                 tv: Weight = INVERTGRAD_TV,
                 distance: Distance = "cosine", z_penalty: Weight = 0.0, bn: Weight = 0.0,
                 bn_source: BNSource = "exact", bn_data: str | None = None, control: bool = False,
                 snapshot_every: Steps = 0, space: Literal["z", "w", "w+"] = "w+",):
        self._setup(prior, restarts, lr_z, 1e-3, tv, distance, z_penalty, bn, bn_source, bn_data, control,
                    snapshot_every, space)
        if lr_x <= 0:
            raise UserError(f"attack.options.lr_x: got {lr_x}; allowed: a learning rate > 0")
        self.iterations_z, self.iterations_x, self.lr_x, self.signed = iterations_z, iterations_x, lr_x, signed

    def stages(self):
        return [Stage("z", Latent(self.prior), self.iterations_z, self.lr_z),
                Stage("x", Pixels(init="previous", box=True), self.iterations_x, self.lr_x, signed=self.signed)]
