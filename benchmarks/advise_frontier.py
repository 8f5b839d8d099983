"""``gradleak advise`` on the example settings: the frontier, the recommendations and their checks.

    python benchmarks/advise_frontier.py --setting examples/advise/digits_lenet.yaml --families dp,topk,quant \
        --budget 200it --out runs/advise-digits

Runs the command in-process (resumable: a rerun reuses every finished cell) and prints the recommendation table
with its caveats: per family (and DP clip bound) the weakest setting with *no leakage found* at the budget, the
weakest that stayed so when re-audited with four times the budget and two other seeds (climbing the axis when a
re-audit overturns a threshold), its accuracy and upload cost, and whether the one-step-weaker setting leaks.
One torch thread.
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
    ap.add_argument("--families", default="quant,topk,sign,dp")
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
    ok = sorted({f["family"] for f in summary["families"] if f.get("recommended") is not None})
    sharp = sorted({f["family"] for f in summary["families"] if f.get("recommended") is not None
                    and f["weaker_leaks"] is True})
    print(f"families with a setting that held at 4x the budget and two other seeds: {', '.join(ok) or 'none'} "
          f"({len(ok)}); of these, with a leaking one-step-weaker setting: {', '.join(sharp) or 'none'}")
    Path(a.out, "benchmark.json").write_text(json.dumps({"recommended": ok, "sharp": sharp,
                                                         "seconds": time.perf_counter() - t0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
