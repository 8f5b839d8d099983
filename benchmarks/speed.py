"""Attack speed and quality over a fixed matrix (issue 2): LeNet / ConvNet / ResNet-18, batch 1 and 4,
FedSGD and FedAvg (τ = 5, local batch = half the batch), InvertGrad with a fixed iteration budget.
Prints iterations per second (1 torch thread per worker process; each run after a 3-iteration warm-up) and
mean PSNR.
Also compares the two re-run backends (loop over restarts with autograd.grad vs vmap over
torch.func.grad) on BatchNorm-free LeNet.

    python benchmarks/speed.py [--iterations 100] [--workers 2]
"""
from __future__ import annotations

import argparse
import time

from _common import parallel_map, run_one

MODELS = {
    "lenet": ["data.name=digits", "data.channels=1", "model.name=lenet"],
    "convnet": ["data.name=photos", "model.name=convnet", "model.options.width=64"],
    "resnet18": ["data.name=photos", "model.name=resnet18"],
}
PROTOCOLS = {
    "fedsgd": ["client.protocol=fedsgd"],
    "fedavg τ=5": ["client.protocol=fedavg", "client.local_steps=5", "client.lr=0.01"],
}


def timed_run(overrides: list[str]) -> dict:
    """Run once with 3 iterations (warm-up: first-call allocations, kernel selection), then time the real run."""
    run_one(([o for o in overrides if not o.startswith("attack.options.iterations=")]
             + ["attack.options.iterations=3"], None))
    return run_one((overrides, None))


def matrix(iterations: int):
    for model, mo in MODELS.items():
        for batch in (1, 4):
            for proto, po in PROTOCOLS.items():
                lb = [f"client.local_batch_size={max(1, batch // 2)}"] if proto != "fedsgd" else []
                yield (model, batch, proto), mo + po + lb + [
                    f"data.batch_size={batch}", "attack.name=invertgrad",
                    f"attack.options.iterations={iterations}", "attack.options.restarts=1"]


def backend_compare(iterations: int) -> list[str]:
    import torch

    from gradleak.attacks.engine import search
    from gradleak.attacks.presets import InvertGrad
    from gradleak.case import capture
    from gradleak.config import load_config
    from gradleak.audit import build_case

    lines = ["| backend | restarts | protocol | it/s |", "|---|---|---|---|"]
    for proto, po in PROTOCOLS.items():
        cfg = load_config(None, MODELS["lenet"] + po + ["data.batch_size=4", "client.local_batch_size=2"])
        obs = capture(build_case(cfg))
        for backend in ("loop", "vmap"):
            InvertGrad(iterations=3, restarts=4, backend=backend)(obs, labels=obs.labels, progress=False)  # warm-up
            att = InvertGrad(iterations=iterations, restarts=4, backend=backend)
            t = time.perf_counter()
            att(obs, labels=obs.labels, progress=False)
            lines.append(f"| {backend} | 4 | {proto} | {iterations / (time.perf_counter() - t):.1f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    todo = list(matrix(args.iterations))
    results = parallel_map(timed_run, [o for _, o in todo], args.workers)
    print(f"InvertGrad, {args.iterations} iterations, 1 restart, 1 torch thread per worker, {args.workers} workers\n")
    print("| model | batch | protocol | it/s | mean PSNR (dB) | mean SSIM |")
    print("|---|---|---|---|---|---|")
    for (model, batch, proto), m in zip((k for k, _ in todo), results):
        print(f"| {model} | {batch} | {proto} | {m['iterations'] / m['seconds']:.1f} | "
              f"{m['psnr']['mean']:.2f} | {m['ssim']['mean']:.3f} |")
    import torch

    torch.set_num_threads(1)
    print("\nRe-run backend (LeNet, batch 4, InvertGrad, 4 restarts batched):\n")
    print("\n".join(backend_compare(max(20, args.iterations // 4))))


if __name__ == "__main__":
    main()
