"""ROG: Reconstruction from Obfuscated Gradients (Yue et al., 2023, §4–5), a preset of the search engine.

    Z* = argmin_Z ‖ Δ'(dec(Z)) − Δ̃ ‖²                                              (eq. 14)

The unknown batch is searched in a low-dimensional representation Z and decoded to images; the client's
FedAvg update Δ' (τ local steps, unrolled by :func:`gradleak.fl.client.batched_update`) is matched to the
observed, obfuscated upload Δ̃ in L2. After the search the decoded images are post-processed by a trained
enhancement network (:mod:`gradleak.nets.enhancer`).

Representations (``representation``):

* ``bicubic`` (§4.2's realisation) — Z is a low-resolution image, R/``scale`` × R/``scale`` (default 4);
  dec = bicubic upsampling ``F.interpolate(mode="bicubic", align_corners=False)``; initialised by encoding
  (bicubic downsampling) an image drawn from U(0, 1);
* ``autoencoder`` — Z is the spatial latent (d_z values) of an autoencoder trained on public data
  (``gradleak train-autoencoder``), dec its decoder, initialised as enc(U(0, 1) image);
* ``pixels`` — no projection (the "enhancement-only" ablation: the identity enc/dec).

Objective (``distance``): ``l2`` (eq. 14); ``tanh_sign`` for signSGD uploads (eq. 15,
:func:`gradleak.attacks.objectives.tanh_sign_distance`); ``masked_l2`` — L2 on the observed support,
for sparsified uploads (Top-k, Soteria's pruned columns), where the dropped entries are unknown rather than
zero; ``auto`` (default) picks from the attacker-side view of the defenses it was told about
(:func:`gradleak.defenses.estimate.told_view`: signs only → tanh_sign, unknown support → masked_l2, anything
else → l2) or, for a defense told by name only, from :func:`gradleak.defenses.estimate.choose_distance`.

Optimiser: Adam with cosine decay to 0 (§4.2), ``iterations``, ``restarts`` batched.

Defaults (:data:`ROG_ITERATIONS`, :data:`ROG_TV`; issue 27, ``benchmarks/defaults_vs_peer.py``,
docs/defaults.md): 300 iterations and a TV prior of weight 0.3 on the decoded images, tuned on real
photographs (endless-sky landscapes) under 4-bit quantised and Top-k uploads and checked on held-out ones —
the paper's 100 iterations without TV left the search output 4–6 dB lower there (the final, enhanced images
1.2–3.0 dB). The paper's setting is
``iterations: 100, tv: 0`` (``benchmarks/rog_table.py`` passes it).

Post-processing (:meth:`ROG.postprocess`, the preset's hook, run after the search):

1. signSGD (the distance used is ``tanh_sign``; ``sign_postprocess``): the sign carries no magnitude, so
   each image is normalised by its maximum absolute value (after centring) and, for the paper's TV-free
   search, histogram-equalised (:func:`normalize_maxabs`, :func:`equalize_hist`), as §4.3 does; ``auto``
   skips the equalisation when a TV prior is on (the default: it lowered the result by ≈ 2 dB on
   photographs, docs/defaults.md);
2. enhancement (``enhancer``): ``auto`` (the built-in enhancer trained at this very channel count and
   resolution, if any: ``photos64`` for 64 px RGB, ``digits32`` for 32 px grey — applied at another
   resolution it lowered ROG's output on 32 px photographs, docs/defaults.md), ``none``, a built-in name
   (``photos64``, ``digits32``) or a path to a ``train-enhancer`` result.

``Reconstruction.images`` are the final (post-processed) images and ``distance`` the distance used; the
:class:`PostSteps` artifact (``rec.get(PostSteps)``) holds the images after each step — ``steps["raw"]`` the
search output (decoded, clamped to [0, 1]), ``steps["normalized"]`` the signSGD-normalised images when that
step ran, ``steps["enhanced"]`` the enhanced ones — and the ``enhancer`` used; the audit scores every step
and the run directory shows them (``rog_steps.png``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gradleak.attacks.artifacts import Artifact, Figure, Scorer, brief, matched_rows
from gradleak.attacks.base import ATTACKS, AuditPlan, Reconstruction
from gradleak.attacks.engine import Objective, Stage, search
from gradleak.attacks.objectives import DISTANCES, masked_l2_distance  # noqa: F401  (re-export)
from gradleak.attacks.parametrizations import Parametrization, Pixels, keep_rows
from gradleak.attacks.presets import SearchAttack
from gradleak.errors import UserError, bad_value
from gradleak.fl.observation import Observation


# --- the artifact: images after each post-processing step --------------------------------------------------

@dataclass
class PostSteps(Artifact):
    """ROG's images after each post-processing step, by step name in order (``raw`` search output,
    ``normalized`` signSGD normalisation, ``enhanced``), and the enhancer used (None: no enhancement)."""

    steps: dict[str, Tensor] = field(default_factory=dict)
    enhancer: str | None = None

    fact_labels = {"enhancer": "ROG enhancer", "intermediates": "ROG post-processing steps"}

    def describe(self) -> dict:
        return {"intermediates": list(self.steps), **({"enhancer": self.enhancer} if self.enhancer else {})}

    def score(self, truth: Tensor, scorer: Scorer) -> dict:
        """Each step scored like the final images (what normalisation and enhancement add); a single step is
        the final image itself and is not scored again."""
        if len(self.steps) < 2:
            return {}
        return {"intermediate_scores": {name: brief(scorer(images, truth)) for name, images in self.steps.items()}}

    def draw(self, out: Path, originals: Tensor | None, order: list[int] | None) -> list[Figure]:
        if len(self.steps) < 2:
            return []
        from gradleak.imagegrid import image_rows

        rows, labels = matched_rows(list(self.steps.values()), order), list(self.steps)
        if originals is not None:
            rows, labels = rows + [originals], labels + ["original"]
        image_rows(rows, labels, out / "rog_steps.png")
        return [("ROG post-processing: the search output (raw) and the images after each step"
                 + ("; originals last" if originals is not None else ""), "rog_steps.png")]


# --- distance ----------------------------------------------------------------------------------------------



def relative(dist, observed: list[Tensor]):
    """``dist / ‖Δ̃‖²``: the same minimiser, but the loss is O(1) instead of O(η²‖g‖²) — FedAvg updates are
    tiny (η = 5e-3), and with raw values Adam's ε (1e-8) would dominate its step size (the ROG code divides
    Δ̃ by η for the same reason)."""
    scale = float(sum(o.double().pow(2).sum() for o in observed))
    scale = scale if scale > 0 else 1.0

    def scaled(trial: list[Tensor], obs: list[Tensor]) -> Tensor:
        return dist(trial, obs) / scale

    scaled.__name__ = f"relative_{getattr(dist, '__name__', 'distance')}"
    return scaled


def rog_distance(obs: Observation) -> str:
    """The distance ``distance: auto`` resolves to (see the module docstring): the L2 twin of
    :func:`~gradleak.defenses.estimate.choose_distance`'s pick when there is something to model (signs, an unknown
    support, a defense applied without telling the attacker), plain ``l2`` otherwise."""
    from gradleak.defenses.estimate import choose_distance, told_view

    view = told_view(obs)
    if view.sign or view.support or any(d.get("attacker_knows", True) is False for d in obs.defenses):
        return {"cosine": "l2", "masked_cosine": "masked_l2"}.get(choose_distance(obs, view), "tanh_sign")
    return "l2"


# --- representations ---------------------------------------------------------------------------------------

def bicubic_up(z: Tensor, size: tuple[int, int]) -> Tensor:
    """dec: bicubic upsampling of (..., C, h, w) to (..., C, *size), differentiable."""
    lead = z.shape[:-3]
    out = F.interpolate(z.reshape(-1, *z.shape[-3:]), size=size, mode="bicubic", align_corners=False)
    return out.reshape(*lead, *out.shape[-3:])


def bicubic_down(x: Tensor, size: tuple[int, int]) -> Tensor:
    """enc: bicubic downsampling of (..., C, H, W) to (..., C, *size)."""
    lead = x.shape[:-3]
    out = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=size, mode="bicubic", align_corners=False)
    return out.reshape(*lead, *out.shape[-3:])


class Bicubic(Parametrization):
    """ROG §4.2: Z = a (R, B, C, ⌈H/s⌉, ⌈W/s⌉) low-resolution image; images = bicubic upsampling of Z.
    ``init="uniform"``: Z = enc(X'), X' ~ U(0, 1) at full resolution; ``"previous"``: enc(previous stage)."""

    name = "bicubic"

    def __init__(self, scale: int = 4, init: str = "uniform"):
        if scale < 1:
            raise bad_value("attack.options.scale", scale, "an integer >= 1")
        if init not in ("uniform", "previous"):
            raise ValueError(f"Bicubic init must be uniform | previous, got {init!r}")
        self.scale, self.init = scale, init
        self.z: Tensor | None = None
        self.size: tuple[int, int] = (0, 0)

    def low_size(self, shape: tuple[int, int, int]) -> tuple[int, int]:
        H, W = shape[-2:]
        return (-(-H // self.scale), -(-W // self.scale))

    def start(self, restarts, batch, shape, prev, gen):
        self.size = tuple(shape[-2:])
        low = self.low_size(shape)
        if self.init == "previous" and prev is not None:
            x = prev.detach()
        else:
            x = torch.rand((restarts, batch, *shape), generator=gen)
        self.z = bicubic_down(x, low).detach().clone().requires_grad_()
        return [self.z]

    def images(self) -> Tensor:
        return bicubic_up(self.z, self.size)

    def select(self, keep):
        self.z = keep_rows(self.z, keep, self.z.shape[0]).requires_grad_()
        return [self.z]


class AutoencoderLatent(Parametrization):
    """Z = the autoencoder's spatial latent (R, B, c_z, h, w); images = dec(Z); init Z = enc(X'), X' ~ U(0, 1)."""

    name = "autoencoder"

    def __init__(self, autoencoder: nn.Module):
        self.ae = autoencoder.eval()
        for p in self.ae.parameters():
            p.requires_grad_(False)
        self.z: Tensor | None = None
        self.lead: tuple[int, int] = (0, 0)

    def start(self, restarts, batch, shape, prev, gen):
        want = (self.ae.channels, self.ae.resolution, self.ae.resolution)
        if tuple(shape) != want:
            raise UserError(f"attack.options.autoencoder: trained for images {want}; the observation's images are "
                            f"{tuple(shape)} (train one with gradleak train-autoencoder at this size)")
        x = prev.detach() if prev is not None else torch.rand((restarts, batch, *shape), generator=gen)
        with torch.no_grad():
            z = self.ae.encode(x.reshape(-1, *shape))
        self.lead = (restarts, batch)
        self.z = z.reshape(restarts, batch, *z.shape[1:]).clone().requires_grad_()
        return [self.z]

    def select(self, keep):
        self.z = keep_rows(self.z, keep, self.z.shape[0]).requires_grad_()
        self.lead = (self.z.shape[0], self.lead[1])
        return [self.z]

    def images(self) -> Tensor:
        x = self.ae.decode(self.z.reshape(-1, *self.z.shape[2:]))
        return x.reshape(*self.lead, *x.shape[1:])


# --- post-processing ----------------------------------------------------------------------------------------

def normalize_maxabs(x: Tensor) -> Tensor:
    """§4.3: each image (…, C, H, W), centred on its mean, divided by its maximum absolute value over all
    coordinates, mapped from [−1, 1] to [0, 1]."""
    dims = (-3, -2, -1)
    c = x - x.mean(dims, keepdim=True)
    return (c / c.abs().amax(dims, keepdim=True).clamp_min(1e-12) + 1) / 2


def equalize_hist(x: Tensor, nbins: int = 256) -> Tensor:
    """Histogram equalisation of each image (…, C, H, W) over all its values jointly (as
    ``skimage.exposure.equalize_hist``: the normalised cumulative histogram, interpolated at the values
    from the bin centres). Output in [0, 1]."""
    lead = x.shape[:-3]
    flat = x.reshape(-1, x.shape[-3:].numel()).to(torch.float64)
    out = torch.empty_like(flat)
    for i, v in enumerate(flat):
        lo, hi = float(v.min()), float(v.max())
        if hi <= lo:
            out[i] = 0.5
            continue
        hist = torch.histc(v, bins=nbins, min=lo, max=hi)
        cdf = hist.cumsum(0) / hist.sum()
        width = (hi - lo) / nbins
        centers = lo + width * (torch.arange(nbins, dtype=torch.float64) + 0.5)
        out[i] = _interp(v, centers, cdf)
    return out.reshape(*lead, *x.shape[-3:]).to(x.dtype).clamp(0, 1)


def _interp(v: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """np.interp for increasing ``xp`` (constant beyond the ends)."""
    idx = torch.searchsorted(xp, v).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    t = ((v - x0) / (x1 - x0)).clamp(0, 1)
    return f0 + t * (f1 - f0)


# --- the preset ---------------------------------------------------------------------------------------------

PostHook = Callable[..., Tensor]  # (images (B, C, H, W), obs, labels | None) -> images

#: ROG's search length and TV weight, validated on real photographs (issue 27, docs/defaults.md): tuned on the
#: endless-sky landscape photographs (LeNet B4, 4-bit quantised and Top-k 10 % uploads), checked on the held-out
#: foolbox ImageNet / CIFAR-10 samples. The paper's 100 iterations without TV (TV 0) stayed 1.2–3.0 dB below these
#: there (4–6 dB before the enhancer); benchmarks that reproduce the paper pass its values explicitly.
ROG_ITERATIONS = 300
ROG_TV = 0.3


@ATTACKS.register("rog")
class ROG(SearchAttack):
    """ROG (Yue et al., 2023): search in a low-dimensional representation (bicubic ×``scale`` by default),
    L2 to the obfuscated FedAvg upload (tanh–sign for signSGD, masked for sparsified uploads), Adam with
    cosine decay from a U(0, 1) start, then post-processing (signSGD normalisation + histogram
    equalisation, the trained enhancer). See the module docstring for every option."""

    name = "rog"

    def __init__(self, iterations: Annotated[int, Field(ge=1)] = ROG_ITERATIONS,
                 lr: Annotated[float, Field(gt=0)] = 0.05,
                 restarts: Annotated[int, Field(ge=1)] = 1,
                 representation: Literal["bicubic", "autoencoder", "pixels"] = "bicubic",
                 scale: Annotated[int, Field(ge=1)] = 4, autoencoder: str | None = None,
                 distance: Literal["auto", "l2", "masked_l2", "tanh_sign", "cosine", "masked_cosine"] = "auto",
                 tv: Annotated[float, Field(ge=0)] = ROG_TV, enhancer: str = "auto",
                 sign_postprocess: Literal["auto", "none", "normalize", "equalize"] = "auto",
                 post: PostHook | None = None):
        super().__init__(restarts)
        self.iterations, self.lr, self.representation, self.scale = iterations, lr, representation, scale
        self.distance, self.tv, self.sign_postprocess, self.post = distance, tv, sign_postprocess, post
        self._ae = None
        if representation == "autoencoder":
            if not autoencoder:
                raise bad_value("attack.options.autoencoder", autoencoder,
                                "a train-autoencoder output (directory or .safetensors) when representation is "
                                "autoencoder")
            from gradleak.nets.autoencoder import load_autoencoder

            self._ae = load_autoencoder(autoencoder)
        self.autoencoder = autoencoder
        self.enhancer = enhancer
        self._enh = None
        if enhancer not in ("auto", "none"):
            from gradleak.nets.enhancer import load_enhancer

            self._enh = load_enhancer(enhancer, "attack.options.enhancer")

    @classmethod
    def audit_plan(cls, situation):
        """When the upload carries an obfuscation (quantized, sparsified, signed or noised, as the defenses'
        attacker views say or the upload betrays): ROG's defaults, its distance from the view."""
        view = situation.view
        if not view.obfuscated:
            return None
        what = ", ".join(k for k in ("quantized", "sign", "support", "noise") if getattr(view, k))
        return AuditPlan(cls(restarts=situation.restarts), f"obfuscated upload ({what}): ROG")

    def parametrization(self) -> Parametrization:
        if self.representation == "bicubic":
            return Bicubic(self.scale)
        if self.representation == "autoencoder":
            return AutoencoderLatent(self._ae)
        return Pixels(init="uniform")

    def stages(self) -> list[Stage]:
        return [Stage(self.representation, self.parametrization(), self.iterations, self.lr, optimizer="adam",
                      schedule="cosine")]

    def resolved_distance(self, obs: Observation) -> str:
        """The distance this observation is attacked with (``auto``: :func:`rog_distance`)."""
        return rog_distance(obs) if self.distance == "auto" else self.distance

    def objective(self, obs: Observation) -> Objective:
        d = self.resolved_distance(obs)
        dist = DISTANCES[d]
        if d in ("l2", "masked_l2"):
            dist = relative(dist, [obs.as_delta().update[n] for n in obs.parameters])  # the search's Δ
        return Objective(distance=dist, tv=self.tv)

    def __call__(self, obs: Observation, labels: Tensor | None = None, seed: int = 0,
                 model: nn.Module | None = None, progress: bool = True) -> Reconstruction:
        stages = self.stages()
        rec = search(obs, stages, self.objective(obs), labels, restarts=self.restarts, seed=seed, model=model,
                     progress=progress, name=self.name)
        rec.distance = self.resolved_distance(obs)
        return self.postprocess(rec, obs, labels, stages[0].parametrization)

    # the preset's post-processing hook ------------------------------------------------------------------
    def resolve_enhancer(self, obs: Observation):
        """The enhancer object to use (None: no enhancement); ``auto``: a built-in one trained at the images'
        own channel count and resolution, else none."""
        if self._enh is not None or self.enhancer == "none":
            return self._enh
        from gradleak.nets.enhancer import auto_enhancer, load_enhancer

        C, H, _ = obs.image_shape
        name = auto_enhancer(C, H, exact=True)
        return None if name is None else load_enhancer(name, "attack.options.enhancer")

    def postprocess(self, rec: Reconstruction, obs: Observation, labels: Tensor | None,
                    param: Parametrization | None = None) -> Reconstruction:
        """Sign normalisation / equalisation (signSGD), enhancement, then the user's ``post`` hook.
        ``param``: the search's parametrization (its unclamped images feed the sign normalisation)."""
        raw = rec.images
        x = raw
        steps: dict[str, Tensor] = {"raw": raw.clone()}
        sign_mode = self.sign_postprocess
        if sign_mode == "auto":
            # the paper's TV-free search output is noise-like: §4.3's equalisation; with a TV prior (the default)
            # equalisation over-stretches the smooth output (−2 dB on photographs), the max-abs normalisation
            # alone does not (docs/defaults.md)
            sign_mode = ("normalize" if self.tv else "equalize") if rec.distance == "tanh_sign" else "none"
        if sign_mode != "none":
            unclamped = param.images().detach()[rec.best_restart] if param is not None else raw
            x = normalize_maxabs(unclamped)
            if sign_mode == "equalize":
                x = equalize_hist(x)
            steps["normalized"] = x.clone()
        enh = self.resolve_enhancer(obs)
        if enh is not None:
            lab = labels if labels is not None else rec.labels
            x = enh(x, lab)
            steps["enhanced"] = x.clone()
        if self.post is not None:
            x = self.post(x, obs, labels)
        rec.images = x.detach().clamp(0, 1)
        rec.add(PostSteps(steps, None if enh is None else enh.name))
        return rec

