#!/usr/bin/env python3
"""Audit a Flower deployment end to end: what does an honest-but-curious Flower server see?

1. A real Flower run on Flower's simulation engine (``flwr.simulation.run_simulation``, Ray backend, CPU):
   ``--clients`` SuperNodes, each holding its own ``--images`` private digits (distinct labels, disjoint
   between clients); every sampled client trains the global LeNet locally with a plain PyTorch loop
   (``torch.optim.SGD``, lr / epochs / batch size sent by the server in the train config) and replies with
   its new weights. The server runs Flower's ``FedAvg`` wrapped in
   :class:`gradleak.integrations.flower.GradleakCapture`, which saves every client's upload in every round
   as a gradleak Observation under ``OUT/plain/``.
2. One captured client is attacked from its Observation alone (``Observation.load``; labels recovered
   from the update, as the server is not given them) with InvertGrad, and scored against that client's
   true images and against the no-information reference (every pixel 0.5).
3. The same with Flower's central DP, ``DifferentialPrivacyClientSideFixedClipping`` (clients clip with
   ``fixedclipping_mod``, the server adds Gaussian noise σ = z·C / K to the aggregate) at the stated
   ``--dp-noise`` z and ``--dp-clip`` C, one client per round (K = 1: client 0 alone): the attack on the
   client's upload as the server receives it, and on the noised aggregate the server releases.

    PYTHONPATH=src python examples/flower/run.py --out runs/flower
    PYTHONPATH=src python examples/flower/run.py --out /tmp/f --rounds 1 --clients 2 --images 1 --iterations 50 --no-dp

Prints one line per attacked capture (and a ``gradleak attack`` command line doing the same on the first
capture) and writes ``OUT/results.json``; ``OUT/clients/partition-P.safetensors`` hold each client's true
images and labels (the ``--truth`` of ``gradleak attack``). Needs ``pip install gradleak[flower]``
and Ray (``flwr[simulation]``).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gradleak as gl
from gradleak.atomic import atomic_write_json
from gradleak.integrations.flower import load_index

SPEC = {"name": "lenet", "num_classes": 10, "in_channels": 1, "resolution": 32, "options": {}}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {text}; allowed: integer >= 1")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"got {text}; allowed: number > 0")
    return value


def partitions(clients: int, images: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Disjoint private batches, distinct labels within each client (digits, private split, 32×32, 1 ch)."""
    return split_clients(gl.load_dataset("digits", split="private", resolution=32, channels=1), clients, images,
                         seed)[0]


def split_clients(data, clients: int, images: int, seed: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                                                       set[int]]:
    """``clients`` disjoint batches of ``images`` from ``data`` (distinct labels within each, drawn in a seeded
    order), and the indices they used."""
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    used: set[int] = set()
    parts = []
    for _ in range(clients):
        chosen, labels = [], set()
        for i in perm:
            if i not in used and int(data.labels[i]) not in labels:
                chosen.append(i)
                labels.add(int(data.labels[i]))
                used.add(i)
                if len(chosen) == images:
                    break
        idx = torch.tensor(chosen)
        parts.append((data.images[idx].clone(), data.labels[idx].clone()))
    return parts, used


def initial_model(seed: int, spec: dict = SPEC) -> torch.nn.Module:
    model = gl.build_model(spec["name"], spec["num_classes"], spec["in_channels"], spec["resolution"])
    gl.init_model(model, seed)
    return model


def local_training(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, epochs: int,
                   batch_size: int) -> float:
    """The client's own training: plain PyTorch, in-order mini-batches, ``torch.optim.SGD``."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    loss = torch.zeros(())
    for _ in range(epochs):
        for i in range(0, x.shape[0], batch_size):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[i:i + batch_size]), y[i:i + batch_size])
            loss.backward()
            opt.step()
    return float(loss.detach())


def run_apps(server, client, n: int, seed: int, engine: str) -> None:
    """Run Flower's ``server`` ServerApp with ``n`` SuperNodes of ``client``: in this process (``inprocess``, the
    messages handed over by :func:`in_process_grid`) or on Flower's simulation engine (``ray``)."""
    if engine == "inprocess":
        from flwr.app import Context, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        # what Flower's runtime sets for the ServerApp process (flwr/server/compat/app.py does the same)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
        server(in_process_grid(client, n, seed),
               Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
        return
    import signal

    from flwr.simulation import run_simulation

    # Flower's entry points may register their own SIGINT/SIGTERM/SIGQUIT handlers (flwr.supercore.exit) and do
    # not put the previous ones back; restore the caller's, so Ctrl-C means KeyboardInterrupt again afterwards
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)}
    try:
        run_simulation(server_app=server, client_app=client, num_supernodes=n,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": 1, "logging_level": logging.ERROR,
                                                     "log_to_driver": False}})
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def make_client_app(parts, truth_dir: str | None, mods=(), spec: dict = SPEC):
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg, context):
        torch.set_num_threads(1)
        pid = int(context.node_config["partition-id"])
        x, y = parts[pid]
        cfg = msg.content["config"]
        model = initial_model(0, spec)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        loss = local_training(model, x, y, float(cfg["lr"]), int(cfg["local-epochs"]), int(cfg["batch-size"]))
        if truth_dir:  # the client's own θ_0 − θ_τ, for the test that the capture equals it exactly
            from safetensors.torch import save_file

            path = Path(truth_dir) / f"round-{int(cfg['server-round']):03d}" / f"partition-{pid}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: (before[k] - v.detach()).contiguous() for k, v in model.named_parameters()}, str(path))
        metrics = MetricRecord({"train-loss": loss, "num-examples": int(x.shape[0]), "partition-id": pid})
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)

    return app


def in_process_grid(client_app, num_nodes: int, seed: int = 0):
    """A Flower ``Grid`` that hands each Message to ``client_app`` in this process (a deep copy, as a
    transport would deliver it) — Flower's ServerApp, strategies, ClientApp and mods, without the Ray
    transport of the simulation engine. For quick checks and tests (``--engine inprocess``)."""
    import copy
    import random
    from uuid import uuid4

    from flwr.app import Context, Message, RecordDict
    from flwr.serverapp import Grid

    rng = random.Random(seed)
    nodes = {rng.getrandbits(63) + 1: pid for pid in range(num_nodes)}

    class InProcessGrid(Grid):
        def __init__(self):
            self._run = None
            self.contexts = {nid: Context(run_id=1, node_id=nid, state=RecordDict(), run_config={},
                                          node_config={"partition-id": pid, "num-partitions": num_nodes})
                             for nid, pid in nodes.items()}

        def set_run(self, run):
            self._run = run

        @property
        def run(self):
            return self._run

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self):
            return list(nodes)

        def push_messages(self, messages):
            raise NotImplementedError("InProcessGrid delivers through send_and_receive only")

        def pull_messages(self, message_ids):
            raise NotImplementedError("InProcessGrid delivers through send_and_receive only")

        def send_and_receive(self, messages, *, timeout=None):
            replies = []
            for msg in messages:
                msg.metadata.__dict__["_message_id"] = str(uuid4())
                reply = client_app(copy.deepcopy(msg), self.contexts[msg.metadata.dst_node_id])
                reply.metadata.__dict__["_message_id"] = str(uuid4())
                replies.append(copy.deepcopy(reply))
            return replies

    return InProcessGrid()


def protocol_from_config(server_round: int, node_id: int, config: dict) -> gl.Protocol:
    """The clients' protocol as the server knows it: the train config it sent (sequential mini-batches)."""
    return gl.Protocol(kind="fedavg", lr=float(config["lr"]), epochs=int(config["local-epochs"]),
                       local_batch_size=int(config["batch-size"]))


def local_dp_sigma(args) -> float:
    """LocalDpMod's Gaussian-mechanism σ = Δ₂·√(2 ln(1.25/δ)) / ε, with sensitivity Δ₂ = C here."""
    return args.dp_clip * math.sqrt(2 * math.log(1.25 / args.local_dp_delta)) / args.local_dp_epsilon


def simulate(out: Path, parts, args, mode: str = "plain", truth_dir: str | None = None) -> None:
    """One Flower simulation; every train reply is captured under ``out``. ``mode``: ``plain`` (FedAvg, all
    clients), ``central-dp`` (DifferentialPrivacyClientSideFixedClipping + fixedclipping_mod, K = 1) or
    ``local-dp`` (FedAvg, all clients, each with LocalDpMod)."""
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

    from gradleak.integrations.flower import GradleakCapture

    n = len(parts)
    sampled = 1 if mode == "central-dp" else n
    server = ServerApp()
    # what the server knows was done to the uploads, for the attacker (gradleak describe() form)
    clip = [{"name": "clip", "max_norm": args.dp_clip, "scope": "global", "source": "flwr clipping (FlatClip)"}]
    defenses, aggregate_defenses, mods = [], [], []
    if mode == "central-dp":  # clients clip Δ to C; the aggregate of K = 1 client gets noise σ = z·C / K
        defenses, mods = clip, [fixedclipping_mod]
        aggregate_defenses = clip + [{"name": "noise", "sigma": args.dp_noise * args.dp_clip / sampled,
                                      "scope": "global", "source": "flwr DifferentialPrivacyClientSideFixedClipping"}]
    elif mode == "local-dp":  # clients clip Δ to C and add noise σ before uploading
        defenses = clip + [{"name": "noise", "sigma": local_dp_sigma(args), "scope": "global",
                            "source": "flwr LocalDpMod"}]
        mods = [LocalDpMod(clipping_norm=args.dp_clip, sensitivity=args.dp_clip, epsilon=args.local_dp_epsilon,
                           delta=args.local_dp_delta)]

    @server.main()
    def main(grid, context):
        strategy = FedAvg(fraction_train=sampled / n, fraction_evaluate=0.0, min_train_nodes=sampled,
                          min_available_nodes=n)
        if mode == "central-dp":
            strategy = DifferentialPrivacyClientSideFixedClipping(
                strategy, noise_multiplier=args.dp_noise, clipping_norm=args.dp_clip, num_sampled_clients=sampled)
        capture = GradleakCapture(strategy, out, SPEC, protocol_from_config, defenses=defenses,
                                  aggregate_defenses=aggregate_defenses)
        config = ConfigRecord({"lr": args.lr, "local-epochs": args.epochs, "batch-size": args.batch_size})
        capture.start(grid=grid, initial_arrays=ArrayRecord(initial_model(args.seed).state_dict()),
                      num_rounds=args.rounds if mode == "plain" else args.dp_rounds, train_config=config)

    run_apps(server, make_client_app(parts, truth_dir, mods=mods), n, args.seed, args.engine)


def flat_clip(max_norm: float):
    """The attacker's model of Flower's clipping (``flwr.supercore.differential_privacy.clip_inputs_inplace``,
    the FlatClip of McMahan et al., 2018): Δ · min(1, C / ‖Δ‖₂) over all arrays, per restart."""
    def view(trial: list[torch.Tensor]) -> list[torch.Tensor]:
        norm = torch.sqrt(sum((t.flatten(1) ** 2).sum(1) for t in trial))
        scale = torch.clamp(max_norm / norm, max=1.0)
        return [t * scale.view(-1, *[1] * (t.dim() - 1)) for t in trial]
    return view


def attack(path: Path, truth, args, name: str) -> dict:
    """Reconstruct a captured client's images from its Observation alone (labels recovered from the update,
    a clip the server knows of modelled); score against the true images and the 0.5-grey reference."""
    obs = gl.Observation.load(path)
    model = obs.build_model()
    x, y = truth
    labels = gl.recover_labels(obs, model) if args.labels == "recover" else y
    t0 = time.time()
    method = gl.build_attack(args.attack, iterations=args.iterations, restarts=args.restarts)
    objective = method.objective(obs)
    clip = next((d for d in obs.defenses if d.get("name") == "clip"), None)
    if clip is not None:
        objective.trial_view = flat_clip(float(clip["max_norm"]))
    rec = gl.search(obs, method.stages(), objective, labels, restarts=args.restarts, seed=args.seed, model=model,
                    progress=False, name=args.attack)
    scores = gl.score_images(rec.images, x)
    gl.reconstruction_grid(x, gl.apply_match(rec.images, scores["order"]), None, args.out / f"{name}.png")
    grey = gl.score_images(torch.full_like(x, 0.5), x)
    norm = float(torch.sqrt(sum((u.double() ** 2).sum() for u in obs.update.values())))
    return {"capture": str(path), "images": obs.num_images, "update_norm": norm,
            "label_accuracy": gl.label_accuracy(labels, y), "psnr": scores["psnr"]["mean"],
            "psnr_per_image": scores["psnr"]["per_image"], "ssim": scores["ssim"]["mean"],
            "grey_psnr": grey["psnr"]["mean"], "attack_s": round(time.time() - t0, 1), "grid": f"{name}.png"}


def report(tag: str, r: dict) -> None:
    print(f"{tag:<34} images {r['images']}  ‖Δ‖ {r['update_norm']:.4f}  labels {r['label_accuracy']:.2f}  "
          f"PSNR {r['psnr']:6.2f} dB (per image {', '.join(f'{p:.1f}' for p in r['psnr_per_image'])})  "
          f"SSIM {r['ssim']:.3f}  grey reference {r['grey_psnr']:.2f} dB  [{r['attack_s']} s]", flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--clients", type=positive_int, default=4)
    ap.add_argument("--images", type=positive_int, default=2, help="private images per client")
    ap.add_argument("--rounds", type=positive_int, default=3)
    ap.add_argument("--lr", type=positive_float, default=0.01, help="clients' local learning rate")
    ap.add_argument("--epochs", type=positive_int, default=2, help="local epochs")
    ap.add_argument("--batch-size", type=positive_int, default=2, help="local mini-batch size")
    ap.add_argument("--attack", choices=("dlg", "invertgrad"), default="dlg",
                    help="dlg: L-BFGS on the L2 distance (with the recovered labels, i.e. iDLG); invertgrad: cosine + TV")
    ap.add_argument("--iterations", type=positive_int, default=60, help="attack iterations")
    ap.add_argument("--restarts", type=positive_int, default=1)
    ap.add_argument("--labels", choices=("recover", "given"), default="recover",
                    help="recover: from the update (the server is not given labels); given: the true labels")
    ap.add_argument("--attack-clients", type=positive_int, default=None, help="attack only the first N clients")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", choices=("ray", "inprocess"), default="ray",
                    help="ray: Flower's simulation engine (default); inprocess: the same apps, messages handed "
                         "over in this process (tests)")
    ap.add_argument("--dp", action=argparse.BooleanOptionalAction, default=True, help="also audit central DP")
    ap.add_argument("--dp-noise", type=float, default=1.0, help="noise multiplier z")
    ap.add_argument("--dp-clip", type=positive_float, default=0.1, help="clipping norm C")
    ap.add_argument("--dp-rounds", type=positive_int, default=1)
    ap.add_argument("--local-dp-epsilon", type=positive_float, default=None,
                    help="also audit LocalDpMod (clip C = --dp-clip, sensitivity C) at this ε")
    ap.add_argument("--local-dp-delta", type=positive_float, default=1e-5)
    ap.add_argument("--truth-dir", default=None, help="clients also save their own θ0 − θτ here (tests)")
    args = ap.parse_args(argv)
    if args.dp_noise < 0:
        ap.error(f"argument --dp-noise: got {args.dp_noise}; allowed: number >= 0")
    if args.images % args.batch_size:
        ap.error(f"argument --batch-size: got {args.batch_size}; allowed: a divisor of --images ({args.images}), "
                 "so the clients' in-order mini-batches are gradleak's schedule")
    torch.set_num_threads(1)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    parts = partitions(args.clients, args.images, args.seed)
    from safetensors.torch import save_file

    (args.out / "clients").mkdir(parents=True, exist_ok=True)
    for pid, (x, y) in enumerate(parts):  # the ground truth, for scoring (gradleak attack --truth)
        save_file({"images": x.contiguous(), "labels": y.contiguous()}, str(args.out / "clients" / f"partition-{pid}.safetensors"))
    results: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}

    t0 = time.time()
    simulate(args.out / "plain", parts, args, "plain", truth_dir=args.truth_dir)
    results["plain_simulation_s"] = round(time.time() - t0, 1)
    # attack the captured clients of round 1 (every one, or the first --attack-clients by partition)
    clients = sorted((e for e in load_index(args.out / "plain") if e["round"] == 1 and e["kind"] == "client"),
                     key=lambda e: e["metrics"]["partition-id"])[: args.attack_clients]
    plain = []
    for entry in clients:
        pid = entry["metrics"]["partition-id"]
        r = attack(args.out / "plain" / entry["path"], parts[pid], args, f"plain-partition{pid}")
        report(f"FedAvg round 1, client {pid}", r)
        plain.append(r)
    results["plain"] = plain
    results["plain_mean_psnr"] = sum(r["psnr"] for r in plain) / len(plain)
    results["plain_mean_grey_psnr"] = sum(r["grey_psnr"] for r in plain) / len(plain)
    print(f"FedAvg round 1: mean PSNR {results['plain_mean_psnr']:.2f} dB over {len(plain)} clients "
          f"(no-information grey reference {results['plain_mean_grey_psnr']:.2f} dB)", flush=True)
    first = clients[0]
    print("the same from the command line:\n  gradleak attack "
          f"{args.out / 'plain' / first['path']} --attack idlg --set iterations={args.iterations} "
          f"--truth {args.out / 'clients' / ('partition-%d.safetensors' % first['metrics']['partition-id'])} "
          f"--out {args.out / 'cli-attack'}", flush=True)

    if args.dp:
        t0 = time.time()
        # K = 1: a federation of client 0 alone, so which client is sampled is not left to Flower's random
        # sampling; the server's view of a round is the same as when one client of many is sampled
        simulate(args.out / "dp", parts[:1], args, "central-dp")
        results["dp_simulation_s"] = round(time.time() - t0, 1)
        index = load_index(args.out / "dp")
        entry = next(e for e in index if e["round"] == 1 and e["kind"] == "client")
        pid = entry["metrics"]["partition-id"]
        tag = f"DP z={args.dp_noise} C={args.dp_clip}"
        r = attack(args.out / "dp" / entry["path"], parts[pid], args, f"dp-client-partition{pid}")
        report(f"{tag}, client {pid} upload", r)
        results["dp_client"] = r
        agg = next(e for e in index if e["round"] == 1 and e["kind"] == "aggregate")
        r = attack(args.out / "dp" / agg["path"], parts[pid], args, f"dp-aggregate-partition{pid}")
        report(f"{tag}, released aggregate", r)
        results["dp_aggregate"] = r

    args.out.mkdir(parents=True, exist_ok=True)
    if args.local_dp_epsilon is not None:
        t0 = time.time()
        simulate(args.out / "local-dp", parts, args, "local-dp")
        results["local_dp_simulation_s"] = round(time.time() - t0, 1)
        entry = min((e for e in load_index(args.out / "local-dp") if e["round"] == 1 and e["kind"] == "client"),
                    key=lambda e: e["metrics"]["partition-id"])
        pid = entry["metrics"]["partition-id"]
        r = attack(args.out / "local-dp" / entry["path"], parts[pid], args, f"local-dp-partition{pid}")
        report(f"LocalDpMod ε={args.local_dp_epsilon} δ={args.local_dp_delta} C={args.dp_clip} "
               f"(σ={local_dp_sigma(args):.4g}), client {pid}", r)
        results["local_dp_client"] = r

    atomic_write_json(args.out / "results.json", results)
    return results


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C: every capture written so far is complete (atomic) and listed in index.json
        print("interrupted; the captures written so far are complete and listed in OUT/<run>/index.json",
              file=sys.stderr)
        sys.exit(130)
