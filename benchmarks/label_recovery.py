"""Label recovery: ``gradleak.recover_labels`` against the sign rule alone (the method before, the n classes
with the most negative last-layer evidence, distinct labels assumed), mean label accuracy over seeds.

Each case is a gradleak config (``--set`` overrides): the client is simulated by gradleak, the server's
Observation captured, labels recovered from it and compared order-free with the true ones. No attack runs.

    python benchmarks/label_recovery.py [--seeds 8] [--cases all|NAME,NAME] [--out table.md]

``--cases`` names (all by default; ``pretrained`` cases pretrain 200 steps first and take ~15 s a seed):
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import ROOT, positive_int  # noqa: F401  (puts src/ on the path)

LENET = ["data.channels=1", "model.name=lenet"]
CONVNET = ["data.name=photos", "model.name=convnet", "model.options.width=16"]
FEDAVG = ["client.protocol=fedavg", "client.lr=0.01"]
CASES = {
    "lenet-fedsgd-b1": LENET + ["data.batch_size=1"],
    "lenet-fedsgd-b4": LENET + ["data.batch_size=4"],
    "lenet-fedsgd-b8-repeated": LENET + ["data.batch_size=8", "data.distinct_labels=false"],
    "lenet-flower-config-b2": LENET + FEDAVG + ["data.batch_size=2", "client.epochs=2", "client.local_batch_size=2"],
    "lenet-fedavg-b4-tau4": LENET + FEDAVG + ["data.batch_size=4", "client.epochs=2", "client.local_batch_size=2"],
    "lenet-fedavg-b4-tau2-repeated": LENET + FEDAVG + ["data.batch_size=4", "client.epochs=1",
                                                       "client.local_batch_size=2", "data.distinct_labels=false"],
    "lenet-fedavg-b8-tau4-repeated": LENET + FEDAVG + ["data.batch_size=8", "client.local_steps=4",
                                                       "client.local_batch_size=4", "data.distinct_labels=false"],
    "convnet-fedavg-b4-tau5 (examples/fedavg_convnet_photos.yaml)": CONVNET + FEDAVG + [
        "data.batch_size=4", "client.local_steps=5", "client.local_batch_size=2"],
    "convnet-fedavg-b4-momentum-smoothing": CONVNET + FEDAVG + [
        "data.batch_size=4", "client.local_steps=4", "client.local_batch_size=2", "client.momentum=0.9",
        "client.label_smoothing=0.1"],
    "convnet-fedsgd-b8-repeated": CONVNET + ["data.batch_size=8", "data.distinct_labels=false"],
    "lenet-pretrained-fedsgd-b4": LENET + ["data.batch_size=4", "model.pretrain_steps=200"],
    "lenet-pretrained-fedsgd-b8-repeated": LENET + ["data.batch_size=8", "model.pretrain_steps=200",
                                                    "data.distinct_labels=false"],
}
__doc__ += "\n".join(f"    {name}" for name in CASES) + "\n"


def accuracies(overrides: list[str], seed: int) -> tuple[float, float]:
    import torch

    from gradleak.attacks.labels import class_scores, label_accuracy, last_layer, recover_labels
    from gradleak.audit import build_case
    from gradleak.case import capture
    from gradleak.config import load_config

    cfg = load_config(None, [f"seed={seed}"] + overrides)
    torch.manual_seed(seed)
    case = build_case(cfg)
    obs = capture(case, seed=seed)
    model = obs.build_model()
    sign_rule = class_scores(last_layer(obs, model)).argsort()[: obs.num_images].sort().values
    return label_accuracy(recover_labels(obs, model), case.labels), label_accuracy(sign_rule, case.labels)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=positive_int, default=8)
    ap.add_argument("--cases", default="all", help="all, or names separated by commas")
    ap.add_argument("--workers", type=positive_int, default=1, help="accepted for uniformity; runs in one process")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = ap.parse_args()
    names = list(CASES) if args.cases == "all" else args.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"argument --cases: got {unknown[0]!r}; allowed: all, {', '.join(CASES)}")
    torch.set_num_threads(1)
    lines = [f"label accuracy, mean over seeds 0–{args.seeds - 1} (torch threads: {torch.get_num_threads()})", "",
             "| case | recover_labels | sign rule alone (before) | s |", "|---|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for name in names:
        t0 = time.time()
        pairs = [accuracies(CASES[name], s) for s in range(args.seeds)]
        new = sum(p[0] for p in pairs) / len(pairs)
        old = sum(p[1] for p in pairs) / len(pairs)
        lines.append(f"| {name} | {new:.3f} | {old:.3f} | {time.time() - t0:.0f} |")
        print(lines[-1], flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
