"""Shared helpers for benchmark scripts: run configs in parallel worker processes (1 torch thread each); attack a
benchmark's own client through the audit pipeline (:func:`audited`)."""
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


def audited(obs, attack, images, labels, *, seed: int = 0, dataset: str = "digits", model=None, labels_mode="oracle",
            public=None):
    """A benchmark's own captured client (``obs`` of the true ``images`` / ``labels``) through the audit pipeline
    (:func:`gradleak.audit.audit_observed`: the attack on the upload, matched and scored, references from the
    public side of ``dataset``, or ``public`` = (images, labels or None, None)) → :class:`gradleak.audit.AuditResult`.
    ``model``: the victim with θ_0 the script built (attacked as it is); ``seed``: the attack's."""
    from gradleak.audit import audit_observed
    from gradleak.config import load_config

    B, C, H, _ = images.shape
    cfg = load_config(None, [f"seed={seed}", f"attack.name={attack.name}", f"attack.labels={labels_mode}",
                             f"data.name={dataset}", f"data.resolution={H}", f"data.channels={C}",
                             f"data.batch_size={B}", "data.distinct_labels=false", "metrics.tagger=none"])
    return audit_observed(cfg, obs, attack, images, labels, obs.build_model() if model is None else model, public=public)
