"""ROG vs ROGS under 3-bit quantisation, with Table 2's calibration rows (issue 7 acceptance).

Setting: built-in ``digits`` (private side, 32×32 grey — the only built-in set whose public and private sides
share their classes, so a conditional generator and a tagger trained on public data cover the private images),
``--batches`` batches of ``--batch`` (default 8 × 8, labels not distinct) drawn with seeds 0, 1, …; the ROG
benchmark's client (``rog_table.capture_case``: reduced ROG LeNet-5, FedAvg τ = 5, lr 5e-3, labels given) with
``--defense`` (default ``quantize``: uniform 3-bit quantisation; also ``qsgd``, ``sign``, ``none``).

Rows:
* **ROG** — bicubic ×4, 100 Adam iterations, relative L2, the shipped ``digits32`` enhancer;
* **ROGS** — ROG's output inverted into the shipped class-conditional DCGAN (``prior-digits-cond``) for the
  given class: random latent start, Adam lr 0.05, ``--rogs-iterations`` (default 1000, the paper's), λ1 = λ2 = 1,
  perceptual term = LPIPS if installed, otherwise the enhancer-feature distance (printed);
* **generator start** — the same generator at a random latent of the right class (ROGS at step 0): what the
  class label alone gives, without any inversion;
* **same-class image** (Table 2 footnote 2) — another private image of the same class, 5 draws per image;
* **random noise** (footnote 1) — N(0.5, 0.25²) clipped to [0, 1], 5 draws per image.

Metrics per pair: PSNR, SSIM, LPIPS (when its weights are installed), Jaccard of the built-in ``digits`` tagger's
tag sets (eq. 21; threshold 0.5), Jaccard on the attribute tags only (class tags removed), and class agreement
(the two images get the same class tag). Written to ``--out`` (default ``runs/rogs_table``): ``table.md``,
``rows.png`` (original, ROG, ROGS, same-class, noise for the first batch) and ``rogs_path.png`` (Figure 10).

    python benchmarks/rogs_table.py [--batches 8] [--batch 8] [--rogs-iterations 1000] [--workers 2]
                                    [--defense quantize|qsgd|sign|none] [--perceptual auto|enhancer|none|...]
                                    [--latent-constraint sphere|none]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import ROOT, parallel_map  # noqa: F401  (puts src/ on sys.path)
from rog_table import capture_case

DEFENSES = {"quantize": [{"name": "quantize", "bits": 3}], "qsgd": [{"name": "qsgd", "bits": 3}],
            "sign": [{"name": "sign"}], "none": []}
DATA, RESOLUTION, CHANNELS = "digits", 32, 1
REPEATS = 5
ROWS = ["rog", "rogs", "start", "same_class", "noise"]
NAMES = {"rog": "ROG", "rogs": "ROGS", "start": "generator start (class only)", "same_class": "same-class image",
         "noise": "random noise"}


def class_of(tags: list[str]) -> set[str]:
    return {t for t in tags if t.startswith("class:")}


def pair_scores(images, originals, tagger, lpips_net) -> dict:
    """Per-pair PSNR, SSIM, LPIPS, Jaccard (all / attributes only), class agreement, tags (pairs in order)."""
    from gradleak.metrics import lpips_distance, psnr, ssim
    from gradleak.metrics.semantic import jaccard

    images = images.clamp(0, 1)
    ta, tb = tagger(originals), tagger(images)
    return {"psnr": psnr(images, originals).tolist(), "ssim": ssim(images, originals).tolist(),
            "lpips": None if lpips_net is None else lpips_distance(lpips_net, images, originals).tolist(),
            "jaccard": [jaccard(a, b) for a, b in zip(ta, tb)],
            "jaccard_attr": [jaccard(set(a) - class_of(a), set(b) - class_of(b)) for a, b in zip(ta, tb)],
            "class_match": [float(class_of(a) == class_of(b)) for a, b in zip(ta, tb)],
            "tags": [(a, b) for a, b in zip(ta, tb)]}


def run_job(args: tuple[int, int, int, str, str, str]) -> dict:
    import torch

    torch.set_num_threads(1)
    import gradleak as gl
    from gradleak.attacks.rogs import ROGS, SemanticPath
    from gradleak.metrics import apply_match, load_lpips, lpips_status, match
    from gradleak.metrics.semantic import load_tagger

    seed, batch, rogs_iterations, defense, perceptual, constraint = args
    model, x, obs = capture_case(DEFENSES[defense], seed, data_name=DATA, resolution=RESOLUTION, channels=CHANNELS,
                                 batch=batch)
    tagger = load_tagger("digits")
    weights, _reason = lpips_status()
    net = load_lpips() if weights is not None else None
    from _common import audited

    atk = ROGS(iterations=100, enhancer="digits32", rogs_iterations=rogs_iterations, perceptual=perceptual,
               latent_constraint=constraint)
    r = audited(obs, atk, x, obs.labels, seed=seed, dataset=DATA, model=model)  # the audit pipeline
    rec, seconds = r.reconstruction, r.timing.attack
    sem = rec.get(SemanticPath)
    order = match(sem.start, x)  # one assignment (from ROG's output) for every row of this batch
    rows = {"rog": apply_match(sem.start, order), "rogs": apply_match(rec.images, order),
            "start": apply_match(sem.path[0][1], order)}
    out: dict = {"seed": seed, "seconds": seconds, "perceptual": sem.perceptual,
                 "originals": x.to(torch.float16), "path": [(it, apply_match(im, order).to(torch.float16))
                                                              for it, im in sem.path]}
    for k, imgs in rows.items():
        out[k] = pair_scores(imgs, x, tagger, net)
        out[k]["images"] = imgs.to(torch.float16)
    # calibration rows: REPEATS draws per image, scores averaged per image
    data = gl.load_dataset(DATA, split="private", resolution=RESOLUTION, channels=CHANNELS)
    gen = torch.Generator().manual_seed(1000 + seed)
    y = obs.labels
    for k in ("same_class", "noise"):
        draws = []
        for _ in range(REPEATS):
            if k == "noise":
                imgs = (0.5 + 0.25 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
            else:
                picks = []
                for i, c in enumerate(y.tolist()):
                    pool = (data.labels == c).nonzero().flatten()
                    pool = pool[[not torch.equal(data.images[j], x[i]) for j in pool.tolist()]]
                    picks.append(int(pool[torch.randint(len(pool), (1,), generator=gen)]))
                imgs = data.images[picks]
            draws.append(pair_scores(imgs, x, tagger, net))
        agg = {m: [statistics.mean(d[m][i] for d in draws) for i in range(len(x))]
               for m in ("psnr", "ssim", "jaccard", "jaccard_attr", "class_match")}
        agg["lpips"] = None if net is None else [statistics.mean(d["lpips"][i] for d in draws) for i in range(len(x))]
        agg["images"] = imgs.to(torch.float16)
        out[k] = agg
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rogs-iterations", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--defense", choices=sorted(DEFENSES), default="quantize",
                    help="the obfuscation: quantize (3-bit, the acceptance setting), qsgd (3-bit), sign, none")
    ap.add_argument("--perceptual", default="auto", help="ROGS perceptual term: auto, lpips, enhancer, tagger, none")
    ap.add_argument("--latent-constraint", choices=["sphere", "none"], default="sphere",
                    help="ROGS latent projection (sphere: the starting norm; none: eq. 19 as written)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "rogs_table"))
    args = ap.parse_args()
    t0 = time.time()
    jobs = [(b, args.batch, args.rogs_iterations, args.defense, args.perceptual, args.latent_constraint)
            for b in range(args.batches)]
    results = parallel_map(run_job, jobs, args.workers)
    wall = time.time() - t0
    n = sum(len(r["rog"]["psnr"]) for r in results)
    have_lpips = results[0]["rog"]["lpips"] is not None

    def mean(row, metric):
        return statistics.mean(v for r in results for v in r[row][metric])

    cols = [("psnr", "PSNR (dB)", ".2f"), ("ssim", "SSIM", ".3f")]
    cols += [("lpips", "LPIPS", ".3f")] if have_lpips else []
    cols += [("jaccard", "Jaccard", ".3f"), ("jaccard_attr", "Jaccard, attributes only", ".3f"),
             ("class_match", "same class tag", ".2f")]
    from gradleak.attacks.perceptual import describe_perceptual

    perc = describe_perceptual(results[0]["perceptual"])
    lines = [f"ROG vs ROGS — {DATA} (private) {RESOLUTION}×{RESOLUTION}×{CHANNELS}, {args.batches} batch(es) of "
             f"{args.batch} = {n} images, FedAvg τ = 5, lr 5e-3, defense {DEFENSES[args.defense] or 'none'}, "
             f"ROG LeNet-5 (c1 16, c2 32, hidden 256), labels given; ROG 100 iterations + enhancer digits32; ROGS "
             f"{args.rogs_iterations} iterations into prior-digits-cond, λ1 = λ2 = 1, latent constraint "
             f"{args.latent_constraint}; tagger: built-in digits (threshold 0.5)", "",
             "| row |" + "".join(f" {h} |" for _, h, _ in cols), "|---|" + "---:|" * len(cols)]
    for row in ROWS:
        lines.append(f"| {NAMES[row]} |" + "".join(f" {mean(row, k):{f}} |" for k, _, f in cols))
    lines += ["", f"ROGS perceptual term: {perc}.",
              "" if have_lpips else "LPIPS: unavailable here (weights not installed), so no LPIPS column.",
              "Calibration rows: mean over 5 draws per original image (noise: N(0.5, 0.25²) clipped; same class: "
              "another private image of the original's class)."]
    j = {row: mean(row, "jaccard") for row in ROWS}
    raises = j["rogs"] > j["rog"]
    far = all(j[r] >= j["noise"] + 0.2 and j[r] >= 2 * j["noise"] for r in ("rog", "rogs"))
    lines += ["", f"- ROGS raises mean Jaccard over ROG: {'yes' if raises else 'NO'} "
                  f"({j['rog']:.3f} → {j['rogs']:.3f})",
              f"- ROG and ROGS far above random noise (≥ noise + 0.2 and ≥ 2× noise): {'yes' if far else 'NO'} "
              f"(noise {j['noise']:.3f})",
              f"- ROGS vs the class label alone (generator start): {j['start']:.3f} → {j['rogs']:.3f}"]
    import torch

    diff = torch.tensor([b - a for r in results for a, b in zip(r["rog"]["jaccard"], r["rogs"]["jaccard"])])
    boot = diff[torch.randint(len(diff), (2000, len(diff)), generator=torch.Generator().manual_seed(0))].mean(1)
    lo, hi = (float(v) for v in torch.quantile(boot, torch.tensor([0.025, 0.975])))
    lines.append(f"- paired ROGS − ROG Jaccard per image: mean {float(diff.mean()):+.3f}, bootstrap 95 % interval "
                 f"[{lo:+.3f}, {hi:+.3f}]; ROGS higher on {int((diff > 0).sum())}, equal on {int((diff == 0).sum())}, "
                 f"lower on {int((diff < 0).sum())} of {len(diff)} images")
    first = results[0]
    lines += ["", "Tags of the first batch (Table 1 style; original | ROG | ROGS):", "",
              "| # | original | ROG | ROGS |", "|---|---|---|---|"]
    for i, ((o, a), (_, b)) in enumerate(zip(first["rog"]["tags"], first["rogs"]["tags"])):
        lines.append(f"| {i} | {', '.join(o)} | {', '.join(a)} | {', '.join(b)} |")
    secs = statistics.mean(r["seconds"] for r in results)
    lines += ["", f"ROG + ROGS: {secs:.1f} s per batch of {args.batch}; total wall time {wall / 60:.1f} min "
                  f"({args.batches} runs, {args.workers} worker(s))"]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    from gradleak.report import image_rows

    shown = ("rog", "rogs", "same_class", "noise")
    image_rows([first["originals"].float()] + [first[r]["images"].float() for r in shown],
               ["original", "ROG", "ROGS", "same class", "noise"], out / "rows.png", scale=2)
    path_rows = [im.float() for _, im in first["path"]]
    image_rows([first["rog"]["images"].float()] + path_rows + [first["originals"].float()],
               ["ROG input"] + [f"step {it}" for it, _ in first["path"]] + ["original"], out / "rogs_path.png",
               scale=2)
    print(f"\nwritten to {out}", file=sys.stderr)
    sys.exit(0 if raises and far else 1)


if __name__ == "__main__":
    main()
