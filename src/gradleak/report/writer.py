"""Write a run directory: config, observation, reconstruction grid, trace, loss plot, metrics, report."""
from __future__ import annotations

from pathlib import Path

from torch import Tensor

from gradleak.attacks.engine import Reconstruction
from gradleak.config import RunConfig
from gradleak.fl.observation import Observation
from gradleak.metrics import apply_match, lpips_status, score_images
from gradleak.report.html import DEFAULT_IMAGES


def score(rec: Reconstruction, originals: Tensor, lpips_dir: str | None = None, lpips_upsample: bool = False) -> dict:
    """Match reconstructions to originals (optimal assignment) and score them; LPIPS if weights exist."""
    net, reason = lpips_status(lpips_dir, upsample=lpips_upsample)
    return score_images(rec.images, originals, lpips_model=net, lpips_reason=reason)


def semantic(matched: Tensor, originals: Tensor, cfg, dataset: str | None = None) -> dict:
    """Tags of originals and matched reconstructions and their Jaccard index (eq. 21), or why unavailable."""
    from gradleak.metrics.semantic import load_tagger, semantic_scores, tagger_unavailable

    shape = tuple(originals.shape[1:])
    tagger = load_tagger(cfg.tagger, threshold=cfg.tagger_threshold, top_k=cfg.tagger_top_k, shape=shape,
                         dataset=dataset)
    if tagger is None:
        why = "metrics.tagger is none" if cfg.tagger == "none" else tagger_unavailable(shape, dataset)
        return {"jaccard": None, "jaccard_unavailable": why}
    out = semantic_scores(tagger, matched, originals)
    return {"jaccard": out["jaccard"], "jaccard_unavailable": None, "tags": out["tags"], "tagger": out["tagger"]}


def rogs_path_rows(rec: Reconstruction, originals: Tensor, order: list[int]) -> tuple[list[Tensor], list[str]]:
    """Figure 10: ROG's output, the inversion path (start … end), the originals; matched to the originals."""
    rows = [apply_match(rec.extra["rog"], order)]
    labels = ["ROG input"]
    for it, images in rec.extra["rogs_path"]:
        rows.append(apply_match(images, order))
        labels.append(f"step {it}")
    return rows + [originals], labels + ["original"]


def _tagger(cfg, originals: Tensor, sem: dict):
    """The run's tagger again (for the references' Jaccard), when the run has tags."""
    if sem.get("jaccard") is None:
        return None
    from gradleak.metrics.semantic import load_tagger

    m = cfg.metrics
    return load_tagger(m.tagger, threshold=m.tagger_threshold, top_k=m.tagger_top_k,
                       shape=tuple(originals.shape[1:]), dataset=cfg.data.name)


def write_run_dir(out: Path, cfg: RunConfig, obs: Observation, rec: Reconstruction, originals: Tensor,
                  label_acc: float, label_mode: str, true_labels: Tensor | None = None) -> dict:
    from gradleak.report import (atomic_write_json, atomic_write_text, loss_plot, reconstruction_grid,
                                 write_report, write_trace_csv)

    out.mkdir(parents=True, exist_ok=True)
    config_yaml = cfg.to_yaml()
    atomic_write_text(out / "config.yaml", config_yaml)
    obs.save(out / "observation")
    scores = score(rec, originals, cfg.metrics.lpips_dir, cfg.metrics.lpips_upsample)
    matched = apply_match(rec.images, scores["order"])
    sem = semantic(matched, originals, cfg.metrics, cfg.data.name)
    from gradleak.report.calibration import calibrate_run, run_header

    cal = calibrate_run(cfg, scores, sem, originals, true_labels, _tagger(cfg, originals, sem))
    levels = cal["verdict"]["per_image"]
    captions = [f"{p:.1f} dB · {lv}" for p, lv in zip(scores["psnr"]["per_image"], levels)]
    reconstruction_grid(originals, matched, captions, out / "reconstruction.png")
    write_trace_csv(rec.trace, out / "trace.csv")
    loss_plot(rec.trace, out / "loss.png")
    images = list(DEFAULT_IMAGES)
    extra: dict = {}
    if "rogs_path" in rec.extra:
        from gradleak.attacks.perceptual import describe_perceptual
        from gradleak.report import image_rows

        rows, labels = rogs_path_rows(rec, originals, scores["order"])
        image_rows(rows, labels, out / "rogs_path.png")
        images.append(("ROGS optimisation path (Figure 10): ROG input, generator from a random latent of the "
                       "class, steps, end; originals last", "rogs_path.png"))
        rog = score_images(rec.extra["rog"], originals)  # ROG's own output, before the inversion, for comparison
        rog_sem = semantic(apply_match(rec.extra["rog"], rog["order"]), originals, cfg.metrics, cfg.data.name)
        extra = {"generator": rec.extra.get("generator"), "perceptual": describe_perceptual(rec.extra["perceptual"]),
                 "rog_before_inversion": {"psnr": rog["psnr"]["mean"], "ssim": rog["ssim"]["mean"],
                                          "jaccard": (rog_sem["jaccard"] or {}).get("mean")}}
    metrics = {
        "header": run_header(cfg, obs, label_mode),
        "verdict": cal["verdict"],
        "attack": rec.attack,
        **{k: scores[k] for k in ("psnr", "ssim", "mse", "lpips", "lpips_unavailable", "lpips_upsample")},
        **sem,
        "label_mode": label_mode,
        "label_accuracy": label_acc,
        "iterations": rec.iterations,
        "seconds": round(rec.seconds, 3),
        "seed": cfg.seed,
        "best_restart": rec.best_restart,
        "restart_losses": [float(v) for v in rec.losses],
        "defenses": obs.defenses,
        **extra,
        "reference": cal["reference"],
        "margins": cal["margins"],
    }
    write_report(out, metrics, config_yaml, images=images)
    atomic_write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
    return metrics
