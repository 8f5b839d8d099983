"""One audit as one unit: a validated config in, an :class:`AuditResult` out; writing is separate.

    config ─► Case ─► Observation ─► attack(obs, labels) ─► Reconstruction ─► scores

:func:`audit` is a pure function of the config (and the thread count: see the README on reproducibility):
it builds the client side (:func:`build_case`), captures what the server sees
(:func:`gradleak.case.capture`), runs the attack, matches and scores the reconstruction, and returns
every piece as a typed field. :func:`gradleak.report.writer.write_run` turns a result into a run directory. ``gradleak run``,
``demo``, ``attack``, ``sweep``, ``tradeoff``, ``audit-run`` and the benchmark scripts all go through these two.

Every source of observations meets in one function, :func:`audit_observed` (attack step → match and score →
calibration → :class:`AuditResult`): :func:`audit_case` captures a simulated client and hands it on; a captured
file (:func:`gradleak.deploy.attack_saved`), a Flower capture (:func:`gradleak.leakage.measure_leakage`) and the
benchmarks' own clients enter it directly.

Everything that can fail on user input (data, model, options, defenses, tagger) is built before the
attack runs; files are written atomically, ``metrics.json`` last.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gradleak.attacks import Attack, Reconstruction, build_attack
from gradleak.attacks.artifacts import merge_facts
from gradleak.attacks.labels import label_accuracy, recover_labels
from gradleak.calibration import Calibration, calibration_of
from gradleak.case import Case, capture
from gradleak.config import RunConfig
from gradleak.data import load_dataset, sample_batch
from gradleak.defenses import build_defenses
from gradleak.devices import resolve as resolve_device, run_attack
from gradleak.errors import UserError
from gradleak.fl.observation import Observation
from gradleak.fl.protocol import Protocol
from gradleak.metrics import apply_match, lpips_status, score_images
from gradleak.models import build_model, init_model, pretrain


@dataclass
class Environment:
    """Where the numbers were computed: they are reproducible for the same seed at the same thread count
    on the same torch build (floating-point reduction order changes with threads and hardware)."""

    device: str
    threads: int
    torch: str
    gradleak: str
    python: str
    backend: str = "loop"  # the step-backend setting (gradleak.backends.setting); what ran: Reconstruction.backend

    @classmethod
    def current(cls, device: str = "cpu", backend: str | None = None) -> "Environment":
        """The execution settings in force (``backend``: the one given, else the one in force here)."""
        from gradleak import __version__
        from gradleak.backends.setting import current

        return cls(device=device, threads=torch.get_num_threads(), torch=torch.__version__, gradleak=__version__,
                   python=platform.python_version(), backend=backend or current())


@dataclass
class Timing:
    """Wall seconds per phase."""

    prepare: float
    capture: float
    attack: float
    score: float


@dataclass
class Scores:
    """The matched reconstruction's scores: each metric a ``{"mean", "best", "per_image"}`` summary
    (:func:`gradleak.metrics.score_images`); ``order[i]`` is the reconstruction matched to original i."""

    psnr: dict
    ssim: dict
    mse: dict
    lpips: dict | None
    lpips_unavailable: str | None
    order: list[int]
    semantic: dict  # jaccard summary (or None) + why unavailable, tags, tagger
    lpips_upsample: bool | None = None  # LPIPS resizing (False = the reference lpips package); None: no LPIPS

    def to_dict(self) -> dict:
        return {"psnr": self.psnr, "ssim": self.ssim, "mse": self.mse, "lpips": self.lpips,
                "lpips_unavailable": self.lpips_unavailable, "lpips_upsample": self.lpips_upsample,
                **self.semantic}


@dataclass
class AuditResult:
    """Everything one audit produced, as typed fields. :meth:`metrics` is what ``metrics.json`` holds."""

    config: RunConfig
    case: Case
    observation: Observation
    reconstruction: Reconstruction
    label_mode: str
    label_accuracy: float | None  # None: the attack recovers no labels
    scores: Scores
    timing: Timing
    environment: Environment
    matched: Tensor  # reconstructions in the originals' order (B, C, H, W)
    artifact_scores: dict = field(default_factory=dict)  # each artifact's own scores (Artifact.score), JSON
    notes: list[str] = field(default_factory=list)
    calibration: Calibration | None = None  # references, margins, verdict, header (gradleak.calibration)
    audit: Any = None  # attack: auto — gradleak.autoaudit.AuditSummary (verdict with control, attacks, winners)
    attack_images: dict[str, Tensor] = field(default_factory=dict)  # attack: auto — each attack's matched images

    @property
    def originals(self) -> Tensor:
        return self.case.images

    def metrics(self) -> dict:
        """``metrics.json``: the verdict, the reconstruction's facts (its artifacts' included), the scores (its
        artifacts' included), the run's facts; a key given twice is an error (:func:`merge_facts`)."""
        rec = self.reconstruction
        cal = self.calibration
        out = merge_facts({"header": cal.header, "verdict": cal.verdict} if cal is not None else {},
                          rec.describe(), self.scores.to_dict(), self.artifact_scores, {
            "label_mode": self.label_mode,
            "label_accuracy": self.label_accuracy,
            "seed": self.config.seed,
            "defenses": self.observation.defenses,
            "timing": {"prepare": round(self.timing.prepare, 3), "capture": round(self.timing.capture, 3),
                       "attack": round(self.timing.attack, 3), "score": round(self.timing.score, 3)},
            "environment": vars(self.environment),
        })
        if self.notes:
            out["notes"] = list(self.notes)
        if cal is not None:
            out["reference"], out["margins"] = cal.reference, cal.margins
        if self.audit is not None:
            out["audit"] = self.audit.to_dict()
        return out


# --- the pieces --------------------------------------------------------------------------------------------

def build_case(cfg: RunConfig) -> Case:
    """Data, victim and protocol from the config (no files written)."""
    d, m = cfg.data, cfg.model
    private = load_dataset(d.name, split=d.split, resolution=d.resolution, channels=d.channels, root=d.root)
    images, labels = sample_batch(private, d.batch_size, distinct_labels=d.distinct_labels, seed=cfg.seed)
    model = build_model(m.name, private.num_classes, d.channels, d.resolution, **m.options)
    init_model(model, cfg.seed)
    if m.pretrain_steps:
        public_split = {"private": "public", "test": "train"}.get(d.split, d.split)
        public = load_dataset(d.name, split=public_split,
                              resolution=d.resolution, channels=d.channels, root=d.root)
        pretrain(model, public.images, public.labels, steps=m.pretrain_steps, lr=m.pretrain_lr, seed=cfg.seed)
    return Case(model=model, images=images, labels=labels, protocol=protocol_of(cfg),
                defenses=build_defenses(cfg.defense), model_spec=model.gradleak_spec)


def protocol_of(cfg: RunConfig) -> Protocol:
    """The client protocol of the config's ``client`` section."""
    return Protocol(**cfg.client.model_dump(exclude={"protocol"}), kind=cfg.client.protocol)


def label_mode_of(choice: str, attack: Attack, obs: Observation | None = None) -> str:
    """oracle | recover | learn: the config's ``attack.labels`` choice, or the attack's default; ``oracle`` on an
    ``obs`` that holds no labels (a captured upload whose server was not given them) becomes ``recover``."""
    mode = attack.default_labels if choice == "default" else choice
    return "recover" if mode == "oracle" and obs is not None and obs.labels is None else mode


def attack_labels(obs: Observation, mode: str, model) -> Tensor | None:
    """Labels the attacker uses: given (oracle), recovered from the last layer's update (the sign rule of iDLG /
    Yin et al. for the classes certainly present, label counts of Geng et al. for the rest:
    :func:`gradleak.attacks.labels.recover_labels`), or None (learned)."""
    if mode == "oracle":
        return obs.labels
    if mode == "recover":
        return recover_labels(obs, model)
    return None


def check_tagger(cfg: RunConfig) -> None:
    """Load the configured tagger once so that a bad one fails before the attack runs."""
    from gradleak.metrics.semantic import load_tagger

    d, mc = cfg.data, cfg.metrics
    load_tagger(mc.tagger, threshold=mc.tagger_threshold, top_k=mc.tagger_top_k,
                shape=(d.channels, d.resolution, d.resolution), dataset=d.name)


def semantic_scores(matched: Tensor, originals: Tensor, cfg: RunConfig) -> dict:
    """Tags of originals and matched reconstructions and their Jaccard index (ROGS eq. 21), or why unavailable."""
    from gradleak.metrics.semantic import load_tagger, semantic_scores as tag_scores, tagger_unavailable

    mc = cfg.metrics
    shape = tuple(originals.shape[1:])
    tagger = load_tagger(mc.tagger, threshold=mc.tagger_threshold, top_k=mc.tagger_top_k, shape=shape,
                         dataset=cfg.data.name)
    if tagger is None:
        why = "metrics.tagger is none" if mc.tagger == "none" else tagger_unavailable(shape, cfg.data.name)
        return {"jaccard": None, "jaccard_unavailable": why}
    out = tag_scores(tagger, matched, originals)
    return {"jaccard": out["jaccard"], "jaccard_unavailable": None, "tags": out["tags"], "tagger": out["tagger"]}


def score(images: Tensor, originals: Tensor, cfg: RunConfig) -> tuple[Scores, Tensor]:
    """Match ``images`` to the originals (optimal assignment), score them; LPIPS where weights exist."""
    net, reason = lpips_status(cfg.metrics.lpips_dir, upsample=cfg.metrics.lpips_upsample)
    s = score_images(images, originals, lpips_model=net, lpips_reason=reason)
    matched = apply_match(images, s["order"])
    sem = semantic_scores(matched, originals, cfg)
    return Scores(psnr=s["psnr"], ssim=s["ssim"], mse=s["mse"], lpips=s["lpips"],
                  lpips_unavailable=s["lpips_unavailable"], order=s["order"], semantic=sem,
                  lpips_upsample=s["lpips_upsample"]), matched


def score_artifacts(rec: Reconstruction, originals: Tensor, cfg: RunConfig) -> dict:
    """Every artifact of ``rec`` scores its own images against ``originals`` with the run's scorer
    (:meth:`gradleak.attacks.artifacts.Artifact.score`); their facts, merged."""
    def scorer(images: Tensor, truth: Tensor) -> Scores:
        return score(images, truth, cfg)[0]

    return merge_facts({}, *(a.score(originals, scorer) for a in rec.artifacts))


def attack_once(cfg: RunConfig) -> Attack:
    """``cfg.attack`` built once per process (:func:`gradleak.loadonce.once`: the same object for the same name
    and options, counted as ``attack``), for callers that audit many configs with one attack — a sweep's
    cells are checked, then run, with the attack (and its prior) built once."""
    import json

    from gradleak.loadonce import once

    a = cfg.attack
    return once("attack", (), (a.name, json.dumps(a.options, sort_keys=True, default=str)),
                lambda: build_attack(a.name, **a.options))


# --- the audit ---------------------------------------------------------------------------------------------

def audit(cfg: RunConfig, progress: bool = False, attack: Attack | None = None) -> AuditResult:
    """Run one audit of ``cfg`` and return everything it produced (nothing is written).

    ``attack``: an already built attack object to reuse (e.g. across a sweep's runs); by default it is
    built from ``cfg.attack``."""
    t0 = time.perf_counter()
    if cfg.attack.name == "auto" and attack is None:
        raise UserError("attack.name: got 'auto' in gradleak.audit.audit; allowed: a registered attack here — the "
                        "portfolio runs through gradleak.autoaudit.audit_auto (gradleak audit, gradleak run, sweeps)")
    torch.manual_seed(cfg.seed)
    check_tagger(cfg)
    attack = attack or build_attack(cfg.attack.name, **cfg.attack.options)
    case = build_case(cfg)
    return audit_case(cfg, case, attack, progress=progress, started=t0)


def audit_case(cfg: RunConfig, case: Case, attack: Attack, progress: bool = False,
               started: float | None = None) -> AuditResult:
    """Audit a client side built elsewhere (e.g. a victim trained by ``gradleak tradeoff``): capture its
    upload, then :func:`audit_observed`. ``cfg`` supplies the seed, the label mode, the device and the metrics."""
    t0 = time.perf_counter() if started is None else started
    case.give_labels = label_mode_of(cfg.attack.labels, attack) == "oracle"
    t1 = time.perf_counter()
    obs = capture(case, seed=cfg.seed)
    seconds = time.perf_counter() - t1
    return audit_observed(cfg, obs, attack, case.images, case.labels, obs.build_model(), case=case, progress=progress,
                          started=t0, capture_seconds=seconds)


def attack_observed(cfg: RunConfig, obs: Observation, attack: Attack, model, progress: bool = False,
                    device: torch.device | None = None) -> tuple[Reconstruction, str]:
    """The pipeline's attack step: the label mode (:func:`label_mode_of`), the attacker's labels
    (:func:`attack_labels`) and ``attack`` on ``cfg.device`` (:func:`gradleak.devices.run_attack`), on the
    upload as Δ = θ_0 − θ_τ (:meth:`Observation.as_delta`). ``model``: the victim with θ_0
    (:meth:`Observation.build_model`); ``device``: ``cfg.device`` resolved by the caller (default: here).
    Returns the reconstruction and the label mode used."""
    device = resolve_device(cfg.device) if device is None else device
    obs = obs.as_delta()
    mode = label_mode_of(cfg.attack.labels, attack, obs)
    labels = attack_labels(obs, mode, model)
    return run_attack(attack, obs, labels, cfg.seed, model, progress, device, cfg.backend), mode  # capture stayed on the CPU


def audit_observed(cfg: RunConfig, obs: Observation, attack: Attack, images: Tensor, labels: Tensor | None, model, *,
                   case: Case | None = None, progress: bool = False, public: tuple | None = None,
                   data: str | None = None, notes: list[str] | tuple = (), started: float | None = None,
                   capture_seconds: float = 0.0) -> AuditResult:
    """The pipeline every source of observations goes through (a simulated case, a captured file, a Flower
    capture): :func:`attack_observed`, then the reconstruction matched and scored against the client's true
    ``images`` (labels ``labels``, or None when unknown) with the references, margins and verdict of
    :func:`gradleak.calibration.calibration_of` → :class:`AuditResult` (nothing is written).

    ``model``: the victim with θ_0 (:meth:`Observation.build_model`); ``case``: the client side when it was
    simulated (else one is described from the observation); ``public`` / ``data``: the references' public data
    and the header's data line (default: from ``cfg.data``); ``started`` / ``capture_seconds``: when the caller
    began and how long its capture took (the result's timing)."""
    t1 = time.perf_counter()
    t0 = t1 - capture_seconds if started is None else started
    device = resolve_device(cfg.device)
    if case is None:  # a captured upload: the client side as the server can describe it
        case = Case(model=model, images=images,
                    labels=labels if labels is not None else torch.full((images.shape[0],), -1),
                    protocol=obs.protocol, model_spec=obs.model_spec, give_labels=obs.labels is not None)
    rec, mode = attack_observed(cfg, obs, attack, model, progress, device)
    t3 = time.perf_counter()
    scores, matched = score(rec.images, images, cfg)
    extra = score_artifacts(rec, images, cfg)
    acc = label_accuracy(rec.labels, labels) if rec.labels is not None and labels is not None else None
    calibration = calibration_of(cfg, scores, obs, images, labels, mode, public=public, data=data)
    t4 = time.perf_counter()
    return AuditResult(config=cfg, case=case, observation=obs, reconstruction=rec, label_mode=mode,
                       label_accuracy=acc, scores=scores,
                       timing=Timing(t1 - t0 - capture_seconds, capture_seconds, t3 - t1, t4 - t3),
                       environment=Environment.current(str(device), cfg.backend), matched=matched, artifact_scores=extra,
                       notes=list(notes), calibration=calibration)
