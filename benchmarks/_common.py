"""Shared helpers for benchmark scripts: run configs in parallel worker processes (1 torch thread each)."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def positive_int(text: str) -> int:
    """argparse ``type`` for counts and sizes: a bad value is argparse's one-line error and exit 2."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: an integer >= 1")
    return value


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_one(args: tuple[list[str], str | None]) -> dict:
    """Run one audit given ``--set`` style overrides; returns its metrics (run dir optional)."""
    import tempfile

    from gradleak.audit import audit
    from gradleak.report.writer import write_run
    from gradleak.config import load_config

    overrides, out = args
    cfg = load_config(None, overrides)
    out = out or tempfile.mkdtemp(prefix="gradleak-bench-")
    return write_run(audit(cfg), out)


def parallel_map(fn, items, workers: int | None = None):
    """Map ``fn`` over ``items`` in ``workers`` spawned processes (default: number of cores)."""
    workers = workers or min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        _init_worker()
        return [fn(i) for i in items]
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        return pool.map(fn, items, chunksize=1)


def gias_cell(x, y, victim: tuple[str, dict], num_classes: int, attack: str, options: dict, iterations: int,
              seed: int, public):
    """One cell of the GIAS leave-out tables (gias_leaveout.py, debian_leaveout.py): the victim ``(arch,
    options)`` at ``seed``'s initialisation, one FedSGD step on ``x, y`` (BN in train mode, its batch
    statistics shared when the victim has BN), attacked with oracle labels by ``attack`` with the cosine
    distance, ``options`` and ``iterations`` (split in half between z and w for GI-z/w; GI-x best of 4
    restarts). Returns ``(reconstruction, scores, references, best reference PSNR per image)``: the
    no-information references are grey 0.5 and the mean image of ``public`` (the prior's training side)."""
    import gradleak as gl
    from gradleak.attacks import build_attack
    from gradleak.metrics import score_images
    from gradleak.metrics.reference import reference_scores
    from gradleak.models import build_model, init_model

    arch, opts = victim
    model = init_model(build_model(arch, num_classes, 3, x.shape[-1], **opts), seed)
    protocol = gl.Protocol(kind="fedsgd", bn_mode="train", share_bn_stats=opts.get("batchnorm", False))
    case = gl.Case(model, x, y, protocol, [], model.gradleak_spec, give_labels=True)
    obs = gl.capture(case, seed=seed)
    o = {"distance": "cosine", **options}
    if attack == "gi-zw":
        o |= {"iterations_z": iterations // 2, "iterations_w": iterations - iterations // 2}
    else:
        o["iterations"] = iterations
    if attack == "gi-x":
        o["restarts"] = 4
    rec = build_attack(attack, **o)(obs, labels=obs.labels, seed=seed, model=model, progress=False)
    scores = score_images(rec.images, x)
    refs = reference_scores(x, public().images)  # grey and the prior's training-corpus mean image
    best_ref = [max(refs[n]["psnr"][i] for n in ("grey", "public_mean")) for i in range(len(x))]
    return rec, scores, refs, best_ref
