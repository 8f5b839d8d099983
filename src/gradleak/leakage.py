"""How much one captured upload leaks: attack it, score the reconstruction against the truth and the
no-gradient references, grade it. The one entry point the whole-run tools call
(``gradleak audit-run``, :class:`gradleak.integrations.flower.LeakageGuard`, the secure-aggregation
benchmark's peers): :func:`measure_leakage`.

With ``attack="auto"`` (what ``gradleak audit-run --budget-per-update`` and a guard with a budget run)
:func:`measure_leakage` is the trusted audit (:func:`gradleak.autoaudit.audit_loaded`: the portfolio chosen
from the upload, the worst case per image, the positive control) under ``budget_s``, enforced. Otherwise it
runs ONE configured attack (:data:`DEFAULT_ATTACK`: DLG, L2 distance, L-BFGS with a strong-Wolfe line search —
iDLG when labels are given; it reconstructs the Flower example's clients at 13–26 dB, docs/flower.md) through
the audit pipeline (:func:`gradleak.audit.audit_observed`: matched, scored, references and graded as every
audit), sized by its ``iterations`` (reproducible on every executor); ``budget_s`` is then only recorded and a
run over it flagged.

Labels: the attacker is given the true labels when they are known (``labels``; the worst case: a server
recovers them exactly for the batch sizes at which reconstruction matters, docs/labels.md), else the
Observation's own, else they are recovered from the last layer (:func:`gradleak.attacks.labels.recover_labels`).
Without true images nothing is scored: the result holds the reconstruction and the labels only.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field

from torch import Tensor

from gradleak.fl.observation import Observation

#: the one attack run when no budget is given: (registered name, constructor options); a fixed iteration count
#: keeps the numbers reproducible on every executor
DEFAULT_ATTACK: tuple[str, dict] = ("dlg", {"iterations": 60})
#: ``attack="auto"``: the trusted audit (:func:`gradleak.autoaudit.audit_loaded`: the portfolio chosen from the
#: upload, the positive control, ``budget_s`` binding); needs the true images
AUTO = "auto"
LEVELS = ("none", "partial", "recognisable")


@dataclass
class Leakage:
    """What :func:`measure_leakage` found for one upload. PSNR/SSIM are over the images matched to the truth
    (optimal assignment); ``psnr_worst`` is the best-reconstructed image (one recognisable image is a leak),
    ``reference_psnr`` the best no-gradient reference's PSNR on that same image and ``dpsnr_max`` the
    largest per-image margin over the best reference; ``verdict`` the graded level of
    :mod:`gradleak.metrics.reference` (``None`` when unscored)."""

    attack: str
    options: dict
    label_mode: str  # given | observation | recover
    labels: list[int] | None
    seconds: float
    budget_s: float | None
    over_budget: bool
    scored: bool
    psnr_mean: float | None = None
    psnr_worst: float | None = None
    psnr_per_image: list[float] | None = None
    ssim_mean: float | None = None
    reference_psnr: float | None = None  # best reference's PSNR at the worst-case image
    grey_psnr: float | None = None  # mean PSNR of the grey image (0.5 everywhere)
    dpsnr_max: float | None = None
    dpsnr_mean: float | None = None
    verdict: str | None = None
    verdict_counts: dict | None = None
    label_accuracy: float | None = None
    reconstruction: Tensor | None = field(default=None, repr=False)  # matched to the truth when scored
    audit_verdict: str | None = None  # attack "auto": leaks / partial / no leakage found / inconclusive
    notes: list[str] = field(default_factory=list)

    def level(self) -> int:
        """0 none, 1 partial, 2 recognisable; -1 when unscored."""
        return LEVELS.index(self.verdict) if self.verdict in LEVELS else -1

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("reconstruction")
        return d


def measure_leakage(obs: Observation, images: Tensor | None = None, labels: Tensor | None = None, *,
                    attack: str | None = None, options: dict | None = None, budget_s: float | None = None,
                    seed: int = 0, public: tuple[Tensor, Tensor | None] | None = None,
                    give_labels: bool = True) -> Leakage:
    """Attack ``obs`` and, with the true ``images`` (its ``num_images``, in slot order), score and grade it.

    ``attack="auto"``: the trusted audit under ``budget_s`` (needs ``images``); else one configured attack
    (``attack``/``options``, default :data:`DEFAULT_ATTACK`) through the audit pipeline
    (:func:`gradleak.audit.audit_observed`; without ``images`` its attack step alone) — see the module
    docstring. ``public``: public (images, labels) for the public mean / same-class references (else the grey
    image alone). ``give_labels=False``: the true ``labels`` are only used to score the recovered ones (the
    server's own threat model). Deterministic for a given seed and thread count."""
    from gradleak.attacks import build_attack
    from gradleak.attacks.labels import label_accuracy
    from gradleak.audit import attack_observed, audit_observed
    from gradleak.deploy import _run_config
    from gradleak.errors import UserError

    name, opts = (attack, dict(options or {})) if attack else (DEFAULT_ATTACK[0], dict(DEFAULT_ATTACK[1]))
    if images is not None and images.shape[0] != obs.num_images:
        raise UserError(f"truth: got {images.shape[0]} images; allowed: the upload's {obs.num_images}")
    if name == AUTO and images is not None:
        return _audited(obs, images, labels, budget_s, seed, public, give_labels)
    unscored_auto = name == AUTO  # no truth: no control can be built; reconstruct with the default attack
    if unscored_auto:
        name, opts = DEFAULT_ATTACK[0], dict(DEFAULT_ATTACK[1])
    if labels is not None and give_labels:  # the attacker is given the true labels (the worst case)
        mode, obs = "given", dataclasses.replace(obs, labels=labels)
    else:
        mode = "observation" if obs.labels is not None else "recover"
    atk = build_attack(name, **opts)
    cfg = _run_config(obs, name, opts, "recover" if mode == "recover" else "oracle", seed, None)
    t0 = time.perf_counter()
    if images is None:
        rec = attack_observed(cfg, obs, atk, obs.build_model())[0]
    else:
        x = images.detach().float().cpu()
        pub_x, pub_y = public if public is not None else (None, None)
        r = audit_observed(cfg, obs, atk, x, labels, obs.build_model(),
                           public=(pub_x, pub_y, None if public is not None else "no public data given"))
        rec = r.reconstruction
    seconds = time.perf_counter() - t0
    y = rec.labels if rec.labels is not None else obs.labels
    out = Leakage(attack=name, options=opts, label_mode=mode, labels=None if y is None else [int(v) for v in y.tolist()],
                  seconds=round(seconds, 3), budget_s=budget_s,
                  over_budget=budget_s is not None and seconds > budget_s, scored=images is not None,
                  reconstruction=rec.images.detach().cpu())
    if mode == "recover":
        out.notes.append("labels recovered from the update")
    if unscored_auto:
        out.notes.append("no true images: the audit needs them for its control; reconstructed with "
                         f"{DEFAULT_ATTACK[0]} only")
    if images is None:
        return out
    _scored(out, r)
    out.label_accuracy = label_accuracy(y.cpu(), labels.cpu()) if labels is not None and mode != "given" else None
    return out


def _scored(out: Leakage, r) -> Leakage:
    """``out`` with the scores of the audit ``r`` (an :class:`gradleak.audit.AuditResult`): PSNR / SSIM over the
    matched images, the worst-case image, the best reference there, the margins and the graded level."""
    s, cal = r.scores, r.calibration
    per = s.psnr["per_image"]
    worst = max(range(len(per)), key=per.__getitem__)
    refs = cal.reference
    ref_at = [refs[n]["psnr"][worst] for n in ("grey", "public_mean", "same_class")
              if n in refs and isinstance(refs[n], dict) and refs[n]["psnr"][worst] is not None]
    out.psnr_mean, out.psnr_worst, out.psnr_per_image, out.ssim_mean = s.psnr["mean"], per[worst], per, s.ssim["mean"]
    out.reference_psnr = max(ref_at) if ref_at else None
    out.grey_psnr = sum(refs["grey"]["psnr"]) / len(refs["grey"]["psnr"])
    out.dpsnr_max, out.dpsnr_mean = max(cal.margins["psnr"]["per_image"]), cal.margins["psnr"]["mean"]
    out.verdict, out.verdict_counts = cal.verdict["batch"], cal.verdict["counts"]
    out.reconstruction = r.matched
    return out


def _audited(obs: Observation, images: Tensor | None, labels: Tensor | None, budget_s: float | None, seed: int,
             public, give_labels: bool) -> Leakage:
    """``attack="auto"``: the trusted audit of the upload with its own images as truth, as a :class:`Leakage`
    (``verdict`` the worst case's graded level, ``audit_verdict`` the audit's verdict with its control)."""
    from gradleak.autoaudit import audit_loaded
    from gradleak.errors import UserError

    if budget_s is None:
        raise UserError("attack: got 'auto' without a budget; allowed: auto with --budget-per-update (or budget_s)")
    obs = obs if give_labels or labels is None else dataclasses.replace(obs, labels=None)
    if give_labels and labels is not None and obs.labels is None:
        obs = dataclasses.replace(obs, labels=labels)
    pub = None if public is None else (public[0], public[1], "public data given")
    t0 = time.perf_counter()
    r = audit_loaded(obs, images.detach().float().cpu(), labels, f"{budget_s:g}s", pub, seed=seed)
    seconds = time.perf_counter() - t0
    a = r.audit
    rec_labels = r.reconstruction.labels
    out = Leakage(attack="auto: " + ", ".join(x.name for x in a.attacks), options={"budget": f"{budget_s:g}s"},
                  label_mode=a.label_mode, labels=None if rec_labels is None else [int(v) for v in rec_labels],
                  seconds=round(seconds, 3), budget_s=budget_s, over_budget=seconds > 1.1 * budget_s, scored=True,
                  label_accuracy=a.label_accuracy, audit_verdict=a.verdict, notes=[a.sentence])
    return _scored(out, r)


__all__ = ["AUTO", "DEFAULT_ATTACK", "LEVELS", "Leakage", "measure_leakage"]
