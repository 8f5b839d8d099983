"""Quality checks of the foundation attacks (issue 2 acceptance), printed as a Markdown table.

1. DLG and iDLG on LeNet (DLG's sigmoid LeNet, DLG's uniform init), batch 1, built-in digits (32×32, 1 channel):
   mean PSNR over 8 images must be ≥ 30 dB.
2. InvertGrad vs DLG on ConvNet (width 16, BatchNorm in eval mode as in Inverting Gradients), batch 1,
   built-in photos 32×32: InvertGrad's mean PSNR must be clearly above DLG's. (With train-mode BN at
   batch 1 every feature map is normalised by its own mean and spread, which the upload then no longer
   carries; InvertGrad stalls there at ≈ 8 dB — see the README.)

    python benchmarks/baselines.py [--images 8] [--workers 2] [--part lenet|convnet|all]
"""
from __future__ import annotations

import argparse
import statistics
import time

from _common import parallel_map, run_one


def cases(n: int, part: str) -> list[tuple[str, list[str]]]:
    out = []
    for seed in range(n):
        if part in ("lenet", "all"):
            digits = [f"seed={seed}", "data.name=digits", "data.channels=1", "data.batch_size=1", "model.name=lenet"]
            out.append(("dlg / lenet / digits", digits + ["attack.name=dlg", "attack.options.iterations=50"]))
            out.append(("idlg / lenet / digits", digits + ["attack.name=idlg", "attack.options.iterations=50"]))
        if part in ("convnet", "all"):
            photos = [f"seed={seed}", "data.name=photos", "data.channels=3", "data.batch_size=1",
                      "model.name=convnet", "model.options.width=16", "client.bn_mode=eval"]
            out.append(("dlg / convnet / photos", photos + ["attack.name=dlg", "attack.options.iterations=30"]))
            out.append(("invertgrad / convnet / photos", photos + ["attack.name=invertgrad",
                                                               "attack.options.iterations=2000"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--part", choices=["lenet", "convnet", "all"], default="all")
    args = ap.parse_args()
    todo = cases(args.images, args.part)
    t0 = time.time()
    results = parallel_map(run_one, [(o, None) for _, o in todo], args.workers)
    rows: dict[str, list[dict]] = {}
    for (name, _), m in zip(todo, results):
        rows.setdefault(name, []).append(m)
    print(f"| case | images | mean PSNR (dB) | min PSNR | mean SSIM | label acc. | s / image |")
    print("|---|---|---|---|---|---|---|")
    for name, ms in rows.items():
        ps = [m["psnr"]["mean"] for m in ms]
        print(f"| {name} | {len(ms)} | {statistics.mean(ps):.2f} | {min(ps):.2f} | "
              f"{statistics.mean(m['ssim']['mean'] for m in ms):.3f} | "
              f"{statistics.mean(m['label_accuracy'] for m in ms):.2f} | {statistics.mean(m['seconds'] for m in ms):.1f} |")
    print(f"\ntotal wall time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
