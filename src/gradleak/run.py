"""Run one audit from a RunConfig and write its run directory.

    config ─► Case ─► Observation ─► Attack ─► Reconstruction ─► metrics / report

Everything that can fail on user input (data, model, options, defenses) is built before anything is
written; files are written atomically, ``metrics.json`` last.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gradleak.attacks.engine import Reconstruction
from gradleak.attacks.labels import label_accuracy, recover_labels
from gradleak.attacks.presets import Attack, build_attack
from gradleak.case import Case, capture
from gradleak.config import RunConfig
from gradleak.data import load_dataset, sample_batch
from gradleak.defenses import build_defenses
from gradleak.fl.observation import Observation
from gradleak.fl.protocol import Protocol
from gradleak.models import build_model, init_model, pretrain


@dataclass
class Prepared:
    case: Case
    attack: Attack
    label_mode: str


def build_case(cfg: RunConfig) -> Case:
    """Data, victim and protocol from the config (no files written)."""
    d, m = cfg.data, cfg.model
    private = load_dataset(d.name, split=d.split, resolution=d.resolution, channels=d.channels, root=d.root)
    images, labels = sample_batch(private, d.batch_size, distinct_labels=d.distinct_labels, seed=cfg.seed)
    model = build_model(m.name, private.num_classes, d.channels, d.resolution, **m.options)
    init_model(model, cfg.seed)
    if m.pretrain_steps:
        public_split = {"private": "public", "test": "train"}.get(d.split, d.split)
        public = load_dataset(d.name, split=public_split,
                              resolution=d.resolution, channels=d.channels, root=d.root)
        pretrain(model, public.images, public.labels, steps=m.pretrain_steps, lr=m.pretrain_lr, seed=cfg.seed)
    c = cfg.client
    protocol = Protocol(kind=c.protocol, local_steps=c.local_steps, lr=c.lr, local_batch_size=c.local_batch_size,
                        epochs=c.epochs, bn_mode=c.bn_mode, share_bn_stats=c.share_bn_stats)
    return Case(model=model, images=images, labels=labels, protocol=protocol,
                defenses=build_defenses(cfg.defense), model_spec=model.gradleak_spec)


def prepare(cfg: RunConfig) -> Prepared:
    from gradleak.metrics.semantic import load_tagger

    d, mc = cfg.data, cfg.metrics
    load_tagger(mc.tagger, threshold=mc.tagger_threshold, top_k=mc.tagger_top_k,  # a bad tagger fails here, early
                shape=(d.channels, d.resolution, d.resolution), dataset=d.name)
    attack = build_attack(cfg.attack.name, **cfg.attack.options)
    mode = attack.default_labels if cfg.attack.labels == "default" else cfg.attack.labels
    case = build_case(cfg)
    case.give_labels = mode == "oracle"
    return Prepared(case, attack, mode)


def attack_labels(obs: Observation, mode: str, model) -> Tensor | None:
    """Labels the attacker uses: given (oracle), recovered (iDLG / Yin et al.), or None (learned)."""
    if mode == "oracle":
        return obs.labels
    if mode == "recover":
        return recover_labels(obs, model)
    return None


def run(cfg: RunConfig, out: str | Path, progress: bool = True) -> dict:
    """Run the audit and write the run directory; returns the metrics dict."""
    from gradleak.report.writer import write_run_dir

    torch.manual_seed(cfg.seed)
    prep = prepare(cfg)
    obs = capture(prep.case, seed=cfg.seed)
    model = obs.build_model()
    labels = attack_labels(obs, prep.label_mode, model)
    rec: Reconstruction = prep.attack(obs, labels=labels, seed=cfg.seed, model=model, progress=progress)
    label_acc = label_accuracy(rec.labels, prep.case.labels)
    return write_run_dir(Path(out), cfg, obs, rec, prep.case.images, label_acc, prep.label_mode, prep.case.labels)
