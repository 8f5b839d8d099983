"""Audit a deployment end to end: a plain PyTorch local round (torch.optim.SGD with momentum 0.9 and weight
decay 5e-4, DataLoader shuffled with a known seed) is captured (weights before/after + PROTOCOL.yaml),
verified against the true images, and attacked; the PSNR is compared with the same attack on gradleak's own
simulation of that client (acceptance: within 1 dB). Also measured: what a wrong protocol (plain SGD assumed),
a silently flipped update sign and an unknown shuffle seed cost the attacker.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/deployment.py [--iterations 300] [--batches 2]

Output recorded in docs/deployment.md. One torch thread.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from gradleak.case import Case, capture
from gradleak.data import load_dataset, sample_batch
from gradleak.attacks import build_attack
from gradleak.deploy import capture_observation, load_observation, verify_command
from gradleak.fl.observation import Observation
from gradleak.fl.protocol import Protocol
from gradleak.models import build_model, init_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import audited, positive_int  # noqa: E402

LR, MOMENTUM, WD, BATCH, LOCAL_B = 0.05, 0.9, 5e-4, 4, 2


def plain_round(model, x, y, epochs: int, seed: int):
    """The user's own local training loop — no gradleak code."""
    model = copy.deepcopy(model).train()
    loader = DataLoader(TensorDataset(x, y), batch_size=LOCAL_B, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model


def psnr(obs: Observation, x, iterations: int, seed: int) -> float:
    """InvertGrad on ``obs`` through the audit pipeline (labels: the attack's default, recovered where the server
    holds none, as ``gradleak attack``), matched to the true ``x``."""
    r = audited(obs, build_attack("invertgrad", iterations=iterations), x, None, seed=seed, labels_mode="default")
    return float(r.scores.psnr["mean"])


def client(epochs, seed, **kw):
    return dict(protocol="fedavg", lr=LR, local_batch_size=LOCAL_B, epochs=epochs, momentum=MOMENTUM,
                weight_decay=WD, order="shuffled", seed=seed, **kw)


def one_batch(k: int, iterations: int, work: Path) -> dict:
    data = load_dataset("digits", split="private", resolution=32, channels=1)
    x, y = sample_batch(data, BATCH, distinct_labels=True, seed=k)
    x = (x * 255).round() / 255  # what 8-bit image files hold
    model = build_model("lenet", 10, 1, 32)
    init_model(model, k)
    d = work / f"b{k}"
    (d / "imgs").mkdir(parents=True)
    for i in range(BATCH):
        Image.fromarray((x[i, 0] * 255).round().to(torch.uint8).numpy()).save(d / "imgs" / f"{i:02d}.png")
    save_file({n: t.contiguous() for n, t in model.state_dict().items()}, str(d / "before.safetensors"))
    row: dict = {}
    for epochs in (1, 2):
        after = plain_round(model, x, y, epochs, seed=100 + k)
        save_file({n: t.contiguous() for n, t in after.state_dict().items()}, str(d / f"after{epochs}.safetensors"))
        flipped = {n: (p.detach() - model.state_dict()[n]).contiguous() for n, p in after.named_parameters()}
        save_file(flipped, str(d / f"flipped{epochs}.safetensors"))
        variants = {"right": client(epochs, 100 + k), "plain_sgd": dict(protocol="fedavg", lr=LR, local_batch_size=LOCAL_B,
                                                                       epochs=epochs),
                    "unknown": client(epochs, None, ).copy() | {"order": "unknown"}}
        for name, c in variants.items():
            spec = {"model": {"num_classes": 10, "channels": 1, "resolution": 32}, "num_images": BATCH, "client": c}
            (d / f"{name}{epochs}.yaml").write_text(yaml.safe_dump(spec))
            capture_observation(d / f"obs_{name}{epochs}", d / f"{name}{epochs}.yaml", "lenet",
                                d / "before.safetensors", after=d / f"after{epochs}.safetensors",
                                labels=",".join(map(str, y.tolist())))
        obs = load_observation(d / f"obs_right{epochs}")
        ver = verify_command(d / f"obs_right{epochs}", d / "imgs")
        ver_wrong = verify_command(d / f"obs_plain_sgd{epochs}", d / "imgs")
        sim = capture(Case(model, x, y, Protocol(kind="fedavg", lr=LR, local_batch_size=LOCAL_B, epochs=epochs,
                                                 momentum=MOMENTUM, weight_decay=WD, order="shuffled",
                                                 seed=100 + k), give_labels=True))
        # the sign silently flipped: θ_τ − θ_0 captured as an upload stated as the default θ_0 − θ_τ
        flip_spec = {"model": {"num_classes": 10, "channels": 1, "resolution": 32}, "num_images": BATCH,
                     "client": client(epochs, 100 + k)}
        (d / "flip.yaml").write_text(yaml.safe_dump(flip_spec))
        capture_observation(d / f"obs_flip{epochs}", d / "flip.yaml", "lenet", d / "before.safetensors",
                            update=d / f"flipped{epochs}.safetensors", labels=",".join(map(str, y.tolist())))
        flip_spec["client"]["update"] = "new_minus_old"
        (d / "flip_stated.yaml").write_text(yaml.safe_dump(flip_spec))
        capture_observation(d / f"obs_flipst{epochs}", d / "flip_stated.yaml", "lenet", d / "before.safetensors",
                            update=d / f"flipped{epochs}.safetensors", labels=",".join(map(str, y.tolist())))
        row[epochs] = {
            "verify": ver.overall, "verify_plain_sgd": ver_wrong.overall,
            "captured": psnr(obs, x, iterations, k), "simulated": psnr(sim, x, iterations, k),
            "plain_sgd": psnr(load_observation(d / f"obs_plain_sgd{epochs}"), x, iterations, k),
            "unknown": psnr(load_observation(d / f"obs_unknown{epochs}"), x, iterations, k),
            "flip_silent": psnr(load_observation(d / f"obs_flip{epochs}"), x, iterations, k),
            "flip_stated": psnr(load_observation(d / f"obs_flipst{epochs}"), x, iterations, k),
        }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=positive_int, default=300, help="InvertGrad iterations per attack")
    ap.add_argument("--batches", type=positive_int, default=2, help="client batches (seeds) averaged")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.batches):
            rows.append(one_batch(k, args.iterations, Path(tmp)))
    print(f"# deployment audit: LeNet (sigmoid, DLG's), digits 32x32x1, B={BATCH} distinct labels given, local "
          f"mini-batches of {LOCAL_B}, torch.optim.SGD lr {LR} momentum {MOMENTUM} weight decay {WD}, DataLoader "
          f"shuffled (seed known unless stated); InvertGrad {args.iterations} iterations, 1 restart; "
          f"{args.batches} batches; torch threads {torch.get_num_threads()}")
    cols = [("verify", "verify rel. dist (right protocol)", "{:.1e}"),
            ("verify_plain_sgd", "verify rel. dist (plain SGD assumed)", "{:.2f}"),
            ("captured", "PSNR captured+verified (dB)", "{:.2f}"), ("simulated", "PSNR gradleak simulation (dB)", "{:.2f}"),
            ("plain_sgd", "PSNR plain SGD assumed (dB)", "{:.2f}"), ("unknown", "PSNR seed unknown (dB)", "{:.2f}"),
            ("flip_silent", "PSNR sign flipped, unstated (dB)", "{:.2f}"),
            ("flip_stated", "PSNR sign flipped, stated (dB)", "{:.2f}")]
    print("| local epochs | " + " | ".join(c[1] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    ok = True
    for epochs in (1, 2):
        vals = {key: float(np.mean([r[epochs][key] for r in rows])) for key, _, _ in cols}
        worst_verify = max(r[epochs]["verify"] for r in rows)
        vals["verify"] = worst_verify
        print(f"| {epochs} | " + " | ".join(fmt.format(vals[key]) for key, _, fmt in cols) + " |")
        gap = max(abs(r[epochs]["captured"] - r[epochs]["simulated"]) for r in rows)
        ok &= gap <= 1.0
        print(f"epochs {epochs}: largest |PSNR captured - PSNR simulated| over batches = {gap:.3f} dB")
    print(f"acceptance (captured within 1 dB of simulated, every batch): {'PASS' if ok else 'FAIL'}; "
          f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
