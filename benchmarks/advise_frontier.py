"""``gradleak advise`` on the example settings: the frontier, the recommendations and their checks.

    python benchmarks/advise_frontier.py --setting examples/advise/digits_lenet.yaml --families dp,topk,quant \
        --budget 200it --out runs/advise-digits

Runs the command in-process (resumable: a rerun reuses every finished cell) and prints the recommendation table
with its caveats: per family the weakest setting with *no leakage found*, whether it stayed so when re-audited
with four times the budget and two other seeds, and whether the one-step-weaker setting leaks. One torch thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", required=True)
    ap.add_argument("--families", default="dp,topk,quant")
    ap.add_argument("--budget", default="200it")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from gradleak.advise.families import parse_families
    from gradleak.advise.run import advise, format_advice, load_setting

    cfg, ctx = load_setting(a.setting)
    t0 = time.perf_counter()
    summary = advise(cfg, ctx, parse_families(a.families), a.out, budget=a.budget, workers=a.workers)
    print(f"setting {a.setting}; families {a.families}; budget {a.budget} per audit; 1 torch thread; "
          f"{time.perf_counter() - t0:.0f} s")
    print(format_advice(summary))
    ok = [f["family"] for f in summary["families"] if f["threshold"] is not None and f["confirmed"]
          and f["weaker_leaks"] in (True, None)]
    print(f"families with a confirmed, sharp threshold: {', '.join(ok) or 'none'}")
    Path(a.out, "benchmark.json").write_text(json.dumps({"confirmed": ok, "seconds": time.perf_counter() - t0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
