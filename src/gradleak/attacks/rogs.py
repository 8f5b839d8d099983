"""ROGS: semantic-level reconstruction (Yue et al., 2023, §6) — ROG followed by inversion into a
class-conditional generator's latent space.

    z* = argmin_z  L(G(z, y), X̂)                                                     (eq. 19)
    L(X1, X2) = λ1 ‖X1 − X2‖₂ + λ2 LPIPS(X1, X2)                                       (eq. 20)

X̂ is ROG's reconstruction (after its enhancement), y the class the attacker uses (given, or recovered from
the update — ``attack.labels``), G a class-conditional generator. The search starts from a random latent of
class y (the prior's sampler: N(0, I) for the DCGAN priors, truncated normal for BigGAN) and runs Adam for
``rogs_iterations`` (paper: 1000) with λ1 = λ2 = 1; the output is G(z*, y). All images (and
``rogs_restarts`` random starts each, best kept by loss) are optimised together as one batch.

One addition to the paper (``latent_constraint``, default ``sphere``): after every Adam step each latent is
projected back onto the sphere of its starting norm, so it stays in the region the generator was trained on.
Unconstrained (``none``, eq. 19 as written), the small DCGAN priors follow a poor X̂ out of distribution and
lose the class: under 3-bit QSGD the class tag of ROGS's output agreed with the original's on 56 % of 64 images
unconstrained and 73 % with the sphere (mean Jaccard 0.375 → 0.437; ``benchmarks/rogs_table.py --defense qsgd``).

``class_map`` maps the victim's class k to the generator's class ``class_map[k]`` (e.g. CIFAR-10 classes to
ImageNet classes for BigGAN); without it the two must coincide.

Generators (``generator``): ``auto`` (the shipped conditional DCGAN for the images' dataset shape —
:data:`BUILTIN_CONDITIONAL`, trained by ``gradleak train-prior --conditional`` on public data), a built-in
name, a path (a ``train-prior --conditional`` result, or a pytorch-pretrained-BigGAN directory,
:mod:`gradleak.priors.biggan`) or an import path (see :func:`gradleak.priors.load_prior`).

The perceptual term: LPIPS where its weights are installed, otherwise the feature distance named in
``perceptual`` (see :mod:`gradleak.attacks.perceptual`) — the report says which and why.

``Reconstruction.images`` are G(z*, y); the :class:`SemanticPath` artifact (``rec.get(SemanticPath)``) holds
ROG's output X̂ (``start``), the optimisation path ``[(iteration, images), …]`` from the start image to the
end (Figure 10, ``rogs_path.png`` in the run directory), the final eq. (20) value per image, the generator and
the perceptual term used; the audit scores X̂ too (``rog_before_inversion`` in ``metrics.json``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, Sequence

import torch
from pydantic import Field
from torch import Tensor, nn

from gradleak.attacks.artifacts import Artifact, Figure, Scorer, brief, matched_rows
from gradleak.attacks.base import ATTACKS, Reconstruction
from gradleak.attacks.perceptual import Distance, build_perceptual, describe_perceptual
from gradleak.attacks.rog import ROG, PostHook
from gradleak.devices import generator
from gradleak.errors import UserError, bad_value
from gradleak.fl.observation import Observation

#: dataset → shipped class-conditional DCGAN (``gradleak/assets/<stem>.safetensors`` + ``.json``)
BUILTIN_CONDITIONAL = {"digits": "prior-digits-cond"}


@dataclass
class SemanticPath(Artifact):
    """ROGS' generator inversion: ROG's output X̂ it started from (``start``), the path ``[(iteration,
    images)]`` from the random latent's image to G(z*, y) (Figure 10), the final eq. (20) value per image
    (``losses``), the ``generator`` and the ``perceptual`` term's record (:func:`build_perceptual`)."""

    start: Tensor
    path: list[tuple[int, Tensor]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    generator: str = ""
    perceptual: dict | None = None

    fact_labels = {"generator": "ROGS generator", "perceptual": "ROGS perceptual term"}

    def describe(self) -> dict:
        out = {"semantic_losses": self.losses, "generator": self.generator}
        if self.perceptual is not None:
            out["perceptual"] = describe_perceptual(self.perceptual)
        return out

    def score(self, truth: Tensor, scorer: Scorer) -> dict:
        """ROG's own output scored like the final images, for comparison."""
        return {"rog_before_inversion": brief(scorer(self.start, truth))}

    def draw(self, out: Path, originals: Tensor | None, order: list[int] | None) -> list[Figure]:
        """Figure 10: ROG's output, the inversion path (start … end), the originals; matched to the originals."""
        if not self.path:
            return []
        from gradleak.imagegrid import image_rows

        rows = matched_rows([self.start] + [images for _, images in self.path], order)
        labels = ["ROG input"] + [f"step {it}" for it, _ in self.path]
        if originals is not None:
            rows, labels = rows + [originals], labels + ["original"]
        image_rows(rows, labels, out / "rogs_path.png")
        return [("ROGS optimisation path (Figure 10): ROG input, generator from a random latent of the class, "
                 "steps, end" + ("; originals last" if originals is not None else ""), "rogs_path.png")]


def builtin_conditional_path(name: str) -> Path:
    return Path(str(resources.files("gradleak") / "assets" / f"{BUILTIN_CONDITIONAL[name]}.safetensors"))


def auto_generator(channels: int, resolution: int) -> str | None:
    """The shipped conditional generator whose images have this shape (grey ↔ RGB and resizing are applied by
    the prior, so only an exact shape match is chosen automatically)."""
    import json

    for name in BUILTIN_CONDITIONAL:
        p = builtin_conditional_path(name)
        if p.is_file():
            cfg = json.loads(p.with_suffix(".json").read_text()).get("config", {})
            if cfg.get("channels") == channels and cfg.get("resolution") == resolution:
                return name
    return None


def load_conditional(spec: str, shape: tuple[int, int, int]):
    """A class-conditional :class:`~gradleak.priors.Prior` for ROGS (see the module docstring)."""
    from gradleak.priors.checkpoint import read_pair
    from gradleak.priors.prior import dcgan_prior, load_prior

    text = str(spec).strip()
    if text == "auto":
        name = auto_generator(int(shape[0]), int(shape[-1]))
        if name is None:
            raise UserError(f"attack.options.generator: no shipped class-conditional generator for {shape[0]}-channel "
                            f"{shape[-1]}×{shape[-1]} images (shipped: {', '.join(BUILTIN_CONDITIONAL)}); train one "
                            "with gradleak train-prior --conditional and give its directory")
        text = name
    if text in BUILTIN_CONDITIONAL and not Path(text).exists():
        tensors, meta = read_pair(builtin_conditional_path(text))
        prior = dcgan_prior(tensors, meta, f"{text} (conditional)")
    else:
        prior = load_prior(text)
    if not prior.conditional:
        raise bad_value("attack.options.generator", text, "a class-conditional generator (ROGS starts from a latent of "
                        "the recovered class)")
    return prior


@dataclass
class Inversion:
    images: Tensor        # (B, C, H, W) in [0, 1]: G(z*, y)
    latents: Tensor       # (B, *latent_shape)
    losses: Tensor        # (B,) final eq. (20) value
    path: list            # [(iteration, (B, C, H, W) images)]
    trace: list[dict]     # mean loss per recorded iteration


def path_steps(iterations: int, n: int = 6) -> list[int]:
    """Iterations at which Figure 10's path is drawn: 0, then roughly geometric, then the last."""
    if iterations <= n:
        return list(range(iterations + 1))
    inner = torch.logspace(0, torch.log10(torch.tensor(float(iterations))), n - 1)[:-1]
    steps = sorted({0, *(int(round(float(s))) for s in inner), iterations})
    return steps


def invert(prior, targets: Tensor, labels: Tensor, *, iterations: int = 1000, lr: float = 0.05,
           lambda_l2: float = 1.0, lambda_perceptual: float = 1.0, perceptual: Distance | None = None,
           restarts: int = 1, seed: int = 0, record: Sequence[int] | None = None,
           constraint: str = "sphere") -> Inversion:
    """Eq. (19)–(20) for a batch: Adam on z for every (restart, image) at once; the best restart per image by
    its final loss. ``targets`` (B, C, H, W) in [0, 1]; ``labels`` (B,) class indices of the generator.

    ``constraint``: ``sphere`` (default) projects each latent back onto the sphere of its starting norm after
    every step, so z stays where the generator was trained (the typical set of its latent distribution, as in
    PULSE-style GAN inversion); ``none`` is the unconstrained eq. (19), whose latents can drift far out of
    distribution, where the image follows X̂ and stops looking like class y."""
    if constraint not in ("sphere", "none"):
        raise bad_value("attack.options.latent_constraint", constraint, "sphere, none")
    if targets.dim() != 4:
        raise UserError(f"rogs: targets must be (B, C, H, W), got shape {tuple(targets.shape)}")
    B = targets.shape[0]
    labels = torch.as_tensor(labels).reshape(-1).long()
    if labels.numel() != B:
        raise UserError(f"rogs: {B} images but {labels.numel()} labels")
    if labels.numel() and (labels.min() < 0 or labels.max() >= prior.num_classes):
        raise UserError(f"rogs: labels {labels.tolist()} outside the generator's classes 0..{prior.num_classes - 1}")
    if iterations < 0 or restarts < 1:
        raise UserError(f"rogs: iterations must be >= 0 and restarts >= 1, got {iterations}, {restarts}")
    shape = tuple(targets.shape[1:])
    gen = generator(seed)
    z = prior.sample_latent(restarts * B, gen).requires_grad_()
    y = labels.repeat(restarts)
    tgt = targets.detach().float().repeat(restarts, 1, 1, 1)
    radius = z.detach().flatten(1).norm(dim=1).reshape(-1, *([1] * (z.dim() - 1)))
    opt = torch.optim.Adam([z], lr=lr)
    record = sorted(set(path_steps(iterations) if record is None else record))

    def images() -> Tensor:
        return prior.to_pixels(prior.generate(z, y), shape)

    def loss_of(x: Tensor) -> Tensor:
        l2 = (x - tgt).flatten(1).norm(dim=1)
        per = lambda_l2 * l2
        if perceptual is not None and lambda_perceptual:
            per = per + lambda_perceptual * perceptual(x, tgt)
        return per

    path, trace = [], []
    for it in range(iterations + 1):
        x = images()
        per = loss_of(x)
        if it in record:
            path.append((it, x.detach().clamp(0, 1).reshape(restarts, B, *shape)))
            trace.append({"stage": "rogs", "iteration": it, "loss": float(per.detach().mean())})
        if it == iterations:
            break
        opt.zero_grad(set_to_none=True)
        per.sum().backward()
        opt.step()
        if constraint == "sphere":
            with torch.no_grad():
                z.mul_(radius / z.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(radius.shape))
    final = per.detach().reshape(restarts, B)
    best = final.argmin(0)
    pick = torch.arange(B)
    path = [(it, imgs[best, pick]) for it, imgs in path]
    zz = z.detach().reshape(restarts, B, *z.shape[1:])[best, pick]
    return Inversion(images=path[-1][1], latents=zz, losses=final[best, pick], path=path, trace=trace)


@ATTACKS.register("rogs")
class ROGS(ROG):
    """ROG, then inversion of its output into a class-conditional generator (eq. 19–20). ROG's options are
    unchanged; ``rogs_*``, ``generator``, ``lambda_*`` and ``perceptual`` control the inversion (module docstring)."""

    name = "rogs"

    def __init__(self, iterations: Annotated[int, Field(ge=1)] = 100, lr: Annotated[float, Field(gt=0)] = 0.05,
                 restarts: Annotated[int, Field(ge=1)] = 1,
                 representation: Literal["bicubic", "autoencoder", "pixels"] = "bicubic",
                 scale: Annotated[int, Field(ge=1)] = 4, autoencoder: str | None = None,
                 distance: Literal["auto", "l2", "masked_l2", "tanh_sign", "cosine", "masked_cosine"] = "auto",
                 tv: Annotated[float, Field(ge=0)] = 0.0, enhancer: str = "auto",
                 sign_postprocess: Literal["auto", "none", "normalize", "equalize"] = "auto",
                 post: PostHook | None = None,
                 generator: str = "auto", rogs_iterations: Annotated[int, Field(ge=0)] = 1000,
                 rogs_lr: Annotated[float, Field(gt=0)] = 0.05, rogs_restarts: Annotated[int, Field(ge=1)] = 1,
                 lambda_l2: Annotated[float, Field(ge=0)] = 1.0,
                 lambda_perceptual: Annotated[float, Field(ge=0)] = 1.0,
                 perceptual: Literal["auto", "lpips", "enhancer", "tagger", "none"] = "auto",
                 latent_constraint: Literal["sphere", "none"] = "sphere", class_map: list[int] | None = None,
                 lpips_dir: str | None = None):
        super().__init__(iterations=iterations, lr=lr, restarts=restarts, representation=representation, scale=scale,
                         autoencoder=autoencoder, distance=distance, tv=tv, enhancer=enhancer,
                         sign_postprocess=sign_postprocess, post=post)
        self.generator, self.rogs_iterations, self.rogs_lr = generator, rogs_iterations, rogs_lr
        self.rogs_restarts, self.lambda_l2, self.lambda_perceptual = rogs_restarts, lambda_l2, lambda_perceptual
        self.perceptual, self.lpips_dir, self.latent_constraint = perceptual, lpips_dir, latent_constraint
        if class_map is not None and (not class_map or any(isinstance(c, bool) or not isinstance(c, int) or c < 0
                                                           for c in class_map)):
            raise bad_value("attack.options.class_map", class_map, "a list of generator class indices (>= 0), one "
                            "per class of the victim's task")
        self.class_map = class_map
        self._prior = None if generator == "auto" else load_conditional(generator, (0, 0, 0))

    def __call__(self, obs: Observation, labels: Tensor | None = None, seed: int = 0,
                 model: nn.Module | None = None, progress: bool = True) -> Reconstruction:
        shape = tuple(obs.image_shape)
        prior = self._prior or load_conditional("auto", shape)           # fail before the (long) ROG search
        dist, record = build_perceptual(self.perceptual, shape, self.lpips_dir)
        rec = super().__call__(obs, labels=labels, seed=seed, model=model, progress=progress)
        return self.semantic(rec, prior, dist, record, labels, seed)

    def semantic(self, rec: Reconstruction, prior, dist: Distance, record: dict, labels: Tensor | None,
                 seed: int = 0) -> Reconstruction:
        """Replace ROG's output by G(z*, y) (eq. 19–20); keep ROG's and the path in a :class:`SemanticPath`."""
        y = labels if labels is not None else rec.labels
        if y is None:
            raise UserError("rogs: needs the class of each image (attack.labels: oracle or recover)")
        y = y.argmax(-1) if y.dim() == 2 else y
        if self.class_map is not None:
            if int(y.max()) >= len(self.class_map):
                raise UserError(f"attack.options.class_map: has {len(self.class_map)} entries; label {int(y.max())} "
                                "has none")
            y = torch.tensor(self.class_map)[y.long()]
        t0 = time.perf_counter()
        inv = invert(prior, rec.images, y, iterations=self.rogs_iterations, lr=self.rogs_lr,
                     lambda_l2=self.lambda_l2, lambda_perceptual=self.lambda_perceptual, perceptual=dist,
                     restarts=self.rogs_restarts, seed=seed, constraint=self.latent_constraint)
        rec.add(SemanticPath(start=rec.images.clone(), path=inv.path, losses=inv.losses.tolist(),
                             generator=prior.name, perceptual=record))
        rec.images = inv.images
        rec.trace = list(rec.trace) + inv.trace
        rec.seconds += time.perf_counter() - t0
        rec.iterations += self.rogs_iterations
        return rec
