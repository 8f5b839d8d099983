"""Write a run directory from an :class:`~gradleak.audit.AuditResult`: config, observation, reconstruction
grid, trace, loss plot, each artifact's figures, report, metrics (last).

The writer knows no attack family: the reconstruction's artifacts (:mod:`gradleak.attacks.artifacts`) draw
their own figures and name their own facts for the report."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gradleak.report.html import DEFAULT_IMAGES

if TYPE_CHECKING:
    from gradleak.audit import AuditResult


def audit_figures(out: Path, result: "AuditResult") -> list[tuple[str, str]]:
    """``attack: auto``: the worst image pair (worst_pair.png) and every attack's matched reconstructions under
    the originals (attacks.png); returns their (caption, file) entries for the report."""
    from gradleak.report import image_rows, reconstruction_grid

    a, originals = result.audit, result.originals
    figures = []
    if a.worst_image is not None:
        i = a.worst_image
        who = a.winners[i] if i < len(a.winners) else ""
        p = result.scores.psnr["per_image"][i]
        reconstruction_grid(originals[i:i + 1], result.matched[i:i + 1], [f"{p:.1f} dB · {who}"],
                            out / "worst_pair.png", scale=6)
        figures.append((f"The image reconstructed best, by its margin over the references (image {i}): original "
                        f"above, best reconstruction ({who}) below",
                        "worst_pair.png"))
    if result.attack_images:
        names = list(result.attack_images)
        image_rows([originals] + [result.attack_images[n] for n in names], ["original"] + names,
                   out / "attacks.png")
        figures.append(("Each attack's reconstructions, matched to the originals (top row)", "attacks.png"))
    return figures


def fact_labels(rec) -> dict[str, str]:
    """The report's label of each fact the reconstruction's artifacts put into ``metrics.json``."""
    return {key: label for artifact in rec.artifacts for key, label in artifact.fact_labels.items()}


def write_run_dir(out: Path, result: "AuditResult") -> dict:
    """config.yaml, observation, reconstruction.png, trace.csv, loss.png, report.html, metrics.json (last)."""
    from gradleak.report import (atomic_write_json, atomic_write_text, loss_plot, reconstruction_grid,
                                 write_report, write_trace_csv)

    rec, originals, scores = result.reconstruction, result.originals, result.scores
    out.mkdir(parents=True, exist_ok=True)
    config_yaml = result.config.to_yaml()
    atomic_write_text(out / "config.yaml", config_yaml)
    result.observation.save(out / "observation")
    levels = result.calibration.verdict["per_image"] if result.calibration is not None else [""] * len(originals)
    captions = [f"{p:.1f} dB · {lv}" if lv else f"{p:.1f} dB" for p, lv in zip(scores.psnr["per_image"], levels)]
    if result.audit is not None and result.audit.winners:  # the attack that gave each image's best reconstruction
        captions = [f"{c} · {w}" for c, w in zip(captions, result.audit.winners)]
    reconstruction_grid(originals, result.matched, captions, out / "reconstruction.png")
    images = list(DEFAULT_IMAGES)
    if rec.trace:
        write_trace_csv(rec.trace, out / "trace.csv")
        loss_plot(rec.trace, out / "loss.png")
    else:  # a closed-form attack has no loss trace
        images = [entry for entry in images if entry[1] != "loss.png"]
    for artifact in rec.artifacts:
        images.extend(artifact.draw(out, originals, scores.order))
    if result.audit is not None:
        images = audit_figures(out, result) + images
    metrics = result.metrics()
    write_report(out, metrics, config_yaml, images=images, fact_labels=fact_labels(rec))
    atomic_write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
    return metrics


def write_run(result: "AuditResult", out: str | Path) -> dict:
    """Write the run directory of an audit's ``result``; returns the metrics dict. An error or Ctrl-C while
    writing leaves no partial run directory (:func:`gradleak.report.guard.run_dir_guard`)."""
    from gradleak.report.guard import run_dir_guard

    with run_dir_guard(out):
        return write_run_dir(Path(out), result)
