"""Runs per minute of one sweep: a bash-style loop of ``gradleak run`` processes vs ``gradleak sweep`` on the
process pool and on a local Ray instance (issue 12's acceptance).

The loop is what users did before ``gradleak sweep``: one ``gradleak run CONFIG --set ...`` process per run,
one after the other (``--threads 1``, like the sweep's runs). The sweep runs the same runs (same configs,
same seeds) with ``--workers`` processes, then with ``--ray``; the numbers of the three agree (checked).

    python benchmarks/sweep_throughput.py [--sweep examples/sweeps/batch_sparsity_invertgrad.yaml]
        [--iterations 100] [--workers 2] [--skip-ray] [--out runs/sweep_throughput]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, positive_int  # noqa: F401  (puts src/ on sys.path)


def _numbers(out: Path, pattern: str) -> dict:
    got = {}
    for m in sorted(out.glob(pattern)):
        d = json.loads(m.read_text())
        key = "/".join(m.parent.parts[-2:])
        got[key] = d["psnr"]["per_image"]
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", default=str(ROOT / "examples" / "sweeps" / "batch_sparsity_invertgrad.yaml"))
    ap.add_argument("--iterations", type=positive_int, default=100)
    ap.add_argument("--workers", type=positive_int, default=2)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "runs" / "sweep_throughput"))
    args = ap.parse_args()

    import yaml

    from gradleak.experiments.sweep import load_sweep

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sweep = load_sweep(args.sweep)
    sweep.base.setdefault("attack", {}).setdefault("options", {})["iterations"] = args.iterations
    sweep_file = out / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    runs = sweep.runs()
    exe = [sys.executable, "-m", "gradleak.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    rows = []

    t0 = time.perf_counter()
    for run in runs:  # the bash loop: one process per run
        cfg = out / "loop" / "configs" / f"{run.cell}-b{run.batch}.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(sweep.config(run).to_yaml())
        subprocess.run(exe + ["run", str(cfg), "--out", str(out / "loop" / "runs" / run.key), "--threads", "1",
                              "--no-progress"], check=True, capture_output=True, env=env)
    rows.append(("bash loop of `gradleak run` (1 process at a time)", time.perf_counter() - t0))
    loop = _numbers(out / "loop" / "runs", "*/*/metrics.json")

    t0 = time.perf_counter()
    subprocess.run(exe + ["sweep", str(sweep_file), "--out", str(out / "pool"), "--workers", str(args.workers),
                          "--no-progress"], check=True, capture_output=True, env=env)
    rows.append((f"gradleak sweep, process pool ({args.workers} workers)", time.perf_counter() - t0))
    pool = _numbers(out / "pool" / "runs", "*/*/metrics.json")
    checks = [("pool = loop numbers", pool == loop)]

    if not args.skip_ray:
        t0 = time.perf_counter()
        subprocess.run(exe + ["sweep", str(sweep_file), "--out", str(out / "ray"), "--no-progress", "--ray"],
                       check=True, capture_output=True, env=env)
        rows.append(("gradleak sweep --ray (local instance, start-up included)", time.perf_counter() - t0))
        checks.append(("ray = pool numbers", _numbers(out / "ray" / "runs", "*/*/metrics.json") == pool))

    print(f"sweep {sweep.name}: {len(sweep.cells())} cells x {sweep.batches} batches = {len(runs)} runs, "
          f"{args.iterations} iterations each, 1 torch thread per run, {os.cpu_count()} cores\n")
    print("| executor | wall s | runs / min |\n|---|---:|---:|")
    for name, wall in rows:
        print(f"| {name} | {wall:.0f} | {len(runs) / wall * 60:.1f} |")
    print()
    for name, ok in checks:
        print(f"- {name}: {'yes' if ok else 'NO'}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
