"""``gradleak audit``'s claims (issue 27), measured:

(a) **portfolio vs best single attack** — on each batch, the audit's per-image worst case over its portfolio,
    run with a budget T, against every attack of that portfolio run alone with the same T (the same budgeted
    engine: iterations fitted to T). T counts CPU seconds by default (``--clock cpu``: the computing thread's
    CPU time, which other processes' load does not change; ``--clock wall`` for wall-clock). Cases: the
    built-in digits / LeNet, and real photographs outside the built-in data (``convnet-imagenet-b4``,
    ``lenet-cifar10-b4``: defaults_vs_peer.py's folders and victims, FedSGD, labels given); checks: the
    portfolio's mean PSNR is within 0.5 dB of, or above, the best single attack's; the portfolio's time is
    within 10 % of T.
(b) **verdicts** — an undefended batch-4 LeNet case → *leaks*; FedCDP at ε = 1 → *no leakage found* with the
    control recognisable; ResNet-18 width 64 at 64×64 with a one-minute budget → *inconclusive*.
(d) **anytime vs the peer** — breaching's InvertGrad traced on ConvNet batch 4 FedSGD with real photographs
    (CPU seconds per iteration, PSNR along its schedule), and the audit's worst case at a few CPU-second
    budgets on the same observation; check: the audit reaches breaching's best traced PSNR within 1/10 of
    breaching's full-schedule time (extrapolated from its constant per-iteration time when not run to the end).
(e) **verdicts on held-out photographs** — the foolbox CIFAR-10 samples with LeNet (defaults_vs_peer.py's folder and
    victim; the client feeds [0, 1] inputs, as Fed-CDP requires), attacked through the captured-upload path
    (``gradleak audit OBS_DIR --truth``; the server holds no labels): undefended → *leaks* or *partial*; FedCDP at ε = 1 → *no leakage found* with the control recognisable.
(c) **successive halving** — InvertGrad with 4 restarts pruned by halving against 4 restarts run to the end and
    one restart, at the same iteration count and thread count (interleaved per batch); checks: 4 pruned
    restarts cost ≤ 2× one restart's wall-clock, and their final PSNR is within 0.5 dB of the 4 full ones
    (mean over ≥ 8 batches).

Printed: markdown tables and ``- check: yes|NO`` lines (exit 1 if any NO). Timings are one torch thread.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _common import positive_int  # noqa: F401  (also puts src/ on the path)


def _cfg(overrides: list[str]):
    from gradleak.config import load_config

    return load_config(None, ["metrics.tagger=none", "attack.name=auto"] + overrides)


CASES = {
    "lenet-digits-b4": ["data.name=digits", "data.channels=1", "data.batch_size=4", "model.name=lenet"],
    "convnet-photos-b4": ["data.name=photos", "data.resolution=32", "data.batch_size=4", "model.name=convnet",
                          "model.options={width: 32}"],
}
#: real photographs outside gradleak's built-in data (benchmarks/defaults_vs_peer.py ``prepare``): the peer
#: benchmark's case — the victim of defaults_vs_peer.VICTIMS, batch 4, FedSGD, labels given, client input
#: normalised with the CIFAR-10 mean/std; batch k = images 4k … 4k+3 of the folder
PHOTO_CASES = {
    "convnet-imagenet-b4": ("fb-imagenet-32", "convnet"),
    "lenet-cifar10-b4": ("fb-cifar10-32", "lenet"),
}


def _portfolio_case(case: str, b: int):
    """(cfg for scoring, observation, victim module, labels the attacks get, private images) of batch ``b``."""
    from gradleak.attacks.labels import recover_labels
    from gradleak.audit import build_case
    from gradleak.case import capture

    if case in PHOTO_CASES:
        import defaults_vs_peer as peer

        folder, victim = PHOTO_CASES[case]
        images = peer.load_images(peer.DEFAULT_CACHE / folder, 32)
        model, x, _, obs = peer.build_case(victim, images, 4, b, "fedsgd", 1, b)
        return _cfg(CASES["lenet-digits-b4"]), obs, obs.build_model(), obs.labels, x
    cfg = _cfg(CASES[case] + [f"seed={b}"])
    case_ = build_case(cfg)
    obs = capture(case_, seed=b)
    model = obs.build_model()
    return cfg, obs, model, recover_labels(obs, model), case_.images


def part_a(case: str, batches: int, budget: float, checks: list, clock: str = "cpu", first: int = 0) -> str:
    """Portfolio worst case vs each of its attacks alone, same budget (``clock``: cpu = CPU seconds of the one
    thread that computes, unaffected by the machine's load; wall = wall-clock)."""
    import torch

    from gradleak.audit import score
    from gradleak.autoaudit import score_portfolio
    from gradleak.portfolio import choose, run_portfolio, situation_of

    rows, port, singles = [], [], {}
    for b in range(first, first + batches):
        cfg, obs, model, labels, images = _portfolio_case(case, b)
        plans = choose(situation_of(obs, model, labels))
        w0 = time.perf_counter()
        run = run_portfolio(obs, plans, labels, model, seconds=budget, seed=b, clock=clock)
        wall = time.perf_counter() - w0
        _, worst = score_portfolio(run, images, cfg)
        p = score(worst["images"], images, cfg)[0].psnr["mean"]
        port.append(p)
        line = {"batch": b, "portfolio": p, "portfolio_s": sum(r.seconds for r in run.runs), "portfolio_wall": wall,
                "race": run.race, "winners": worst["winners"],
                "inside": {r.name: [r.seconds, r.iterations, r.race_rank, r.race_distance,
                                    score(r.reconstruction.images, images, cfg)[0].psnr["mean"]
                                    if r.reconstruction is not None else None] for r in run.runs}}
        for plan in plans:
            w0 = time.perf_counter()
            alone = run_portfolio(obs, [plan], labels, model, seconds=budget, seed=b, clock=clock)
            r = alone.runs[0]
            s = (score(r.reconstruction.images, images, cfg)[0].psnr["mean"]
                 if r.reconstruction is not None and r.reconstruction.images.shape == images.shape else float("nan"))
            singles.setdefault(plan.attack.name, []).append(s)
            line[plan.attack.name] = s
            line[plan.attack.name + "_s"] = r.seconds
            line[plan.attack.name + "_it"] = r.iterations
            line[plan.attack.name + "_wall"] = time.perf_counter() - w0
        rows.append(line)
        print(json.dumps(line, default=str), file=sys.stderr, flush=True)
        torch.manual_seed(0)
    names = list(singles)
    best_name = max(names, key=lambda n: statistics.fmean(singles[n]))
    best = statistics.fmean(singles[best_name])
    mean_p = statistics.fmean(port)
    unit = "CPU s" if clock == "cpu" else "s"
    out = [f"### (a) portfolio vs single attacks — {case}, budget {budget:g} {unit} per run ({clock} clock), "
           f"{batches} batches\n",
           "| batch | portfolio (worst case per image) | inside the portfolio: " + ", ".join(names)
           + " | " + " | ".join(f"{n} alone" for n in names) + " |",
           "|---|---|---|" + "---|" * len(names)]
    for r in rows:
        inside = "; ".join(f"{n}: rank {v[2]}, {v[0]:.0f} {unit}, {v[1]} it, {v[4]:.2f} dB" for n, v in r["inside"].items()
                           if v[4] is not None)
        out.append(f"| {r['batch']} | {r['portfolio']:.2f} dB ({r['portfolio_s']:.0f} {unit}) | {inside} | "
                   + " | ".join(f"{r[n]:.2f} dB ({r[n + '_s']:.0f} {unit}, {r[n + '_it']} it)" for n in names) + " |")
    out.append(f"| mean | {mean_p:.2f} dB | | " + " | ".join(f"{statistics.fmean(singles[n]):.2f} dB" for n in names)
               + " |")
    checks.append((f"(a) {case}: portfolio {mean_p:.2f} dB within 0.5 dB of / above the best single attack "
                   f"({best_name}, {best:.2f} dB)", mean_p >= best - 0.5))
    spent = max(r["portfolio_s"] for r in rows)
    checks.append((f"(a) {case}: the portfolio's time ({spent:.1f} {unit} at most) within 10 % of the budget",
                   spent <= 1.1 * budget))
    return "\n".join(out)


def part_d(batches: int, budgets: list[float], peer_iterations: int, peer_cpu: float, checks: list,
           peer_trace: Path | None = None, first: int = 0) -> str:
    """Anytime quality against the peer: breaching 0.1.2's InvertGrad (its own config, a ``peer_iterations``
    schedule) on ConvNet w16, batch 4, FedSGD, real photographs (fb-imagenet-32; defaults_vs_peer.py's case),
    traced: its candidate's PSNR and CPU seconds at iterations 25, 50, 100, 200, … until ``peer_cpu`` CPU
    seconds (then stopped; its per-iteration time is constant, so the full schedule's time is extrapolated);
    then the audit's portfolio on the same observation with CPU-second ``budgets``. One thread; CPU time of the
    computing thread (``time.thread_time``), which other processes' load does not change.

    ``peer_trace``: a JSON file of breaching's traces (by batch and schedule length), read when it holds the
    batch and written when it did not, so that breaching's run (minutes per batch) is measured once. The
    target is breaching's PSNR at the end of its schedule when it was run to the end (``peer_cpu`` large
    enough), else its best traced PSNR."""
    import defaults_vs_peer as peer
    from gradleak.atomic import atomic_write_text
    from gradleak.audit import score
    from gradleak.autoaudit import score_portfolio
    from gradleak.portfolio import choose, run_portfolio, situation_of

    images = peer.load_images(peer.DEFAULT_CACHE / "fb-imagenet-32", 32)
    cfg = _cfg(CASES["lenet-digits-b4"])
    out = ["### (d) anytime vs breaching's InvertGrad — ConvNet w16, batch 4, FedSGD, fb-imagenet-32, one thread, "
           "CPU seconds\n"]
    cached = json.loads(peer_trace.read_text()) if peer_trace is not None and peer_trace.exists() else {}
    for b in range(first, first + batches):
        model, x, y, obs = peer.build_case("convnet", images, 4, b, "fedsgd", 1, b)
        key = f"{b}/{peer_iterations}"
        trace = [tuple(row) for row in cached.get(key, [])]
        if not trace or (trace[-1][0] < peer_iterations and trace[-1][1] < peer_cpu):
            trace = _trace_peer(peer, model, x, y, obs, b, peer_iterations, peer_cpu)
            if peer_trace is not None:
                cached = json.loads(peer_trace.read_text()) if peer_trace.exists() else {}
                cached[key] = trace
                atomic_write_text(peer_trace, json.dumps(cached, indent=1) + "\n")  # never half-written
        its, used, _ = trace[-1]
        per_it = used / its
        full = per_it * peer_iterations
        ran_out = its >= peer_iterations
        target = trace[-1][2] if ran_out else max(p for _, _, p in trace)
        what = f"PSNR at {peer_iterations} iterations" if ran_out else "best traced PSNR"
        refs = peer.batch_references(images, x, b, 4)
        out.append(f"**batch {b}** — breaching ({peer_iterations}-iteration schedule): "
                   + ", ".join(f"{i} it: {p:.2f} dB ({c:.0f} s)" for i, c, p in trace)
                   + f"; {per_it:.3f} CPU s per iteration → {peer_iterations} iterations ≈ {full:.0f} CPU s "
                   + ("(measured)" if ran_out else "(extrapolated)")
                   + f". References: grey image {refs['grey_psnr']:.2f} dB, best of grey / mean of the other "
                   f"photographs per image {refs['ref_psnr']:.2f} dB\n")
        plans = choose(situation_of(obs, model, obs.labels))
        rows = []
        for T in budgets:
            run = run_portfolio(obs, plans, obs.labels, model, seconds=T, seed=b, clock="cpu")
            _, worst = score_portfolio(run, x, cfg)
            p = score(worst["images"], x, cfg)[0].psnr["mean"]
            rows.append((T, sum(r.seconds for r in run.runs), p))
            print(json.dumps({"batch": b, "budget": T, "psnr": p, "race": run.race}), file=sys.stderr, flush=True)
        out.append(f"| audit budget (CPU s) | used | worst-case PSNR | ≥ breaching's {what} ({target:.2f} dB) |\n"
                   "|---|---|---|---|")
        out.extend(f"| {T:g} | {u:.1f} | {p:.2f} dB | {'yes' if p >= target else 'no'} |" for T, u, p in rows)
        reach = min((T for T, _, p in rows if p >= target), default=None)
        if rows:
            checks.append((f"(d) batch {b}: the audit reaches breaching's {what} ({target:.2f} dB) within 1/10 "
                           f"of breaching's {peer_iterations}-iteration time ({full / 10:.0f} CPU s): "
                           + (f"at {reach:g} CPU s" if reach is not None else "not within the budgets tried"),
                           reach is not None and reach <= full / 10))
        out.append("")
    return "\n".join(out)


def _trace_peer(peer, model, x, y, obs, b: int, peer_iterations: int, peer_cpu: float) -> list:
    """breaching's InvertGrad on one batch, its candidate's (iteration, CPU s, PSNR) at 25·2^k iterations, at
    the end of its schedule and when ``peer_cpu`` CPU seconds are spent (it is stopped there)."""
    import torch

    from gradleak.metrics import score_images

    import _peer_shim  # noqa: F401
    from breaching.attacks.optimization_based_attack import OptimizationBasedAttacker

    marks, trace = {25 * 2 ** k for k in range(12)} | {peer_iterations}, []
    orig = OptimizationBasedAttacker._init_optimizer
    c0 = [0.0]

    def init(self, params, _orig=orig):
        opt, sched = _orig(self, params)
        cand, step, count = params[0], sched.step, [0]

        def stepped(*a, **k):
            step(*a, **k)
            count[0] += 1
            used = time.thread_time() - c0[0]
            if count[0] in marks or used >= peer_cpu:
                m = torch.tensor(peer.CIFAR_MEAN)[None, :, None, None]
                sd = torch.tensor(peer.CIFAR_STD)[None, :, None, None]
                imgs = (cand.detach() * sd + m).clamp(0, 1)
                trace.append((count[0], used, score_images(imgs, x)["psnr"]["mean"]))
                print(json.dumps({"peer_iteration": count[0], "cpu": used, "psnr": trace[-1][2]}), file=sys.stderr,
                      flush=True)
            if used >= peer_cpu:
                raise KeyboardInterrupt  # breaching ends the trial there and returns its best candidate

        sched.step = stepped
        return opt, sched

    OptimizationBasedAttacker._init_optimizer = init
    try:
        c0[0] = time.thread_time()
        peer.run_peer(peer_iterations, model, obs, x, y, "fedsgd", b)
    finally:
        OptimizationBasedAttacker._init_optimizer = orig
    return trace


VERDICT_CASES = [
    ("undefended LeNet, digits, batch 4", ["data.name=digits", "data.channels=1", "data.batch_size=4",
                                           "model.name=lenet"], "leaks", None),
    ("FedCDP ε = 1, LeNet, digits, batch 4", ["data.name=digits", "data.channels=1", "data.batch_size=4",
                                              "model.name=lenet", "defense=[{name: fedcdp, epsilon: 1.0}]"],
     "no leakage found", "recognisable"),
    ("ResNet-18 width 64, photos 64×64, batch 4, 1 min", ["data.name=photos", "data.resolution=64",
                                                          "data.batch_size=4", "model.name=resnet18",
                                                          "model.options={width: 64}"], "inconclusive", None),
]


def part_b(budget: float, checks: list, only: str | None = None) -> str:
    from gradleak.autoaudit import audit_auto

    out = [f"### (b) verdicts (budget {budget:g} s each; the ResNet case 60 s)\n",
           "(the worst-case PSNR and the control as in the report; 'attacks' lists the iterations each ran)\n",
           "| case | verdict | worst-case PSNR | control | wall-clock | attacks (iterations) |", "|---|---|---|---|---|---|"]
    for name, over, want, want_control in VERDICT_CASES:
        if only and only not in name:
            continue
        b = 60.0 if "ResNet" in name else budget
        t0 = time.perf_counter()
        res = audit_auto(_cfg(over), f"{b}s")
        took = time.perf_counter() - t0
        a = res.audit
        ctl = a.control
        ctl_text = (ctl.skipped or f"{ctl.level} ({ctl.psnr or float('nan'):.2f} dB, batch {ctl.batch})") if ctl else "–"
        atk = ", ".join(f"{r.name} ({r.iterations})" for r in a.attacks)
        out.append(f"| {name} | {a.verdict} | {res.scores.psnr['mean']:.2f} dB | {ctl_text} | {took:.0f} s of "
                   f"{b:g} s | {atk} |")
        ok = a.verdict == want and (want_control is None or (ctl is not None and ctl.level == want_control))
        checks.append((f"(b) {name}: {a.verdict} (want {want}"
                       + (f", control {want_control}" if want_control else "") + ")", ok))
        checks.append((f"(b) {name}: wall-clock {took:.1f} s within 10 % of the {b:g} s budget", took <= 1.1 * b))
    return "\n".join(out)


#: (e) held-out photographs: (name, defense chain, the verdict wanted, the control level wanted)
PHOTO_VERDICTS = [
    ("undefended", [], ("leaks", "partial"), None),
    ("FedCDP ε = 1", [{"name": "fedcdp", "epsilon": 1.0}], ("no leakage found",), "recognisable"),
]


def part_e(batches: int, budget: float, checks: list, case: str = "lenet-cifar10-b4") -> str:
    """Verdicts on real photographs outside the built-in data (``PHOTO_CASES``), through the captured-upload
    path (:func:`gradleak.autoaudit.audit_loaded`, what ``gradleak audit OBS_DIR --truth`` runs: the control is
    built from the observation's own model and protocol): undefended → leaks or partial; FedCDP ε = 1 → no
    leakage found with the control recognisable. Per batch k: images 4k … 4k+3, seed k."""
    import dataclasses

    import defaults_vs_peer as peer

    import gradleak as gl
    from gradleak.autoaudit import audit_loaded
    from gradleak.defenses import build_defenses

    folder, victim = PHOTO_CASES[case]
    images = peer.load_images(peer.DEFAULT_CACHE / folder, 32)
    out = [f"### (e) verdicts on held-out photographs — {case} ({folder}), FedSGD, captured-upload path, budget "
           f"{budget:g} s each\n",
           "| batch | defense | verdict | worst-case PSNR (grey) | control | wall-clock | attacks (iterations) |",
           "|---|---|---|---|---|---|---|"]
    for b in range(batches):
        for name, chain, want, want_control in PHOTO_VERDICTS:
            model, x, y, plain = peer.build_case(victim, images, 4, b, "fedsgd", 1, b)
            protocol = dataclasses.replace(plain.protocol, mean=None, std=None)  # Fed-CDP: plain SGD on [0, 1] inputs
            case_ = gl.Case(model, x, y, protocol, build_defenses(chain), model.gradleak_spec, give_labels=False)
            obs = dataclasses.replace(gl.capture(case_, seed=b), labels=None)  # the server holds no labels
            t0 = time.perf_counter()
            res = audit_loaded(obs, x, y, f"{budget}s", seed=b)
            took = time.perf_counter() - t0
            a, ctl = res.audit, res.audit.control
            ctl_text = (ctl.skipped or f"{ctl.level} ({ctl.psnr or float('nan'):.2f} dB, batch {ctl.batch})") if ctl else "–"
            grey = statistics.fmean(res.calibration.reference["grey"]["psnr"])
            out.append(f"| {b} | {name} | {a.verdict} | {res.scores.psnr['mean']:.2f} dB ({grey:.2f}) | {ctl_text} | "
                       f"{took:.0f} s | {', '.join(f'{r.name} ({r.iterations})' for r in a.attacks)} |")
            ok = a.verdict in want and (want_control is None or (ctl is not None and ctl.level == want_control))
            checks.append((f"(e) batch {b}, {name}: {a.verdict} (want {' or '.join(want)}"
                           + (f", control {want_control}" if want_control else "") + ")", ok))
            print(out[-1], file=sys.stderr, flush=True)
    return "\n".join(out)


def part_c(batches: int, iterations: int, checks: list) -> str:
    """Successive halving: 4 pruned restarts vs 4 full vs 1, InvertGrad, same iterations."""
    from gradleak.attacks import build_attack
    from gradleak.attacks.budget import Budget, budgeted
    from gradleak.audit import build_case, score
    from gradleak.case import capture

    rows = []
    for b in range(batches):
        cfg = _cfg(CASES["lenet-digits-b4"][:2] + ["data.batch_size=2", "model.name=lenet", f"seed={b}"])
        case_ = build_case(cfg)
        case_.give_labels = True
        obs = capture(case_, seed=b)
        line = {"batch": b}
        for key, restarts, halving in (("one", 1, False), ("halving", 4, True), ("full", 4, False)):
            atk = build_attack("invertgrad", restarts=restarts, iterations=iterations)
            t0 = time.perf_counter()
            with budgeted(Budget(iterations=iterations, halving=halving, plateau=None)):
                rec = atk(obs, obs.labels, seed=b, progress=False)
            line[key + "_s"] = time.perf_counter() - t0
            line[key] = score(rec.images, case_.images, cfg)[0].psnr["mean"]
        rows.append(line)
        print(json.dumps(line), file=sys.stderr, flush=True)
    mean = {k: statistics.fmean(r[k] for r in rows) for k in ("one", "halving", "full", "one_s", "halving_s",
                                                               "full_s")}
    out = [f"### (c) successive halving — InvertGrad, LeNet, digits, batch 2, {iterations} iterations, "
           f"{batches} batches\n",
           "| batch | 1 restart | 4 restarts, halving | 4 restarts to the end |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['batch']} | {r['one']:.2f} dB, {r['one_s']:.1f} s | {r['halving']:.2f} dB, "
                   f"{r['halving_s']:.1f} s | {r['full']:.2f} dB, {r['full_s']:.1f} s |")
    out.append(f"| mean | {mean['one']:.2f} dB, {mean['one_s']:.1f} s | {mean['halving']:.2f} dB, "
               f"{mean['halving_s']:.1f} s | {mean['full']:.2f} dB, {mean['full_s']:.1f} s |")
    ratio = mean["halving_s"] / mean["one_s"]
    checks.append((f"(c) 4 restarts with halving cost {ratio:.2f}× one restart (≤ 2×)", ratio <= 2.0))
    gap = mean["full"] - mean["halving"]
    checks.append((f"(c) halving's PSNR {mean['halving']:.2f} dB is within 0.5 dB of all 4 to the end "
                   f"({mean['full']:.2f} dB)", gap <= 0.5))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="a,b,c", help="which parts to run: a, b, c, d, e (comma-separated; d needs "
                    "breaching 0.1.2 and defaults_vs_peer.py's photographs, e those photographs)")
    ap.add_argument("--batches", type=positive_int, default=4, help="(a) batches per case")
    ap.add_argument("--first", type=int, default=0, help="(a) the first batch's index")
    ap.add_argument("--budget", type=float, default=30.0, help="(a) seconds per run; (b) seconds per audit")
    ap.add_argument("--cases", default="lenet-digits-b4",
                    help=f"(a) cases: {', '.join(list(CASES) + list(PHOTO_CASES))}")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="(a) what the budget counts: cpu = CPU seconds of the computing thread (default: "
                         "unaffected by the machine's load), wall = wall-clock")
    ap.add_argument("--verdicts", default=None, help="(b) only the cases whose name contains this")
    ap.add_argument("--halving-batches", type=positive_int, default=8, help="(c) batches")
    ap.add_argument("--iterations", type=positive_int, default=200, help="(c) iterations per run")
    ap.add_argument("--workers", type=int, default=1, help="unused (one process, one thread: timings compare)")
    ap.add_argument("--peer-iterations", type=positive_int, default=2000, help="(d) breaching's schedule length")
    ap.add_argument("--peer-cpu", type=float, default=300.0, help="(d) CPU seconds breaching is traced for")
    ap.add_argument("--audit-budgets", default="10,20,40",
                    help="(d) the audit's CPU-second budgets (empty: only trace breaching)")
    ap.add_argument("--peer-trace", type=Path, default=None,
                    help="(d) JSON file of breaching's traces: read when it holds a batch, else measured and added")
    ap.add_argument("--out", type=Path, default=None, help="write the tables here (markdown)")
    args = ap.parse_args(argv)
    if args.peer_trace is not None and args.peer_trace.exists():
        try:
            ok = isinstance(json.loads(args.peer_trace.read_text()), dict)
        except (OSError, ValueError):
            ok = False
        if not ok:
            ap.error(f"argument --peer-trace: got {str(args.peer_trace)!r}, which is not a JSON object of traces; "
                     "allowed: a file this option wrote, or a path that does not exist yet")
    import torch

    torch.set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # one-off imports before any timing
    parts, checks, text = set(args.parts.split(",")), [], []
    if "a" in parts:
        for case in args.cases.split(","):
            if case not in CASES and case not in PHOTO_CASES:
                ap.error(f"argument --cases: got {case!r}; allowed: {', '.join(list(CASES) + list(PHOTO_CASES))}")
            text.append(part_a(case, args.batches, args.budget, checks, args.clock, args.first))
    if "b" in parts:
        text.append(part_b(args.budget, checks, args.verdicts))
    if "c" in parts:
        text.append(part_c(args.halving_batches, args.iterations, checks))
    if "e" in parts:
        text.append(part_e(args.batches, args.budget, checks))
    if "d" in parts:
        text.append(part_d(args.batches, [float(v) for v in args.audit_budgets.split(",") if v],
                           args.peer_iterations, args.peer_cpu, checks, args.peer_trace, args.first))
    body = "\n\n".join(text) + "\n\n" + "\n".join(f"- {c}: {'yes' if ok else 'NO'}" for c, ok in checks)
    print(body)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(body + "\n")
    return 1 if any(not ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
