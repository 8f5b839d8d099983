"""Attack speed (issue 14): the engine's re-run backends against a plain textbook loop, 1 and 4 restarts.

For each case (victim, batch, client protocol) it times, in one process, interleaved round by round
(median over rounds of iterations per second; one torch thread unless ``--threads``):

* ``textbook`` — the loop every gradient-inversion paper ships (:func:`textbook_loop`, kept below: autograd
  with ``create_graph=True``, cosine distance (L2 for ROG), Adam), one restart; R restarts cost R times it;
* gradleak's attack step (:func:`engine_step`: the engine's own ``_value_and_grads`` + signed Adam + box,
  i.e. one InvertGrad iteration) with each backend — ``loop`` (autograd per restart), ``vmap``
  (torch.func over restarts), ``compiled`` (the same traced and compiled by Inductor), ``auto`` (what
  the engine picks after its measured warm-up; its steady state is the picked backend's) — with 1 and 4
  restarts.

Columns: it/s of each; ``×tb`` = it/s ÷ textbook it/s (1 restart); ``4R/1R`` = time of one 4-restart
iteration ÷ time of one 1-restart iteration (≤ 2 is the issue's floor for "batched"; the textbook's is 4).
Rows: LeNet batch 1/4, ConvNet width 16/32 batch 4, ResNet-18 width 16 batch 1, FedSGD and FedAvg τ = 5
(local batch = half the batch), then GI-z, GI-w (per-image generator copies), GI-z/w (half the iterations in
each stage: its it/s is the harmonic mean of the two stage rows) through the built-in photos prior on the
ConvNet width 16, batch 4, FedSGD, and ROG (bicubic ×4, relative L2) on LeNet batch 4, FedAvg τ = 5.
Images are random (speed does not depend on them); 3×32×32, 10 classes.

    python benchmarks/speed.py                    # the full table (long on a CPU: compilation dominates)
    python benchmarks/speed.py --quick            # a tiny version (LeNet only, no compilation)
    python benchmarks/speed.py --device cuda      # the same on a GPU
    python benchmarks/speed.py --backends loop,vmap --cases lenet-b4-fedsgd,gi-z
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))



def _imports() -> None:
    """torch and gradleak, imported after the arguments are checked (a bad argument answers at once)."""
    global torch, F, functional_call, Objective, SearchContext, choose, matching_problem, _value_and_grads
    global DISTANCES, Stage, Pixels, _fused_stage
    global Case, capture, Protocol, build_model, init_model
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    from gradleak.attacks.engine import (Objective, SearchContext, Stage, _fused_stage, _value_and_grads,
                                         matching_problem)
    from gradleak.backends.policy import choose
    from gradleak.attacks.parametrizations import Pixels
    from gradleak.attacks.objectives import DISTANCES
    from gradleak.case import Case, capture
    from gradleak.fl.protocol import Protocol
    from gradleak.models import build_model, init_model

BACKENDS = ("loop", "vmap", "compiled", "auto")
SHAPE = (3, 32, 32)


def textbook_loop(model, x, y, observed, protocol, iterations, lr=0.1, distance="cosine"):
    """The plain attack loop (DLG/InvertGrad reference code): re-run the client with create_graph=True,
    compare to the observed upload, backpropagate to the images, Adam. ``x``: (B, C, H, W) leaf."""
    params = dict(model.named_parameters())
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    target = torch.cat([o.flatten() for o in observed])
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(iterations):
        opt.zero_grad()
        p = params
        for idx in protocol.schedule(len(y)):  # one step (FedSGD) or τ unrolled local steps (FedAvg)
            loss = F.cross_entropy(functional_call(model, {**p, **bufs}, (x[list(idx)],)), y[list(idx)])
            g = torch.autograd.grad(loss, list(p.values()), create_graph=True)
            if protocol.kind == "fedsgd":
                break
            p = {n: w - protocol.lr * gn for (n, w), gn in zip(p.items(), g)}
        t = torch.cat([u.flatten() for u in (g if protocol.kind == "fedsgd" else
                                                [params[n] - p[n] for n in params])])
        d = 1 - t @ target / (t.norm() * target.norm()) if distance == "cosine" else (t - target).pow(2).sum()
        d.backward()
        opt.step()


def engine_step(ctx, objective, param, variables, labels, lr, signed=True, box=True, pixels=False):
    """One iteration of the engine's inner loop (see ``_run_chunk``): value and gradients, Adam; on pixels
    with ``compiled``, the step's fused iteration (``_fused_stage`` / ``FusedAdam``: one compiled call)."""
    fused = _fused_stage(ctx, objective, Stage("x", Pixels(box=box), 1, lr, signed=signed), soft=False) if pixels else None
    if fused is not None:
        x = variables[0].detach()
        state = [x, torch.zeros_like(x), torch.zeros_like(x)]
        count = [0]

        def fused_step():
            count[0] += 1
            t = torch.tensor(float(count[0]), dtype=torch.float64, device=x.device)
            lr_t = torch.tensor(lr, dtype=torch.float64, device=x.device)
            state[:] = fused(*state, t, lr_t, labels)[:3]
        return fused_step
    opt = torch.optim.Adam(variables, lr=lr)

    def step():
        opt.zero_grad(set_to_none=True)
        _, grads = _value_and_grads(ctx, objective, param(), labels, variables)
        for v, g in zip(variables, grads):
            v.grad = torch.zeros_like(v) if g is None else (g.sign() if signed else g)
        opt.step()
        if box:
            with torch.no_grad():
                variables[0].clamp_(0, 1)
    return step


def victim_case(model_name, width, batch, proto, device, seed=0):
    opts = {} if width is None else {"width": width}
    torch.manual_seed(seed)
    model = init_model(build_model(model_name, 10, SHAPE[0], SHAPE[1], **opts), seed).to(device)
    spec = {"name": model_name, "num_classes": 10, "in_channels": SHAPE[0], "resolution": SHAPE[1], "options": opts}
    x = torch.rand(batch, *SHAPE, device=device)
    y = torch.arange(batch, device=device) % 10
    protocol = (Protocol() if proto == "fedsgd" else
                Protocol(kind="fedavg", local_steps=5, lr=0.01, local_batch_size=max(1, batch // 2)))
    obs = capture(Case(model, x, y, protocol, give_labels=True, model_spec=spec))
    return model, obs, y


def _pixels(R, B, device, gen):
    x = (0.5 + 0.25 * torch.randn(R, B, *SHAPE, generator=gen, device=device)).clamp(0, 1).requires_grad_()
    return (lambda: x), [x]


def _param_factory(kind, prior):
    """(R, B, device, gen) -> (images(), variables) for the image representation of a row."""
    if kind == "pixels":
        return _pixels
    from gradleak.attacks.generative import GeneratorWeights, Latent
    from gradleak.attacks.rog import Bicubic

    def make(R, B, device, gen):
        p = {"z": lambda: Latent(prior), "w": lambda: GeneratorWeights(prior), "rog": lambda: Bicubic(4)}[kind]()
        variables = p.start(R, B, SHAPE, None, gen)
        return p.images, variables
    return make


def measure_case(label, model, obs, y, kind, prior, distance, backends, args, device):
    """Times every candidate interleaved; returns a dict of results for the table."""
    names = list(obs.parameters)
    observed = [obs.update[n] for n in names]
    dist = DISTANCES[distance]
    if distance == "l2":  # ROG's relative L2 (gradleak.attacks.rog.relative)
        from gradleak.attacks.rog import relative

        dist = relative(dist, observed)
    objective = Objective(distance=dist, tv=1e-4 if kind == "pixels" else 0.0)
    make = _param_factory(kind, prior)
    B = obs.num_images
    signed = kind == "pixels"
    runners, info = {}, {}

    # textbook: one restart; images from the same representation (pixels, G(z), ...), plain autograd
    gen = torch.Generator(device=device).manual_seed(0)
    img_fn, variables = make(1, B, device, gen)
    if kind == "pixels":
        leaf = variables[0].detach()[0].clone().requires_grad_()

        def tb():
            textbook_loop(model, leaf, y, observed, obs.protocol, args.iterations, distance=distance)
    else:
        def tb():
            opt = torch.optim.Adam(variables, lr=0.01)
            target = torch.cat([o.flatten() for o in observed])
            params = dict(model.named_parameters())
            bufs = {n: b.clone() for n, b in model.named_buffers()}
            model.train()
            for _ in range(args.iterations):
                opt.zero_grad()
                xb = img_fn()[0]
                p = params
                for idx in obs.protocol.schedule(B):
                    loss = F.cross_entropy(functional_call(model, {**p, **bufs}, (xb[list(idx)],)), y[list(idx)])
                    g = torch.autograd.grad(loss, list(p.values()), create_graph=True)
                    if obs.protocol.kind == "fedsgd":
                        break
                    p = {n: w - obs.protocol.lr * gn for (n, w), gn in zip(p.items(), g)}
                up = g if obs.protocol.kind == "fedsgd" else [params[n] - p[n] for n in params]
                t = torch.cat([u.flatten() for u in up])
                d = (1 - t @ target / (t.norm() * target.norm()) if distance == "cosine"
                     else (t - target).pow(2).sum() / target.pow(2).sum())
                d.backward()
                opt.step()
    runners["textbook/1"] = tb

    for backend in backends:
        for R in (1, 4):
            ctx = SearchContext(model, obs, names, observed)
            t0 = time.perf_counter()
            # "auto" measures for a planned search of --planned iterations (compiling only for long ones)
            ctx.step, timing = choose(matching_problem(ctx, objective, False), backend, R, y, args.planned)
            img_fn, variables = make(R, B, device, torch.Generator(device=device).manual_seed(1))
            step = engine_step(ctx, objective, img_fn, variables, y.expand(R, B), 0.01, signed=signed, box=signed,
                               pixels=kind == "pixels")
            step()  # warm-up (first-call allocations; compilation for "compiled")
            setup = time.perf_counter() - t0
            used = ctx.step.name
            fused = getattr(ctx.step, "fused", {})
            fb = (getattr(getattr(ctx.step, "fast", None), "fallback", None)
                  or next((f.fallback for f in fused.values() if f.fallback), None))
            compiled = ctx.step.compiled_steps() if hasattr(ctx.step, "compiled_steps") else []
            chosen = sorted({v for f in compiled for v in f.run.chosen.values()})
            info[f"{backend}/{R}"] = {"setup_s": setup, "used": used, "fallback": fb, "timing": timing,
                                      "variant": "+".join(chosen)}

            def run(step=step):
                for _ in range(args.iterations):
                    step()
            runners[f"{backend}/{R}"] = run
    tb()  # warm-up of the textbook loop
    times = {k: [] for k in runners}
    for _ in range(args.rounds):
        for k, f in runners.items():
            t0 = time.perf_counter()
            f()
            if device != "cpu":
                torch.cuda.synchronize()
            times[k].append(args.iterations / (time.perf_counter() - t0))
    ips = {k: statistics.median(v) for k, v in times.items()}
    return {"label": label, "ips": ips, "info": info}


def fmt_row(res, backends):
    ips, info = res["ips"], res["info"]
    tb = ips["textbook/1"]
    cells = [res["label"], f"{tb:.1f}"]
    for b in backends:
        one, four = ips[f"{b}/1"], ips[f"{b}/4"]
        name = ""
        if b == "auto":
            name = f" ({info['auto/1']['used']}/{info['auto/4']['used']})"
        if b == "compiled" and info["compiled/1"]["fallback"]:
            name = " (fell back)"
        elif b == "compiled":
            name = f" ({info['compiled/1']['variant']}/{info['compiled/4']['variant']})"
        cells.append(f"{one:.1f} ({one / tb:.2f}×tb) · {four:.1f} ({one / four:.2f}){name}")
    return "| " + " | ".join(cells) + " |"


CASES = [  # (label, model, width, batch, protocol)
    ("lenet-b1-fedsgd", "lenet", None, 1, "fedsgd"), ("lenet-b1-fedavg", "lenet", None, 1, "fedavg"),
    ("lenet-b4-fedsgd", "lenet", None, 4, "fedsgd"), ("lenet-b4-fedavg", "lenet", None, 4, "fedavg"),
    ("convnet16-b4-fedsgd", "convnet", 16, 4, "fedsgd"), ("convnet16-b4-fedavg", "convnet", 16, 4, "fedavg"),
    ("convnet32-b4-fedsgd", "convnet", 32, 4, "fedsgd"), ("convnet32-b4-fedavg", "convnet", 32, 4, "fedavg"),
    ("resnet18w16-b1-fedsgd", "resnet18", 16, 1, "fedsgd"), ("resnet18w16-b1-fedavg", "resnet18", 16, 1, "fedavg"),
]
FAMILY = [  # (label, representation, victim, width, protocol, distance), batch 4
    ("gi-z", "z", "convnet", 16, "fedsgd", "cosine"), ("gi-w", "w", "convnet", 16, "fedsgd", "cosine"),
    ("rog", "rog", "lenet", None, "fedavg", "l2"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=10, help="iterations per timed round of each candidate")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median it/s is reported)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of loop,vmap,compiled,auto")
    ap.add_argument("--cases", default="", help="comma-separated case labels (default: all)")
    ap.add_argument("--planned", type=int, default=2000, help="search length 'auto' plans for (see gradleak.backends.policy.AUTO_COMPILE_MIN_SECONDS)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="LeNet batch 4 FedSGD and GI-z only, loop/vmap/auto, 3 rounds")
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        ap.error(f"--backends: got {bad[0]!r}; allowed: {', '.join(BACKENDS)}")
    known = [c[0] for c in CASES] + [f[0] for f in FAMILY] + ["gi-zw"]
    unknown = [c for c in args.cases.split(",") if c and c not in known]
    if unknown:
        ap.error(f"--cases: got {unknown[0]!r}; allowed: {', '.join(known)}")
    for key in ("iterations", "rounds", "threads"):
        if getattr(args, key) < 1:
            ap.error(f"--{key}: got {getattr(args, key)}; allowed: an integer >= 1")
    if args.quick:
        backends = [b for b in backends if b != "compiled"]
        args.cases = args.cases or "lenet-b4-fedsgd,gi-z"
        args.rounds, args.iterations, args.planned = 3, min(args.iterations, 5), 100
    wanted = set(args.cases.split(",")) if args.cases else None
    _imports()
    torch.set_num_threads(args.threads)
    device = args.device
    if device != "cpu":
        torch.set_default_device(device)
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} torch thread(s), "
          f"{cpu}, {args.iterations} iterations × {args.rounds} interleaved rounds, median it/s\n")
    head = ("| case | textbook it/s | " + " | ".join(f"{b}: 1R it/s (×tb) · 4R it/s (4R/1R)" for b in backends) + " |")
    print(head)
    print("|" + "---|" * (2 + len(backends)))
    results = []
    for label, name, width, batch, proto in CASES:
        if wanted and label not in wanted:
            continue
        model, obs, y = victim_case(name, width, batch, proto, device)
        res = measure_case(label, model, obs, y, "pixels", None, "cosine", backends, args, device)
        results.append(res)
        print(fmt_row(res, backends), flush=True)
    family = [f for f in FAMILY if not wanted or f[0] in wanted or (f[0] in ("gi-z", "gi-w") and "gi-zw" in wanted)]
    if family:
        from gradleak.priors.prior import load_prior

        prior = load_prior("photos")
        prior.net.to(device)
        fam = {}
        for label, kind, victim, width, proto, distance in family:
            model, obs, y = victim_case(victim, width, 4, proto, device)
            res = measure_case(f"{label} ({victim}{width or ''}-b4-{proto})", model, obs, y, kind, prior, distance,
                               backends, args, device)
            fam[label] = res
            print(fmt_row(res, backends), flush=True)
        if "gi-z" in fam and "gi-w" in fam:
            z, w = fam["gi-z"]["ips"], fam["gi-w"]["ips"]
            hm = {k: 2 / (1 / z[k] + 1 / w[k]) for k in z}
            info = {k: {"used": f"{fam['gi-z']['info'][k]['used']}+{fam['gi-w']['info'][k]['used']}",
                        "fallback": fam["gi-z"]["info"][k]["fallback"] or fam["gi-w"]["info"][k]["fallback"],
                        "variant": f"{fam['gi-z']['info'][k]['variant']}+{fam['gi-w']['info'][k]['variant']}"}
                    for k in fam["gi-z"]["info"]}
            print(fmt_row({"label": "gi-zw (half z, half w)", "ips": hm, "info": info}, backends), flush=True)
    print("\nset-up seconds (backend choice + first step; compilation included) and fallbacks:")
    for res in results + (list(fam.values()) if family else []):
        parts = []
        for k, v in res["info"].items():
            extra = f" fallback: {v['fallback']}" if v["fallback"] else ""
            extra += f" auto timing {v['timing']}" if v["timing"] else ""
            parts.append(f"{k}={v['setup_s']:.1f}s{extra}")
        print(f"  {res['label']}: " + "; ".join(parts))
    ratios = [max(res["ips"][f"{b}/1"] for b in backends) / res["ips"]["textbook/1"] for res in results]
    if ratios:
        print(f"\nfastest backend (1 restart) ÷ textbook over the victim rows: min {min(ratios):.2f}, "
              f"geometric mean {math.exp(statistics.mean(math.log(r) for r in ratios)):.2f}")


if __name__ == "__main__":
    main()
