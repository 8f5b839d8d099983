"""Training pairs for ROG's enhancer made by ROG itself: (search output, original, label) of public batches.

Lives here, above both the attacks and the networks, so that the enhancer (a network) never imports an attack.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradleak.nets.enhancer import EnhancerConfig


def rog_output_pairs(cfg: EnhancerConfig, progress: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(search outputs, originals, labels) of the ROG search (bicubic, no enhancement) run on
    ``cfg.rog_pairs`` batches of public images through a simulated FedAvg client (ROG's LeNet-5 at the
    default width of :mod:`gradleak.experiments.victims`, τ = 5, lr 5e-3, fresh seeded init per batch)."""
    from gradleak.attacks.rog import ROG
    from gradleak.case import Case, capture
    from gradleak.data import load_dataset, sample_batch
    from gradleak.experiments.victims import ROG_LENET5
    from gradleak.fl.protocol import Protocol
    from gradleak.models import build_model, init_model

    data = load_dataset(cfg.data, split=cfg.split, resolution=cfg.resolution, channels=cfg.channels, root=cfg.root)
    outs, origs, labs = [], [], []
    for k in range(cfg.rog_pairs):
        x, y = sample_batch(data, min(cfg.rog_batch, len(data)), distinct_labels=False, seed=cfg.seed + 1000 + k)
        model = build_model(ROG_LENET5, data.num_classes, cfg.channels, cfg.resolution)
        init_model(model, cfg.seed + k)
        obs = capture(Case(model, x, y, Protocol(kind="fedavg", local_steps=5, lr=5e-3), give_labels=True), seed=k)
        atk = ROG(iterations=cfg.rog_iterations, tv=0.0, enhancer="none")  # the paper's search (ROG's defaults: TV 0.3)
        rec = atk(obs, labels=y, seed=k, model=model, progress=progress)
        from gradleak.metrics import apply_match, match

        perm = match(rec.images, x)
        outs.append(apply_match(rec.images, perm))
        origs.append(x)
        labs.append(y)
    return torch.cat(outs), torch.cat(origs), torch.cat(labs)
