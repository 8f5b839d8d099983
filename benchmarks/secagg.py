"""How many clients must secure aggregation sum before nothing is recognisable? Leakage against K and B.

Setting: the server sees only the aggregate of K clients' uploads (:mod:`gradleak.fl.secagg`; reduction
``weighted_mean``, FedAvg's and Flower's SecAgg+ aggregate — with equal batches the plain mean), each client
holding B private images (built-in ``photos``, 32×32 RGB, private split, drawn without replacement across
the K clients), one shared untrained victim (DLG's sigmoid LeNet, or ``--model convnet``), FedAvg as a Flower client runs
it (one local epoch of SGD on mini-batches of 1, lr ``--lr``: B local steps; with B = 1 it is FedSGD up to
the factor lr, and for FedSGD the aggregate of K clients of B images would be exactly one batch of K·B).
The attacker knows the clients' protocols and batch sizes (public in any deployment) and is GIVEN all K·B
labels (the strongest label knowledge; recovering them only weakens it), and runs DLG (L2 distance,
L-BFGS with strong-Wolfe line search, ``--iterations``; ``--attack invertgrad`` for cosine + TV, signed
Adam) on all K·B images at once: the re-run of the aggregate reproduces it exactly from the true data
(tests/test_secagg.py), so any failure is the aggregate's, not the model's.

Each reconstruction is matched to the K·B originals (optimal assignment) and scored against the
no-gradient references (grey, the public mean image; :mod:`gradleak.metrics.reference`). Reported per
(K, B): mean PSNR, the **worst case** (the best-reconstructed image: one recognisable image is a leak),
the best reference's PSNR for that image, the largest margin ΔPSNR over the best reference, and the graded
verdict (per-image counts; the batch takes the highest level, as everywhere in gradleak).

    python benchmarks/secagg.py [--clients 1,2,4,8] [--batch 1,2] [--iterations 60] [--attack dlg] [--seeds 1]
                                [--model lenet] [--workers 1] [--out runs/secagg]

Writes OUT/table.md, OUT/results.json, OUT/secagg.png (PSNR against K per B, references dashed),
OUT/grid_K<k>_B<b>_s<seed>.png (originals above, matched reconstructions below) and one OUT/cell_*.json per
finished cell: a rerun with the same settings skips the cells already done. Exit 0.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import ROOT, parallel_map, positive_int


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: comma-separated integers >= 1")
    return vals


def run_cell(job: dict) -> dict:
    """One (K, B, seed): K clients' aggregate captured, attacked, scored, calibrated."""
    import dataclasses

    import torch

    import gradleak as gl
    from _common import audited
    from gradleak.attacks import build_attack
    from gradleak.case import Case
    from gradleak.case import capture_aggregate
    from gradleak.imagegrid import image_rows

    torch.set_num_threads(1)
    K, B, seed, res = job["K"], job["B"], job["seed"], job["resolution"]
    private = gl.load_dataset("photos", split="private", resolution=res, channels=3)
    perm = torch.randperm(len(private), generator=torch.Generator().manual_seed(1000 + seed))[: K * B]
    x_all, y_all = private.images[perm].clone(), private.labels[perm].clone()
    model = gl.build_model(job["model"], private.num_classes, 3, res)
    gl.init_model(model, seed)
    # FedAvg as Flower clients run it: one local epoch of SGD on mini-batches of 1 (B local steps per client);
    # with B = 1 this is FedSGD up to the factor lr
    proto = gl.Protocol(kind="fedavg", epochs=1, local_batch_size=1, lr=job["lr"])
    cases = [Case(model=model, images=x_all[k * B:(k + 1) * B], labels=y_all[k * B:(k + 1) * B], protocol=proto)
             for k in range(K)]
    obs = dataclasses.replace(capture_aggregate(cases, "weighted_mean"), labels=y_all)  # the labels are given
    attack = build_attack(job["attack"], iterations=job["iterations"])
    r = audited(obs, attack, x_all, y_all, seed=seed, dataset="photos")  # the audit pipeline
    seconds, sc, cal = r.timing.attack, r.scores, r.calibration
    s = {"psnr": sc.psnr, "ssim": sc.ssim}
    per = s["psnr"]["per_image"]
    worst = max(range(len(per)), key=per.__getitem__)
    refs = cal.reference
    best_ref = max(refs[n]["psnr"][worst] for n in ("grey", "public_mean", "same_class")
                   if n in refs and refs[n].get("psnr") is not None and refs[n]["psnr"][worst] is not None)
    grid = Path(job["out"]) / f"grid_K{K}_B{B}_s{seed}.png"
    image_rows([x_all, r.matched.clamp(0, 1)], ["original", "reconstruction"], grid,
               scale=2, max_per_row=16)
    margin = cal.margins["psnr"]
    row = {"K": K, "B": B, "N": K * B, "seed": seed, "psnr_mean": s["psnr"]["mean"], "psnr_worst": per[worst],
            "psnr_per_image": per, "ssim_mean": s["ssim"]["mean"], "ssim_worst": max(s["ssim"]["per_image"]),
            "best_reference_psnr_at_worst": best_ref, "grey_psnr_mean": sum(refs["grey"]["psnr"]) / len(refs["grey"]["psnr"]),
            "dpsnr_max": max(margin["per_image"]), "dpsnr_mean": margin["mean"],
            "verdict": cal.verdict["batch"], "verdict_counts": cal.verdict["counts"],
            "seconds": round(seconds, 1), "grid": grid.name}
    (Path(job["out"]) / _cell_file(job)).write_text(json.dumps({"job": job, "row": row}))
    return row


def _cell_file(job: dict) -> str:
    return f"cell_K{job['K']}_B{job['B']}_s{job['seed']}.json"


def _done(job: dict) -> dict | None:
    """A cell finished earlier with the same settings (the run is resumable cell by cell)."""
    path = Path(job["out"]) / _cell_file(job)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data["row"] if data.get("job") == job else None


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for B in sorted({r["B"] for r in rows}):
        rs = sorted((r for r in rows if r["B"] == B), key=lambda r: r["K"])
        Ks = sorted({r["K"] for r in rs})
        worst = [max(r["psnr_worst"] for r in rs if r["K"] == k) for k in Ks]
        mean = [sum(r["psnr_mean"] for r in rs if r["K"] == k) / sum(1 for r in rs if r["K"] == k) for k in Ks]
        ref = [max(r["best_reference_psnr_at_worst"] for r in rs if r["K"] == k) for k in Ks]
        line, = ax.plot(Ks, worst, "o-", label=f"B = {B}: worst case (best image)")
        ax.plot(Ks, mean, "s:", color=line.get_color(), label=f"B = {B}: mean")
        ax.plot(Ks, ref, "--", color=line.get_color(), alpha=0.5, label=f"B = {B}: best reference at that image")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("clients summed by secure aggregation (K)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=_ints, default=[1, 2, 4, 8], help="K values (comma-separated)")
    ap.add_argument("--batch", type=_ints, default=[1, 2], help="B values: images per client (comma-separated)")
    ap.add_argument("--iterations", type=positive_int, default=60)
    ap.add_argument("--seeds", type=positive_int, default=1, help="seeds (batches, victim init) per cell")
    ap.add_argument("--model", choices=("lenet", "convnet"), default="lenet")
    ap.add_argument("--attack", choices=("invertgrad", "dlg"), default="dlg",
                    help="invertgrad: cosine + TV, signed Adam; dlg: L2, L-BFGS (labels given either way)")
    ap.add_argument("--resolution", type=positive_int, default=32)
    ap.add_argument("--lr", type=float, default=0.05, help="the clients' local SGD learning rate")
    ap.add_argument("--workers", type=positive_int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "secagg")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [{"K": K, "B": B, "seed": s, "iterations": args.iterations, "model": args.model, "attack": args.attack, "lr": args.lr,
             "resolution": args.resolution, "out": str(args.out)}
            for B in args.batch for K in args.clients for s in range(args.seeds)]
    t0 = time.time()
    done = {i: _done(j) for i, j in enumerate(jobs)}
    todo = [j for i, j in enumerate(jobs) if done[i] is None]
    fresh = iter(parallel_map(run_cell, todo, args.workers) if todo else [])
    rows = [done[i] if done[i] is not None else next(fresh) for i in range(len(jobs))]
    wall = time.time() - t0
    lines = [f"{args.attack} ({args.iterations} iterations, labels given) on the secure aggregate of K clients × B images "
             f"— {args.model}, photos {args.resolution}×{args.resolution}, FedAvg (1 local epoch, mini-batch 1, lr {args.lr}), "
             f"weighted mean; {args.seeds} seed(s)",
             "", "| K | B | N = K·B | mean PSNR | worst-case PSNR | best reference there | max ΔPSNR | verdict "
             "(recognisable / partial / none) | s |", "|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        c = r["verdict_counts"]
        lines.append(f"| {r['K']} | {r['B']} | {r['N']} | {r['psnr_mean']:.2f} | **{r['psnr_worst']:.2f}** | "
                     f"{r['best_reference_psnr_at_worst']:.2f} | {r['dpsnr_max']:+.2f} | **{r['verdict']}** "
                     f"({c['recognisable']} / {c['partial']} / {c['none']}) | {r['seconds']:.0f} |")
    from gradleak.metrics.reference import VerdictRule

    lines += ["", f"verdict rule: {VerdictRule().sentence()}",
              f"total wall time {wall:.0f} s ({len(rows)} cells, {args.workers} worker(s), 1 torch thread each)"]
    text = "\n".join(lines)
    print(text)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "rows": rows}, indent=1))
    plot(rows, args.out / "secagg.png", f"{args.attack} ({args.iterations} it.) on the secure aggregate — "
         f"{args.model}, photos {args.resolution} px, FedAvg")
    print(f"\nwritten to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
