"""Write a run directory: config, observation, reconstruction grid, trace, loss plot, metrics, report."""
from __future__ import annotations

from pathlib import Path

from torch import Tensor

from gradleak.attacks.engine import Reconstruction
from gradleak.config import RunConfig
from gradleak.fl.observation import Observation
from gradleak.metrics import apply_match, lpips_status, score_images


def score(rec: Reconstruction, originals: Tensor, lpips_dir: str | None = None) -> dict:
    """Match reconstructions to originals (optimal assignment) and score them; LPIPS if weights exist."""
    net, reason = lpips_status(lpips_dir)
    return score_images(rec.images, originals, lpips_model=net, lpips_reason=reason)


def write_run_dir(out: Path, cfg: RunConfig, obs: Observation, rec: Reconstruction, originals: Tensor,
                  label_acc: float, label_mode: str) -> dict:
    from gradleak.report import (atomic_write_json, atomic_write_text, loss_plot, reconstruction_grid,
                                 write_report, write_trace_csv)

    out.mkdir(parents=True, exist_ok=True)
    config_yaml = cfg.to_yaml()
    atomic_write_text(out / "config.yaml", config_yaml)
    obs.save(out / "observation")
    scores = score(rec, originals, cfg.metrics.lpips_dir)
    matched = apply_match(rec.images, scores["order"])
    captions = [f"{p:.1f} dB" for p in scores["psnr"]["per_image"]]
    reconstruction_grid(originals, matched, captions, out / "reconstruction.png")
    write_trace_csv(rec.trace, out / "trace.csv")
    loss_plot(rec.trace, out / "loss.png")
    metrics = {
        "attack": rec.attack,
        **{k: scores[k] for k in ("psnr", "ssim", "mse", "lpips", "lpips_unavailable")},
        "label_mode": label_mode,
        "label_accuracy": label_acc,
        "iterations": rec.iterations,
        "seconds": round(rec.seconds, 3),
        "seed": cfg.seed,
        "best_restart": rec.best_restart,
        "restart_losses": [float(v) for v in rec.losses],
        "defenses": obs.defenses,
    }
    write_report(out, metrics, config_yaml)
    atomic_write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
    return metrics
