"""GIML benchmark (issue 5): learning the prior from gradients alone (GIAS/GIML §5.3, Figures 4b/5) and
inversion from many gradients of the same data (appendix D, Figure A3), at small scale.

(a) GIML. Task set: ``--clients`` (default 100) clients holding 4 private digits each (the private split,
    32×32, 1 channel), ``--rounds`` (default 4) FedSGD rounds of a LeNet (width 12, BatchNorm in train mode —
    the issue-4 victim), every upload at gradient sparsity 0.95 (top-k), labels given; the global model moves
    between rounds (server step 0.5). GIML (Algorithm 2) trains an untrained DCGAN (latent 64, width 16) on
    those uploads for ``--giml-steps`` (default 600) steps, N = 4, τ = 5, λ = 1e-3, α = 0.1, β = 0.5, 50
    latent-search iterations; it never sees an image. Then GI-z and GI-z/w (GIAS defaults, best of 4
    restarts, ``--iterations`` 300 in all, half z / half w for GI-z/w, masked cosine) invert ``--batches``
    (default 10) fresh private batches (images no task client held, distinct labels, same victim and
    sparsity, a fresh victim initialisation per batch) with: the GIML generator at steps 0, ¼, ½ and 1 of
    training (step 0 = the untrained generator), the public-data generator (shipped ``digits`` prior,
    trained on the public split) and the wrong-domain one (shipped ``photos``); plus GI-w from the untrained
    generator. Writes ``psnr_vs_step.png`` (Figure 5a) and ``loss_vs_iteration.png`` (Figure 5b: GI-z/w cost
    per iteration, best restart, mean over batches).
(b) Multi-gradient. A client with 8 private digits uploads T gradients, each on 4 random images of them, at
    θ_t re-initialised every step or trained every step (lr 0.5); min_x Σ_t c(x; θ_t, g_t) (signed Adam,
    ``--multi-iterations`` 1000) for T = 1, 2, 4, 8 on ``--multi-datasets`` (default 8) local datasets;
    LeNet width 12 without BN (the vectorised re-run). PSNR per image in the dataset's own order (the
    attacker knows which images each gradient used). Writes ``multi_gradient.png``.

Prints the tables and the acceptance checks, writes ``--out``/``table.md``, the plots, ``giml/`` (the GIML run:
samples.png, steps/, history.csv) and ``results.json``. Default size: < 60 min on 2 cores.

    python benchmarks/giml_bench.py [--clients 100] [--giml-steps 400] [--batches 10] [--workers 2]
    python benchmarks/giml_bench.py --smoke          # tiny end-to-end check (about a minute)
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from _common import ROOT, parallel_map

BATCH, RESOLUTION, SPARSITY = 4, 32, 0.95
VICTIM = ("lenet", {"width": 12, "batchnorm": True})
MULTI_VICTIM = ("lenet", {"width": 12})
FRACTIONS = (0.0, 0.25, 0.5, 1.0)
T_VALUES = (1, 2, 4, 8)
SETTINGS = ("reinit", "trained")


def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else float("nan")


# --- phase 1: task set, GIML, multi-gradient ------------------------------------------------------------------

def giml_job(args: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from gradleak.giml import GIMLConfig, TaskSetConfig, make_task_set, train_giml

    out = Path(args["out"])
    t0 = time.perf_counter()
    ts = make_task_set(TaskSetConfig(data="digits", clients=args["clients"], rounds=args["rounds"], batch=BATCH,
                                     model=VICTIM[0], model_options=dict(VICTIM[1]), sparsity=SPARSITY,
                                     seed=args["seed"]), out / "tasks", progress=False)
    t1 = time.perf_counter()
    steps = args["giml_steps"]
    marks = [m for m in (round(f * steps) for f in FRACTIONS) if m]
    cfg = GIMLConfig(steps=steps, latent_iterations=args["latent_iterations"], seed=args["seed"],
                     checkpoint_every=math.gcd(*marks) if marks else 1)  # a snapshot at every step of the figure
    train_giml(cfg, ts, out / "giml", progress=False, command="benchmarks/giml_bench.py")
    return {"kind": "giml", "tasks": len(ts), "task_seconds": t1 - t0, "giml_seconds": time.perf_counter() - t1}


def multi_job(args: tuple) -> dict:
    import torch

    torch.set_num_threads(1)
    import gradleak as gl
    from gradleak.giml import MultiGradientInversion, observe_sequence
    from gradleak.metrics import psnr
    from gradleak.models import build_model, init_model

    T, setting, seed, iterations = args
    data = gl.load_dataset("digits", split="private", resolution=RESOLUTION, channels=1)
    x, y = gl.sample_batch(data, 8, distinct_labels=True, seed=1000 + seed)
    name, opts = MULTI_VICTIM
    model = init_model(build_model(name, data.num_classes, 1, RESOLUTION, **opts), seed)
    seq = observe_sequence(model, x, y, steps=T, subset=4, setting=setting, lr=0.5, seed=seed)
    rec = MultiGradientInversion(iterations=iterations)(seq, model=model, progress=False)
    return {"kind": "multi", "T": T, "setting": setting, "seed": seed, "psnr": psnr(rec.images, x).tolist(),
            "seconds": rec.seconds}


def phase1(job):
    return giml_job(job) if isinstance(job, dict) else multi_job(job)


# --- phase 2: GI-z / GI-z/w with each generator ------------------------------------------------------------------

def columns(out: Path, steps: int) -> dict[str, tuple[str, str]]:
    """column -> (attack, prior spec)."""
    cols = {}
    marks = sorted({round(f * steps) for f in FRACTIONS})
    for attack, label in (("gi-z", "GI-z"), ("gi-zw", "GI-z/w")):
        for s in marks:
            cols[f"{label} GIML step {s}"] = (attack, str(out / "giml" / "steps" / f"step_{s:06d}.safetensors"))
        cols[f"{label} public"] = (attack, "digits")
        cols[f"{label} wrong domain"] = (attack, "photos")
    cols["GI-w untrained"] = ("gi-w", str(out / "giml" / "steps" / "step_000000.safetensors"))
    return cols


def eval_batches(out: Path, batches: int, seed: int) -> list[list[int]]:
    """Distinct-label private batches of images no task client held."""
    import torch

    import gradleak as gl

    used = {i for c in json.loads((out / "tasks" / "truth.json").read_text())["client_indices"] for i in c}
    data = gl.load_dataset("digits", split="private", resolution=RESOLUTION, channels=1)
    free = torch.tensor([i for i in range(len(data)) if i not in used])
    sub = data.subset(free)
    picks = []
    for b in range(batches):
        perm = torch.randperm(len(sub), generator=torch.Generator().manual_seed(seed * 1000 + b))
        seen, chosen = set(), []
        for i in perm.tolist():
            if int(sub.labels[i]) not in seen:
                seen.add(int(sub.labels[i]))
                chosen.append(int(free[i]))
                if len(chosen) == BATCH:
                    break
        picks.append(chosen)
    return picks


def eval_job(args: tuple) -> dict:
    import torch

    torch.set_num_threads(1)
    import gradleak as gl
    from _common import audited

    from gradleak.attacks.presets import build_attack
    from gradleak.models import build_model, init_model

    column, attack, prior, indices, b, iterations = args
    data = gl.load_dataset("digits", split="private", resolution=RESOLUTION, channels=1)
    idx = torch.tensor(indices)
    x, y = data.images[idx], data.labels[idx]
    name, opts = VICTIM
    model = init_model(build_model(name, data.num_classes, 1, RESOLUTION, **opts), 5000 + b)
    spec = {"name": name, "num_classes": data.num_classes, "in_channels": 1, "resolution": RESOLUTION,
            "options": dict(opts)}
    case = gl.Case(model, x, y, gl.Protocol(kind="fedsgd"), gl.build_defenses([{"name": "topk", "sparsity": SPARSITY}]),
                   spec, give_labels=True)
    obs = gl.capture(case, seed=b)
    its = {"iterations": iterations} if attack != "gi-zw" else {"iterations_z": iterations // 2,
                                                                 "iterations_w": iterations - iterations // 2}
    atk = build_attack(attack, prior=prior, distance="masked_cosine", tv=1e-4, **its)
    audit = audited(obs, atk, x, obs.labels, seed=b, dataset="digits", model=model)  # the audit pipeline
    rec, scores = audit.reconstruction, audit.scores
    curve = {}
    for r in rec.trace:
        curve[r["iteration"]] = min(curve.get(r["iteration"], float("inf")), r["loss"])
    return {"column": column, "batch": b, "psnr": scores.psnr["per_image"], "ssim": scores.ssim["per_image"],
            "curve": [curve[i] for i in sorted(curve)], "seconds": rec.seconds}


# --- report ------------------------------------------------------------------------------------------------------

def plots(out: Path, cols: dict, res: list[dict], multi: list[dict], steps: int) -> None:
    from gradleak.report import line_plot

    def col_mean(c):
        return mean([v for r in res if r["column"] == c for v in r["psnr"]])

    marks = sorted({round(f * steps) for f in FRACTIONS})
    ys = {}
    for label in ("GI-z", "GI-z/w"):
        ys[f"{label} GIML"] = [col_mean(f"{label} GIML step {s}") for s in marks]
        ys[f"{label} public prior"] = [col_mean(f"{label} public")] * len(marks)
        ys[f"{label} wrong domain"] = [col_mean(f"{label} wrong domain")] * len(marks)
    ys["GI-w untrained"] = [col_mean("GI-w untrained")] * len(marks)
    line_plot(marks, ys, out / "psnr_vs_step.png", xlabel="GIML step t", ylabel="PSNR (dB), mean",
              title=f"GI-z, GI-z/w with G_w(t) (digits, sparsity {SPARSITY})")
    loss_cols = [f"GI-z/w GIML step {marks[-1]}", f"GI-z/w GIML step {marks[0]}", "GI-z/w public",
                 "GI-z/w wrong domain", "GI-w untrained"]
    curves = {}
    for c in loss_cols:
        cs = [r["curve"] for r in res if r["column"] == c]
        if cs:
            n = min(len(x) for x in cs)
            curves[c] = [mean([x[i] for x in cs]) for i in range(n)]
    if curves:
        n = min(len(v) for v in curves.values())
        line_plot(list(range(n)), {k: v[:n] for k, v in curves.items()}, out / "loss_vs_iteration.png",
                  xlabel="iteration", ylabel="cost (best restart, mean over batches)", title="GI-z/w cost",
                  logy=True, markers=False)
    if multi:
        ys = {s: [mean([v for r in multi if (r["T"], r["setting"]) == (T, s) for v in r["psnr"]]) for T in T_VALUES]
              for s in SETTINGS}
        line_plot(list(T_VALUES), {f"θ {s}": v for s, v in ys.items()}, out / "multi_gradient.png",
                  xlabel="gradients T", ylabel="PSNR (dB), mean over the 8 images", title="Inversion from T gradients")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--giml-steps", type=int, default=600)
    ap.add_argument("--latent-iterations", type=int, default=50)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--multi-datasets", type=int, default=8)
    ap.add_argument("--multi-iterations", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: proves the pipeline end to end")
    ap.add_argument("--out", default=str(ROOT / "runs" / "giml_bench"))
    args = ap.parse_args()
    if args.smoke:
        args.clients, args.rounds, args.giml_steps, args.latent_iterations = 6, 2, 4, 3
        args.batches, args.iterations, args.multi_datasets, args.multi_iterations = 1, 4, 1, 3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    giml = {"out": str(out), "clients": args.clients, "rounds": args.rounds, "giml_steps": args.giml_steps,
            "latent_iterations": args.latent_iterations, "seed": args.seed}
    multi_jobs = [(T, s, d, args.multi_iterations) for d in range(args.multi_datasets) for s in SETTINGS
                  for T in sorted(T_VALUES, reverse=True)]
    first = parallel_map(phase1, [giml, *multi_jobs], args.workers)
    info, multi = first[0], first[1:]
    t1 = time.time()
    cols = columns(out, args.giml_steps)
    picks = eval_batches(out, args.batches, args.seed)
    jobs = [(c, a, p, picks[b], b, args.iterations) for b in range(args.batches) for c, (a, p) in cols.items()]
    res = parallel_map(eval_job, jobs, args.workers)
    wall = time.time() - t0

    def col(c, key="psnr"):
        return mean([v for r in res if r["column"] == c for v in r[key]])

    lines = [f"GIML (Algorithm 2) on {info['tasks']} uploads ({args.clients} clients × {args.rounds} rounds, batch {BATCH}, "
             f"digits private split, LeNet w12+BN, sparsity {SPARSITY}), {args.giml_steps} steps "
             f"({info['giml_seconds'] / 60:.1f} min); attacks: {args.iterations} iterations, best of 4 restarts, "
             f"{args.batches} batches × {BATCH} held-out images", "",
             "| attack / generator | PSNR (dB) | SSIM | best-in-batch PSNR | s / reconstruction |", "|---|---:|---:|---:|---:|"]
    for c in cols:
        best = mean([max(r["psnr"]) for r in res if r["column"] == c])
        secs = mean([r["seconds"] for r in res if r["column"] == c])
        lines.append(f"| {c} | {col(c):.2f} | {col(c, 'ssim'):.3f} | {best:.2f} | {secs:.1f} |")
    last = round(args.giml_steps)
    checks = [
        (f"GI-z with GIML (step {last}) {col(f'GI-z GIML step {last}'):.2f} > GI-z untrained (step 0) "
         f"{col('GI-z GIML step 0'):.2f}", col(f"GI-z GIML step {last}") > col("GI-z GIML step 0")),
        (f"GI-z/w with GIML {col(f'GI-z/w GIML step {last}'):.2f} > GI-w untrained {col('GI-w untrained'):.2f}",
         col(f"GI-z/w GIML step {last}") > col("GI-w untrained")),
    ]
    lines += ["", "Multi-gradient inversion (8 images, 4 per gradient, mean PSNR over images and "
              f"{args.multi_datasets} local datasets, {args.multi_iterations} iterations):", "",
              "| θ | " + " | ".join(f"T={T}" for T in T_VALUES) + " |", "|---|" + "---:|" * len(T_VALUES)]
    for s in SETTINGS:
        vals = [mean([v for r in multi if (r["T"], r["setting"]) == (T, s) for v in r["psnr"]]) for T in T_VALUES]
        lines.append(f"| {s} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
        checks.append((f"multi-gradient ({s}): PSNR strictly rises T=1→8: {', '.join(f'{v:.2f}' for v in vals)}",
                       all(a < b for a, b in zip(vals, vals[1:]))))
    lines += ["", *[f"- {t}: {'yes' if ok else 'NO'}" for t, ok in checks], "",
              f"total wall time {wall / 60:.1f} min (phase 1 {(t1 - t0) / 60:.1f} min; {args.workers} workers)"]
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "giml": info, "attacks": res, "multi": multi},
                                                 indent=1))
    plots(out, cols, res, multi, args.giml_steps)
    print(f"\nwrote {out}/table.md, psnr_vs_step.png, loss_vs_iteration.png, multi_gradient.png, giml/samples.png")
    sys.exit(0 if all(ok for _, ok in checks) else 1)  # an acceptance check failed


if __name__ == "__main__":
    main()
