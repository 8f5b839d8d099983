#!/usr/bin/env python3
"""Leakage across a whole Flower run, a client-side guard, and what the secure aggregate leaves (docs/whole_run.md).

1. A Flower run (FedAvg, ``--clients`` SuperNodes × ``--images`` private photographs each — gradleak's built-in
   ``photos``, 32×32 RGB, private split, distinct labels within a client — ``--rounds`` rounds, LeNet, plain
   PyTorch SGD clients) wrapped in :class:`gradleak.integrations.flower.GradleakCapture`: every client's upload
   in every round and every round's aggregate (a secure-aggregation Observation of the round's clients) are
   saved; the global model is evaluated centrally after every round on the private photos no client holds.
2. ``gradleak audit-run`` over the captures with the clients' true images and the public photos as references:
   worst-case PSNR and verdict against round per client and for the aggregate (``OUT/audit/audit_run.html``).
3. The same run with :class:`~gradleak.integrations.flower.LeakageGuard` on every client (``--guard-policy``,
   default ``protect``): what it decided for each update and the round's test accuracy with and without it.

    PYTHONPATH=src python examples/flower/whole_run.py --out runs/flower-whole
    PYTHONPATH=src python examples/flower/whole_run.py --out /tmp/w --rounds 2 --clients 2 --iterations 3

``--engine inprocess`` (default) runs Flower's ServerApp / FedAvg / ClientApp / mods with the messages handed over
in this process (``examples/flower/run.py``'s grid); ``--engine ray`` runs Flower's simulation engine.
Prints a summary and writes ``OUT/results.json``. Needs ``pip install gradleak[flower]``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # noqa: E402  (examples/flower/run.py: the in-process grid, argument types)

import gradleak as gl  # noqa: E402
from gradleak.atomic import atomic_write_json  # noqa: E402

SPEC = {"name": "lenet", "num_classes": 12, "in_channels": 3, "resolution": 32, "options": {}}


def partitions(clients: int, images: int, seed: int):
    """Disjoint private batches (distinct labels within a client) and the held-out rest (the test set)."""
    data = gl.load_dataset("photos", split="private", resolution=32, channels=3)
    parts, used = base.split_clients(data, clients, images, seed)
    rest = torch.tensor([i for i in range(len(data)) if i not in used])
    return parts, (data.images[rest], data.labels[rest])


def initial_model(seed: int) -> torch.nn.Module:
    return base.initial_model(seed, SPEC)


def pretrained_model(seed: int, epochs: int, lr: float, server_data) -> torch.nn.Module:
    """The federation's starting point: ``initial_model(seed)`` trained centrally for ``epochs`` on the server's own
    labelled photographs (held-out private photographs that neither a client nor the test set holds), so that the
    rounds' test accuracy, and what the guard's noise costs, can be measured above chance."""
    model = initial_model(seed)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(server_data[0].shape[0], generator=g)
        base.local_training(model, server_data[0][perm], server_data[1][perm], lr, 1, 8)
    return model


def protocol_from_config(server_round, node_id, config) -> gl.Protocol:
    return gl.Protocol(kind="fedavg", lr=float(config["lr"]), epochs=int(config["local-epochs"]),
                       local_batch_size=int(config["batch-size"]))


def simulate(out: Path, parts, test, args, guard=None, server_data=None) -> list[float]:
    """One Flower run captured under ``out``; returns the central test accuracy after each round."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg

    from gradleak.integrations.flower import GradleakCapture

    n = len(parts)
    accuracy: list[float] = []
    server = ServerApp()

    def evaluate(server_round, arrays):
        model = initial_model(0)
        model.load_state_dict(arrays.to_torch_state_dict())
        with torch.no_grad():
            acc = float((model.eval()(test[0]).argmax(1) == test[1]).float().mean())
        if server_round > 0:
            accuracy.append(acc)
        return MetricRecord({"accuracy": acc})

    @server.main()
    def main(grid, context):
        strategy = GradleakCapture(FedAvg(fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n), out,
                                   SPEC, protocol_from_config)
        start = pretrained_model(args.seed, args.pretrain_epochs, args.lr, server_data)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(start.state_dict()),
                       num_rounds=args.rounds, evaluate_fn=evaluate,
                       train_config=ConfigRecord({"lr": args.lr, "local-epochs": args.epochs,
                                                  "batch-size": args.batch_size}))

    base.run_apps(server, base.make_client_app(parts, None, [guard] if guard is not None else [], SPEC), n,
                  args.seed, args.engine)
    return accuracy


def guard_rows(captures: Path, pid_of: dict) -> list[dict]:
    """What the guard decided for every update, as the server received it: the guard's metrics in each reply
    that was sent, the JSON reason of each blocked one (read from the capture index; works on any engine)."""
    import json

    from gradleak.integrations.flower import DECISIONS, load_index

    names, levels, rows = {v: k for k, v in DECISIONS.items()}, ("none", "partial", "recognisable"), []
    for e in load_index(captures):
        if e["kind"] == "client":
            scores = e["metrics"]
            decision = names[int(scores["gradleak-guard-decision"])]
        elif e["kind"] == "error" and "gradleak guard" in str(e.get("reason")):
            entry = json.loads(e["reason"].split(": ", 1)[1])
            scores, decision = entry["scores"], entry["decision"]
        else:
            continue
        pid = e["metrics"].get("partition-id") if e["kind"] == "client" else pid_of.get(str(e["node_id"]))
        rows.append({"round": e["round"], "partition": pid, "decision": decision,
                     "verdict_before": levels[int(scores["gradleak-guard-verdict-before"])],
                     "verdict": levels[int(scores["gradleak-guard-verdict"])],
                     "psnr_worst_before": scores["gradleak-guard-psnr-worst-before"],
                     "psnr_worst_after": scores["gradleak-guard-psnr-worst"],
                     "reference_psnr": scores["gradleak-guard-reference-psnr"],
                     "noise": scores["gradleak-guard-noise"]})
    return sorted(rows, key=lambda r: (r["round"], r["partition"] if r["partition"] is not None else -1))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--clients", type=base.positive_int, default=4)
    ap.add_argument("--images", type=base.positive_int, default=1, help="private photographs per client")
    ap.add_argument("--rounds", type=base.positive_int, default=5)
    ap.add_argument("--lr", type=base.positive_float, default=0.05)
    ap.add_argument("--epochs", type=base.positive_int, default=1)
    ap.add_argument("--batch-size", type=base.positive_int, default=1)
    ap.add_argument("--attack", choices=("dlg", "invertgrad", "auto"), default="dlg",
                    help="the measurement: one attack at --iterations, or the trusted audit (auto) under --budget-per-update")
    ap.add_argument("--iterations", type=base.positive_int, default=40, help="attack iterations per measurement")
    ap.add_argument("--budget-per-update", type=base.positive_float, default=None,
                    help="seconds per measurement for --attack auto")
    ap.add_argument("--pretrain-epochs", type=int, default=0,
                    help="train the starting model first on half of the photos no client holds (0: random start)")
    ap.add_argument("--guard-policy", choices=("protect", "block", "report"), default="protect")
    ap.add_argument("--workers", type=base.positive_int, default=1, help="audit-run processes")
    ap.add_argument("--engine", choices=("inprocess", "ray"), default="inprocess")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.attack == "auto" and args.budget_per_update is None:
        ap.error("argument --budget-per-update: got nothing; allowed: seconds per measurement, with --attack auto")
    if args.images % args.batch_size:
        ap.error(f"argument --batch-size: got {args.batch_size}; allowed: a divisor of --images ({args.images})")
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from gradleak.experiments.audit_run import audit_run
    from gradleak.integrations.flower import LeakageGuard, load_index

    parts, rest = partitions(args.clients, args.images, args.seed)
    # the photos no client holds: the server's own labelled half (for --pretrain-epochs) and the test half
    order = torch.randperm(rest[0].shape[0], generator=torch.Generator().manual_seed(args.seed + 1))
    half = order.shape[0] // 2 if args.pretrain_epochs else 0
    server_data = (rest[0][order[:half]], rest[1][order[:half]])
    test = (rest[0][order[half:]], rest[1][order[half:]])
    (args.out / "clients").mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "test_images": int(test[0].shape[0]), "server_images": int(server_data[0].shape[0])}
    t0 = time.time()
    results["accuracy_plain"] = simulate(args.out / "plain", parts, test, args, server_data=server_data)
    results["plain_s"] = round(time.time() - t0, 1)
    # the truth map audit-run reads: node id -> the client's images (node ids from the capture index)
    nodes = {e["metrics"]["partition-id"]: e["node_id"] for e in load_index(args.out / "plain") if e["kind"] == "client"}
    lines = []
    for pid, (x, y) in enumerate(parts):
        save_file({"images": x.contiguous(), "labels": y.contiguous()}, str(args.out / "clients" / f"partition-{pid}.safetensors"))
        lines.append(f"{nodes[pid]}: clients/partition-{pid}.safetensors")
    (args.out / "truth.yaml").write_text("\n".join(lines) + "\n")

    t0 = time.time()
    options = {} if args.attack == "auto" else {"iterations": args.iterations}
    run = audit_run(args.out / "plain", args.out / "audit", args.budget_per_update, args.out / "truth.yaml",
                    workers=args.workers, attack=args.attack, options=options, progress=True, public="photos:public")
    results["audit_s"] = round(time.time() - t0, 1)
    pid_of = {str(v): k for k, v in nodes.items()}
    results["audit"] = [{k: r.get(k) for k in ("round", "kind", "node_id", "num_images", "psnr_worst",
                                                  "reference_psnr", "dpsnr_max", "verdict", "seconds")}
                        | {"partition": pid_of.get(str(r["node_id"]))} for r in run.rows]

    public = gl.load_dataset("photos", split="public", resolution=32, channels=3)  # the server's public data
    guard = LeakageGuard(SPEC, protocol_from_config, lambda msg, ctx: parts[int(ctx.node_config["partition-id"])],
                         policy=args.guard_policy, attack=args.attack, attack_options=options,
                         budget_s=args.budget_per_update,
                         seed=args.seed, public=(public.images, public.labels))
    t0 = time.time()
    results["accuracy_guarded"] = simulate(args.out / "guarded", parts, test, args, guard=guard, server_data=server_data)
    results["guarded_s"] = round(time.time() - t0, 1)
    results["guard"] = guard_rows(args.out / "guarded", pid_of)
    atomic_write_json(args.out / "results.json", results)

    measure = (f"trusted audit, {args.budget_per_update:g} s per update" if args.attack == "auto"
               else f"{args.attack} {args.iterations} iterations")
    print(f"\nFlower FedAvg, {args.clients} clients × {args.images} photo(s), {args.rounds} rounds, start "
          f"pretrained {args.pretrain_epochs} epoch(s) on {results['server_images']} server photos; "
          f"{measure}, labels given; test set "
          f"{results['test_images']} held-out photos")
    print("| round | partition | kind | worst-case PSNR | best reference | verdict |\n|---:|---:|---|---:|---:|---|")
    for r in results["audit"]:
        print(f"| {r['round']} | {r['partition'] if r['partition'] is not None else '–'} | {r['kind']} | "
              f"{r['psnr_worst']:.2f} | {r['reference_psnr']:.2f} | {r['verdict']} |" if r["psnr_worst"] is not None
              else f"| {r['round']} | – | {r['kind']} | – | – | error |")
    print(f"\nguard ({args.guard_policy}):\n| round | partition | decision | verdict before → after | worst-case PSNR "
          "before → after | noise r |\n|---:|---:|---|---|---|---:|")
    for d in results["guard"]:
        print(f"| {d['round']} | {d['partition']} | {d['decision']} | {d['verdict_before']} → {d['verdict']} | "
              f"{d['psnr_worst_before']:.2f} → {d['psnr_worst_after']:.2f} | {d['noise']:g} |")
    print("\n| round | test accuracy without guard | with guard |\n|---:|---:|---:|")
    for i, (a, b) in enumerate(zip(results["accuracy_plain"], results["accuracy_guarded"]), 1):
        print(f"| {i} | {a:.3f} | {b:.3f} |")
    print(f"\nsimulation {results['plain_s']} s, audit-run {results['audit_s']} s, guarded simulation "
          f"{results['guarded_s']} s; page: {args.out / 'audit' / 'audit_run.html'}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
