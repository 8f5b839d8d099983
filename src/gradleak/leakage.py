"""How much one captured upload leaks: attack it, score the reconstruction against the truth and the
no-gradient references, grade it. The one entry point the whole-run tools call
(``gradleak audit-run``, :class:`gradleak.integrations.flower.LeakageGuard`, the secure-aggregation
benchmark's peers): :func:`measure_leakage`.

**Until the trusted ``gradleak audit`` (a portfolio of attacks over a wall-clock budget, ``attack: auto``)
is merged, :func:`measure_leakage` runs ONE configured attack** (:data:`DEFAULT_ATTACK`: DLG, L2 distance,
L-BFGS with a strong-Wolfe line search — iDLG when labels are given; the attack that reconstructs the
Flower example's clients at 13–26 dB, docs/flower.md) through the existing pipeline
(:func:`gradleak.deploy.attack_observation`'s attack path, :func:`gradleak.metrics.score_images`,
:func:`gradleak.metrics.reference.calibrate`). The ``budget_s`` argument is recorded and reported (and a
run over it is flagged) but not yet enforced: the attack's size is its ``iterations``, which keeps the
numbers reproducible (the same on every executor); the audit will turn the budget into its portfolio.

Labels: the attacker is given the true labels when they are known (``labels``; the worst case: a server
recovers them exactly for the batch sizes at which reconstruction matters, docs/labels.md), else the
Observation's own, else they are recovered from the last layer (:func:`gradleak.attacks.labels.recover_labels`).
Without true images nothing is scored: the result holds the reconstruction and the labels only.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from torch import Tensor

from gradleak.fl.observation import Observation

#: the one attack run until the trusted ``gradleak audit`` lands: (registered name, constructor options)
DEFAULT_ATTACK: tuple[str, dict] = ("dlg", {"iterations": 60})
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

    PLACEHOLDER FOR ``gradleak audit``: runs one configured attack (``attack``/``options``, default
    :data:`DEFAULT_ATTACK`) — see the module docstring. ``public``: public (images, labels) for the public
    mean / same-class references (else the grey image alone). ``give_labels=False``: the true ``labels`` are
    only used to score the recovered ones (the server's own threat model). Deterministic for a given seed and
    thread count."""
    from gradleak.attacks import build_attack
    from gradleak.attacks.labels import label_accuracy, recover_labels
    from gradleak.errors import UserError
    from gradleak.metrics import apply_match, score_images
    from gradleak.metrics.reference import calibrate

    name, opts = (attack, dict(options or {})) if attack else (DEFAULT_ATTACK[0], dict(DEFAULT_ATTACK[1]))
    if images is not None and images.shape[0] != obs.num_images:
        raise UserError(f"truth: got {images.shape[0]} images; allowed: the upload's {obs.num_images}")
    obs = obs.as_delta()
    model = obs.build_model()
    if labels is not None and give_labels:
        mode, y = "given", labels
    elif obs.labels is not None:
        mode, y = "observation", obs.labels
    else:
        mode, y = "recover", recover_labels(obs, model)
    atk = build_attack(name, **opts)
    t0 = time.perf_counter()
    rec = atk(obs, labels=y, seed=seed, model=model, progress=False)
    seconds = time.perf_counter() - t0
    out = Leakage(attack=name, options=opts, label_mode=mode, labels=[int(v) for v in y.tolist()],
                  seconds=round(seconds, 3), budget_s=budget_s,
                  over_budget=budget_s is not None and seconds > budget_s, scored=images is not None,
                  reconstruction=rec.images.detach().cpu())
    if mode == "recover":
        out.notes.append("labels recovered from the update")
    if images is None:
        return out
    x = images.detach().float().cpu()
    s = score_images(rec.images.detach().cpu(), x)
    pub_x, pub_y = public if public is not None else (None, None)
    cal = calibrate({"psnr": s["psnr"]["per_image"], "ssim": s["ssim"]["per_image"], "jaccard": None}, x,
                    pub_x, pub_y, labels, seed=seed)
    per = s["psnr"]["per_image"]
    worst = max(range(len(per)), key=per.__getitem__)
    refs = cal["reference"]
    ref_at = [refs[n]["psnr"][worst] for n in ("grey", "public_mean", "same_class")
              if n in refs and refs[n]["psnr"][worst] is not None]
    m = cal["margins"]["psnr"]
    out.psnr_mean, out.psnr_worst, out.psnr_per_image = s["psnr"]["mean"], per[worst], per
    out.ssim_mean = s["ssim"]["mean"]
    out.reference_psnr = max(ref_at)
    out.grey_psnr = sum(refs["grey"]["psnr"]) / len(refs["grey"]["psnr"])
    out.dpsnr_max, out.dpsnr_mean = max(m["per_image"]), m["mean"]
    out.verdict, out.verdict_counts = cal["verdict"]["batch"], cal["verdict"]["counts"]
    out.label_accuracy = label_accuracy(y.cpu(), labels.cpu()) if labels is not None and mode != "given" else None
    out.reconstruction = apply_match(rec.images.detach().cpu(), s["order"])
    return out


__all__ = ["DEFAULT_ATTACK", "LEVELS", "Leakage", "measure_leakage"]
