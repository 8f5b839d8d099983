"""Leave-photographs-out evaluation of the photo priors (issue 16): priors trained WITHOUT some photographs,
attacked on exactly those photographs.

For every fold k of :data:`gradleak.data.photo_corpus.FOLDS` a DCGAN prior is trained on
``photo-corpus`` ``fold<k>-train`` (every bundled natural photograph except the private ``photos`` and
the fold's held-out colour scenes, augmented: random-scale crops, flips, colour jitter) and the GIAS
attacks run on batches of 4 crops of the held-out scenes (``fold<k>-test``, seeded), 32×32 RGB, FedSGD,
oracle labels, with two victims:

* ``gias`` — the GIAS table's victim: DLG's sigmoid LeNet (width 12) with BatchNorm (train mode, the batch's
  statistics shared), as ``benchmarks/gias_table.py``;
* ``relu`` — a plain ReLU ConvNet (InvertGrad's, width 8) without BatchNorm.

Columns: GI-x, GI-z, GI-z/w with the fold's prior; GI-z and GI-z/w with the shipped ``photos`` prior
(``--shipped``; note it was trained on crops of flower, motorcycle, hubble_deep_field and retina, so only
grace_hopper is unseen by it); and the no-information references (grey 0.5, the mean image of the fold's
training corpus) from :mod:`gradleak.metrics.reference` on the same matched originals. Same settings
as the GIAS table (cosine distance, Adam, best of 4 restarts, GI-z/w half z, half w). The floors checked:
GI-z > GI-x, GI-z/w − GI-x ≥ 1.8 dB, GI-z/w ≥ best no-information reference + 3 dB (mean PSNR).

    python benchmarks/gias_leaveout.py [--folds 0,1,2] [--steps 2000] [--batches 3] [--iterations 300]
        [--victims gias,relu] [--workers 1] [--out runs/gias_leaveout]

Priors are trained into ``--out``/prior_fold<k> (resumed when present, so a second run only attacks).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import ROOT, parallel_map, positive_int
from _leaveout import gias_cell

BATCH, RESOLUTION = 4, 32
VICTIMS = {"gias": ("lenet", {"width": 12, "batchnorm": True}),
           "relu": ("convnet", {"width": 8, "batchnorm": False})}
COLUMNS = {"GI-x": ("gi-x", None), "GI-z": ("gi-z", "fold"), "GI-z/w": ("gi-zw", "fold"),
           "GI-z shipped": ("gi-z", "photos"), "GI-z/w shipped": ("gi-zw", "photos")}


def train(fold: int, steps: int, width: int, out: Path) -> str:
    import torch

    torch.set_num_threads(1)
    from gradleak.priors.train import TrainConfig, train_prior

    cfg = TrainConfig(data="photo-corpus", split=f"fold{fold}-train", resolution=RESOLUTION, channels=3,
                      latent_dim=64, width=width, steps=steps, seed=0, sample_every=max(steps // 4, 1),
                      checkpoint_every=max(steps // 4, 1))
    t0 = time.time()
    path = train_prior(cfg, out / f"prior_fold{fold}", progress=False,
                       command=f"benchmarks/gias_leaveout.py fold {fold}, {steps} steps, width {width}")
    print(f"fold {fold}: prior trained in {time.time() - t0:.0f} s -> {path}", flush=True)
    return str(path)


def run_job(args) -> dict:
    import torch

    torch.set_num_threads(1)
    import gradleak as gl

    fold, victim, column, seed, iterations, prior_path = args
    test = gl.load_dataset("photo-corpus", split=f"fold{fold}-test", resolution=RESOLUTION, channels=3)
    x, y = gl.sample_batch(test, BATCH, distinct_labels=False, seed=seed)
    attack, prior = COLUMNS[column]
    o: dict = {"tv": 1e-4}  # GIAS appendix G's TV (the paper's setting, not gradleak's default)
    if attack == "gi-x":
        o["lr"] = 0.025
    if prior is not None:
        o["prior"] = prior_path if prior == "fold" else prior
    rec, s, refs, best_ref, matched = gias_cell(
        x, y, VICTIMS[victim], test.num_classes, attack, o, iterations, seed,
        lambda: gl.load_dataset("photo-corpus", split=f"fold{fold}-train", resolution=RESOLUTION, channels=3))
    return {"fold": fold, "victim": victim, "column": column, "seed": seed, "seconds": rec.seconds,
            "psnr": s["psnr"]["per_image"], "ssim": s["ssim"]["per_image"], "ref_psnr": best_ref,
            "grey_psnr": refs["grey"]["psnr"], "grey_ssim": refs["grey"]["ssim"],
            "images": matched.to(torch.float16) if seed == 0 else None,
            "originals": x.to(torch.float16) if seed == 0 else None}


def mean(xs):
    return statistics.mean(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", default="0,1,2")
    ap.add_argument("--steps", type=positive_int, default=2000, help="prior training steps per fold")
    ap.add_argument("--width", type=positive_int, default=16, help="DCGAN width (the shipped prior: 16)")
    ap.add_argument("--batches", type=positive_int, default=3)
    ap.add_argument("--iterations", type=positive_int, default=300)
    ap.add_argument("--victims", default="gias,relu")
    ap.add_argument("--shipped", action="store_true", help="also attack with the shipped photos prior")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--workers", type=positive_int, default=1)
    ap.add_argument("--out", default=str(ROOT / "runs" / "gias_leaveout"))
    args = ap.parse_args()
    from gradleak.data.photo_corpus import FOLDS

    try:
        folds = [int(f) for f in args.folds.split(",")]
    except ValueError:
        folds = [-1]
    if any(not 0 <= f < len(FOLDS) for f in folds):
        ap.error(f"argument --folds: got {args.folds!r}; allowed: comma-separated fold numbers 0..{len(FOLDS) - 1}")
    victims = args.victims.split(",")
    if any(v not in VICTIMS for v in victims):
        ap.error(f"argument --victims: got {args.victims!r}; allowed: {', '.join(VICTIMS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    priors = {f: train(f, args.steps, args.width, out) for f in folds}
    t_train = time.time() - t0
    if args.train_only:
        return
    cols = [c for c in COLUMNS if args.shipped or "shipped" not in c]
    jobs = [(f, v, c, b, args.iterations, priors[f]) for f in folds for v in victims for b in range(args.batches)
            for c in cols]
    results = parallel_map(run_job, jobs, args.workers)
    wall = time.time() - t0

    def sel(f, v, c):
        return [r for r in results if (r["fold"], r["victim"], r["column"]) == (f, v, c)]

    lines = [f"Leave-photographs-out GIAS (issue 16): DCGAN width {args.width}, {args.steps} steps per fold prior; "
             f"{args.batches} batches of {BATCH} held-out crops per fold and victim, 32×32, FedSGD, oracle labels, "
             f"{args.iterations} iterations per attack; 1 torch thread per worker, {args.workers} worker(s)", ""]
    checks, fails = [], 0
    for v in victims:
        lines += [f"**victim {v}** ({VICTIMS[v][0]} {VICTIMS[v][1]})", "",
                  "| fold (held out) | grey PSNR / SSIM | best no-info ref PSNR | "
                  + " | ".join(f"{c} PSNR / SSIM" for c in cols) + " |",
                  "|---|---:|---:|" + "---:|" * len(cols)]
        for f in folds + ["all"]:
            fs = folds if f == "all" else [f]
            rs = [r for ff in fs for r in sel(ff, v, "GI-x")]
            grey_p = mean([p for r in rs for p in r["grey_psnr"]])
            grey_s = mean([p for r in rs for p in r["grey_ssim"]])
            ref = mean([p for r in rs for p in r["ref_psnr"]])
            p = {c: mean([x for ff in fs for r in sel(ff, v, c) for x in r["psnr"]]) for c in cols}
            s = {c: mean([x for ff in fs for r in sel(ff, v, c) for x in r["ssim"]]) for c in cols}
            name = "all folds" if f == "all" else f"{f} ({', '.join(FOLDS[f])})"
            lines.append(f"| {name} | {grey_p:.2f} / {grey_s:.3f} | {ref:.2f} | "
                         + " | ".join(f"{p[c]:.2f} / {s[c]:.3f}" for c in cols) + " |")
            if f == "all":
                for text, ok in ((f"GI-z {p['GI-z']:.2f} > GI-x {p['GI-x']:.2f}", p["GI-z"] > p["GI-x"]),
                                 (f"GI-z/w − GI-x = {p['GI-z/w'] - p['GI-x']:.2f} dB ≥ 1.8",
                                  p["GI-z/w"] - p["GI-x"] >= 1.8),
                                 (f"GI-z/w − best no-info reference = {p['GI-z/w'] - ref:.2f} dB ≥ 3",
                                  p["GI-z/w"] - ref >= 3)):
                    checks.append(f"- victim {v}: {text}: {'yes' if ok else 'NO'}")
                    fails += not ok
        lines.append("")
    text = "\n".join(lines + checks + ["", f"prior training {t_train / 60:.1f} min; total wall time {wall / 60:.1f} min "
                                      f"({len(jobs)} attacks)"])
    print(text)
    (out / "table.md").write_text(text + "\n")
    from gradleak.report import image_rows

    for v in victims:
        rows, labels = [], []
        for f in folds:
            first = [r for r in results if r["fold"] == f and r["victim"] == v and r["seed"] == 0]
            if first:
                rows.append(first[0]["originals"].float()), labels.append(f"fold {f} original")
                for r in first:
                    rows.append(r["images"].float()), labels.append(f"fold {f} {r['column']}")
        image_rows(rows, labels, out / f"grid_{v}.png", scale=2)
    print(f"\nwrote {out}/table.md, grid_*.png; {fails} floor(s) not met")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
