"""R-GAP and R-GAP with a generative model: GIAS appendix C, Figures A1 and A2, on the built-in data.

Three parts, every victim randomly initialised (seed 0), FedSGD, batch 1, true labels, 1 torch thread:

A2  per-layer relative error ‖x̂_r − x_r‖ / ‖x_r‖ of R-GAP on CNN6 and CNN10 (R-GAP's standard form, no bias),
    from the output layer down to the image: the error accumulation of the recursion.
A1  R-GAP vs R-GAP + generative model for the rank-deficient layer(s) of a narrow CNN6 (width 0.25, whose first
    layer is under-determined: 3 filters cannot pin down the image), per-layer error and final PSNR/SSIM:
    closed form; generative prior on the rank-deficient layer (eq. 11, x_r = f_r(G(z*))); the same keeping the
    closed form's row-space part (null-space fill); and the prior on every layer.
IG  R-GAP vs InvertGrad (GI-x) on CNN6, the same images: PSNR/SSIM and wall time.

    python benchmarks/rgap.py --out docs/figures [--images 2] [--dataset digits] [--ig-iterations 300]

The printed tables are recorded in docs/rgap.md.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import audited, positive_int  # noqa: E402  (puts src/ on the path)

import torch  # noqa: E402

from gradleak.attacks import build_attack  # noqa: E402
from gradleak.attacks.rgap import RGAP, RankAnalysis, RGAPGenerative, true_layer_inputs  # noqa: E402
from gradleak.case import Case, capture  # noqa: E402
from gradleak.data import load_dataset  # noqa: E402
from gradleak.models import build_model, init_model  # noqa: E402


def layer_errors(rec, model, x) -> list[float]:
    true = true_layer_inputs(model, x)
    got = rec.get(RankAnalysis).inputs
    return [float((g.reshape(-1) - t.reshape(-1)).norm() / t.norm()) for g, t in zip(got, true)]


def victim(name, channels, width=1.0):
    return init_model(build_model(name, 10, channels, 32, width=width), 0)


DATASET = "digits"  # the references' public side (main() sets it)


def attack_case(attack, model, x, y):
    """The victim's FedSGD upload of (x, y), attacked and scored by the audit pipeline (true labels given)."""
    return audited(capture(Case(model, x, y, give_labels=True)), attack, x, y, dataset=DATASET, model=model)


def scores(r):
    return r.scores.psnr["mean"], r.scores.ssim["mean"]


def gmean(v):
    return math.exp(sum(math.log(max(e, 1e-300)) for e in v) / len(v))


def part_a2(batch, channels, names):
    print("\n== Figure A2: R-GAP per-layer relative error, layer 1 = image (geometric mean over images); "
          "plain = R-GAP's unweighted rows, balanced = gradient rows equilibrated (the default) ==")
    curves = {}
    for name, balance in [(n, b) for n in names for b in (False, True)]:
        model = victim(name, channels)
        errs, times, ps = [], [], []
        name = f"{name} {'balanced' if balance else 'plain'}"
        for x, y in batch:
            r = attack_case(RGAP(balance=balance), model, x, y)
            rec = r.reconstruction
            errs.append(layer_errors(rec, model, x))
            times.append(rec.seconds)
            ps.append(scores(r))
        rows = rec.get(RankAnalysis).layers
        curve = [gmean([e[i] for e in errs]) for i in range(len(rows))]
        curves[name] = curve
        print(f"\n{name}: {sum(times) / len(times):.1f} s per image; final PSNR "
              f"{sum(p[0] for p in ps) / len(ps):.2f} dB, SSIM {sum(p[1] for p in ps) / len(ps):.3f}")
        print(f"{'layer':>5} {'kind':<6} {'unknowns':>8} {'constraints':>12} {'rank':>6} {'cond(A_r)':>9} {'rel. error':>10}")
        for r, e in zip(rows, curve):
            cons = f"{r.forward_constraints}+{r.gradient_constraints}"
            print(f"{r.layer:>5} {r.kind:<6} {r.unknowns:>8} {cons:>12} {r.rank:>6} {r.condition:>9.1e} {e:>10.2e}")
    return curves


def part_a1(batch, channels, prior, iterations, restarts):
    print(f"\n== Figure A1: R-GAP vs R-GAP + generative model (cnn6 width 0.25, prior {prior!r}, "
          f"{iterations} z-iterations x {restarts} restarts per generative layer) ==")
    model = victim("cnn6", channels, width=0.25)
    variants = {
        "R-GAP (closed form)": RGAP(),
        "R-GAP + G on rank-deficient layers (eq. 11)": RGAPGenerative(prior, "auto", iterations, restarts=restarts),
        "R-GAP + G, null-space fill": RGAPGenerative(prior, "auto", iterations, restarts=restarts, fill="nullspace"),
        "R-GAP + G on every layer": RGAPGenerative(prior, list(range(1, 7)), iterations, restarts=restarts),
    }
    curves, table = {}, []
    for label, attack in variants.items():
        errs, ps, times, recs = [], [], [], []
        for x, y in batch:
            r = attack_case(attack, model, x, y)
            rec = r.reconstruction
            errs.append(layer_errors(rec, model, x))
            ps.append(scores(r))
            times.append(rec.seconds)
            recs.append(rec)
        curves[label] = [gmean([e[i] for e in errs]) for i in range(len(errs[0]))]
        table.append((label, sum(p[0] for p in ps) / len(ps), sum(p[1] for p in ps) / len(ps),
                      sum(times) / len(times), recs[0]))  # the figure shows the first image
    rows = table[0][4].get(RankAnalysis).layers
    print("rank analysis: " + ", ".join(f"layer {r.layer} {r.rank}/{r.unknowns}" for r in rows))
    print(f"\n{'variant':<45} {'PSNR':>7} {'SSIM':>6} {'s/img':>6}   per-layer rel. error (layer 1 … top)")
    for label, p, s, t, _ in table:
        print(f"{label:<45} {p:>7.2f} {s:>6.3f} {t:>6.1f}   " + " ".join(f"{e:.1e}" for e in curves[label]))
    return curves, [(t[0], t[4]) for t in table]


def part_ig(batch, channels, iterations):
    print(f"\n== R-GAP vs InvertGrad (GI-x, {iterations} iterations, 1 restart) on cnn6 ==")
    model = victim("cnn6", channels)
    out = {}
    for label, attack in (("R-GAP", RGAP()), (f"InvertGrad ({iterations} it.)",
                                               build_attack("invertgrad", iterations=iterations))):
        ps, times, recs = [], [], []
        for x, y in batch:
            r = attack_case(attack, model, x, y)
            times.append(r.timing.capture + r.timing.attack)
            ps.append(scores(r))
            recs.append(r.reconstruction.images)
        out[label] = (sum(p[0] for p in ps) / len(ps), sum(p[1] for p in ps) / len(ps), sum(times) / len(times), recs)
    print(f"{'attack':<26} {'PSNR':>7} {'SSIM':>6} {'wall s/img':>10}")
    for label, (p, s, t, _) in out.items():
        print(f"{label:<26} {p:>7.2f} {s:>6.3f} {t:>10.1f}")
    return out


def plot(out_dir, a2, a1, a1_recs, ig, batch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, curve in a2.items():
        ax.semilogy(range(len(curve), 0, -1), curve[::-1], marker="o", label=name.replace("cnn", "CNN"),
                    linestyle="--" if "plain" in name else "-")
    ax.set_xlabel("layer (top = output side, 1 = image)")
    ax.set_ylabel("relative error of the layer input")
    ax.invert_xaxis()
    ax.set_title("R-GAP error accumulation (GIAS Fig. A2)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "rgap_layer_error.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.4, 1]})
    for label, curve in a1.items():
        axes[0].semilogy(range(len(curve), 0, -1), curve[::-1], marker="o", label=label)
    axes[0].invert_xaxis()
    axes[0].set_xlabel("layer (1 = image)")
    axes[0].set_ylabel("relative error of the layer input")
    axes[0].set_title("R-GAP vs R-GAP + generative model (GIAS Fig. A1)")
    axes[0].legend(fontsize=7)
    x0 = batch[0][0][0]
    tiles = [x0] + [rec.images[0] for _, rec in a1_recs] + [ig_recs[0][0] for ig_recs in
                                                              [v[3] for v in ig.values()][1:]]
    names = ["original"] + [lab.split(" (")[0].replace("R-GAP + G", "+G") for lab, _ in a1_recs] + ["InvertGrad"]
    grid = torch.cat([t.clamp(0, 1) for t in tiles], dim=-1)
    img = grid.permute(1, 2, 0).squeeze(-1).numpy()
    axes[1].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    axes[1].set_xticks([32 * i + 16 for i in range(len(names))])
    axes[1].set_xticklabels(names, rotation=35, ha="right", fontsize=7)
    axes[1].set_yticks([])
    axes[1].set_title("image 1 (InvertGrad on full-width CNN6)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "rgap_generative.png", dpi=120)
    plt.close(fig)
    print(f"\nfigures: {out_dir / 'rgap_layer_error.png'}, {out_dir / 'rgap_generative.png'}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the figures")
    p.add_argument("--images", type=positive_int, default=2)
    p.add_argument("--dataset", choices=["digits", "photos"], default="digits")
    p.add_argument("--ig-iterations", type=positive_int, default=300)
    p.add_argument("--gen-iterations", type=positive_int, default=300)
    p.add_argument("--restarts", type=positive_int, default=4)
    p.add_argument("--skip-cnn10", action="store_true", help="A2 on CNN6 only (CNN10 takes ~1 min per image)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    global DATASET
    DATASET = a.dataset
    channels = 1 if a.dataset == "digits" else 3
    data = load_dataset(a.dataset, split="private", resolution=32, channels=channels)
    batch = [(data.images[i:i + 1], data.labels[i:i + 1]) for i in range(a.images)]
    print(f"R-GAP benchmark: {a.dataset} 32x32x{channels}, {a.images} image(s), victims randomly initialised (seed 0), "
          f"FedSGD batch 1, true labels, torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    a2 = part_a2(batch, channels, ("cnn6",) if a.skip_cnn10 else ("cnn6", "cnn10"))
    a1, a1_recs = part_a1(batch, channels, a.dataset, a.gen_iterations, a.restarts)
    ig = part_ig(batch, channels, a.ig_iterations)
    plot(a.out, a2, a1, a1_recs, ig, batch)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
