"""The built-in tagger: a small multi-label CNN trained on the *public* split of a dataset
(what ``gradleak train-tagger`` runs).

Tags: ``class:<name>`` for every class present in the public split, plus the attribute tags of
:mod:`gradleak.nets.attributes` (tertile bins fitted on the public split; dominant colour). The targets
of an image are its class tag and its attribute tags, one per group of mutually exclusive tags; the network
gives a softmax per group and is trained with the sum of the groups' cross-entropies (Adam, cosine decay) on 90 %
of the public split — the other 10 % (fixed by the seed) measures held-out class accuracy and the mean Jaccard of
the predicted to the true tags, stored in the JSON.

Network (:class:`TaggerNet`): three 3×3 conv–BN–ReLU stages (widths w, 2w, 4w), 2× max-pool between them, the
last stage average-pooled to 4×4 and flattened (so the layout tags can see where things are), a linear head.
:meth:`TaggerNet.features` returns the three stage outputs (a perceptual feature network for
:mod:`gradleak.attacks.perceptual`, ``perceptual: tagger``).

Files: ``tagger.safetensors`` (weights) + ``tagger.json`` (tag names, attribute cut points, architecture,
dataset, command, seed, held-out scores), read with safetensors and JSON only.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradleak import filepair
from gradleak.errors import UserError, bad_value
from gradleak.nets.attributes import attribute_tags, attribute_values, attribute_vocabulary, fit_bins
from gradleak.priors.train import command_line
from gradleak.trainconfig import TaggerConfig
from gradleak.trainstate import TrainState, train_loop

KEY = "metrics.tagger"
FORMAT = "gradleak-tagger"
VERSION = 1


def jaccard(a: Sequence[str] | set[str], b: Sequence[str] | set[str]) -> float:
    """Eq. (21): |A ∩ B| / |A ∪ B|; 1.0 when both are empty."""
    A, B = set(a), set(b)
    union = A | B
    return 1.0 if not union else len(A & B) / len(union)


class ModelTagger:
    """A multi-label classifier ``net(images) → (N, T)`` with tag names, a threshold and top-k."""

    def __init__(self, net: nn.Module, tag_names: Sequence[str], *, threshold: float = 0.5, top_k: int | None = None,
                 name: str = "", input_channels: int | None = None, input_resolution: int | None = None,
                 outputs: str = "logits", meta: dict | None = None):
        if not 0.0 <= float(threshold) <= 1.0 or math.isnan(float(threshold)):
            raise bad_value(f"{KEY}_threshold", threshold, "a probability in [0, 1]")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise bad_value(f"{KEY}_top_k", top_k, "an integer >= 1, or null for no limit")
        if outputs not in ("logits", "probabilities"):
            raise bad_value(f"{KEY}.outputs", outputs, "logits, probabilities")
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.tag_names = [str(t) for t in tag_names]
        self.threshold, self.top_k, self.name = float(threshold), top_k, name or type(net).__name__
        self.input_channels, self.input_resolution, self.outputs = input_channels, input_resolution, outputs
        self.meta = dict(meta or {})

    def prepare(self, images: Tensor) -> Tensor:
        """Images in [0, 1] converted to the channels / resolution the classifier was trained on."""
        x = images.float()
        if self.input_channels or self.input_resolution:
            from gradleak.priors.prior import match_shape

            C = self.input_channels or x.shape[1]
            H, W = (self.input_resolution,) * 2 if self.input_resolution else x.shape[-2:]
            x = match_shape(x, (C, H, W))
        return x

    def probabilities(self, images: Tensor) -> Tensor:
        """(N, T) tag probabilities."""
        with torch.no_grad():
            out = self.net(self.prepare(images))
        if out.dim() != 2 or out.shape[1] != len(self.tag_names):
            raise UserError(f"{KEY}: {self.name} gave outputs of shape {tuple(out.shape)}; expected (N, "
                            f"{len(self.tag_names)}) = one per tag name")
        return out.float() if self.outputs == "probabilities" else torch.sigmoid(out.float())

    def __call__(self, images: Tensor) -> list[list[str]]:
        """The tags of each image, most probable first."""
        probs = self.probabilities(images)
        order = probs.argsort(1, descending=True)
        out = []
        for p, idx in zip(probs, order):
            keep = [int(i) for i in idx if float(p[i]) >= self.threshold]
            out.append([self.tag_names[i] for i in keep[: self.top_k]])
        return out


class TaggerNet(nn.Module):
    """(N, channels, R, R) in [0, 1] → (N, num_tags) tag probabilities: a softmax within each group of mutually
    exclusive tags (``groups``: group sizes in tag order — the classes, then three bins per attribute, then the
    colours), so a 0.5 threshold keeps at most one tag per group."""

    def __init__(self, channels: int = 1, num_tags: int = 10, width: int = 16, groups: list[int] | None = None):
        super().__init__()
        self.channels, self.num_tags, self.width = channels, num_tags, width
        self.groups = [int(g) for g in (groups or [num_tags])]
        if sum(self.groups) != num_tags or min(self.groups) < 1:
            raise UserError(f"tagger: groups {self.groups} must be positive and sum to num_tags {num_tags}")
        widths = [width, 2 * width, 4 * width]
        cin, stages = channels, []
        for w in widths:
            stages.append(nn.Sequential(nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(cin * 16, num_tags)

    def config(self) -> dict:
        return {"channels": self.channels, "num_tags": self.num_tags, "width": self.width, "groups": self.groups}

    def features(self, x: Tensor) -> list[Tensor]:
        """The output of each stage (before its max-pool)."""
        h, out = x - 0.5, []
        for i, stage in enumerate(self.stages):
            h = stage(h if i == 0 else F.max_pool2d(h, 2))
            out.append(h)
        return out

    def logits(self, x: Tensor) -> Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x)[-1], 4).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([g.softmax(1) for g in self.logits(x).split(self.groups, 1)], 1)

    def loss(self, x: Tensor, targets: Tensor) -> Tensor:
        """Sum over groups of the cross-entropy to the one tag of each group that is on."""
        total = x.new_zeros(())
        for g, t in zip(self.logits(x).split(self.groups, 1), targets.split(self.groups, 1)):
            total = total + F.cross_entropy(g, t.argmax(1))
        return total


def target_matrix(images: Tensor, labels: Tensor, class_names: list[str], tag_names: list[str],
                  cuts: dict[str, list[float]], colours: bool) -> Tensor:
    """(N, T) 0/1 targets: the class tag and the attribute tags of each image."""
    index = {t: i for i, t in enumerate(tag_names)}
    y = torch.zeros(len(labels), len(tag_names))
    for i, (lab, attrs) in enumerate(zip(labels.tolist(), attribute_tags(images, cuts, colours))):
        for t in [f"class:{class_names[lab]}", *attrs]:
            if t in index:
                y[i, index[t]] = 1.0
    return y


def train_tagger(cfg: TaggerConfig, out: str | Path, progress: bool = True, command: str | None = None) -> Path:
    """Train the tagger on the public side of ``cfg.data`` and write ``out/tagger.safetensors`` + ``.json``."""
    from gradleak.data import load_dataset

    cfg.check()
    data = load_dataset(cfg.data, split=cfg.split, resolution=cfg.resolution, channels=cfg.channels, root=cfg.root,
                        seed=cfg.seed)
    names = data.class_names or [str(i) for i in range(data.num_classes)]
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(data), generator=gen)
    n_hold = int(round(cfg.holdout * len(data)))
    hold, train = perm[:n_hold], perm[n_hold:]
    x, lab = data.images[train], data.labels[train]
    cuts = fit_bins(x)
    classes = [f"class:{names[c]}" for c in sorted(set(data.labels.tolist()))]
    tag_names = classes + attribute_vocabulary(cuts, attribute_values(x)["colour"])
    colours = any(t.startswith("colour:") for t in tag_names)
    y = target_matrix(x, lab, names, tag_names, cuts, colours)
    torch.manual_seed(cfg.seed)
    groups = [len(classes)] + [3] * len(cuts) + ([len(tag_names) - len(classes) - 3 * len(cuts)] if colours else [])
    net = TaggerNet(cfg.channels, len(tag_names), cfg.width, groups)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    t0 = time.perf_counter()
    net.train()

    def step(_i: int) -> None:
        idx = torch.randint(0, len(x), (min(cfg.batch_size, len(x)),), generator=gen)
        loss = net.loss(x[idx], y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    state = TrainState(out, cfg.command, asdict(cfg), {"net": net}, {"opt": opt}, {"sched": sched}, {"gen": gen},
                       every=cfg.checkpoint_every)
    train_loop(state, cfg.steps, step, f"train-tagger {cfg.data}", progress)
    net.eval()
    seconds = time.perf_counter() - t0
    held = {}
    if n_hold:
        tagger = ModelTagger(net, tag_names, outputs="probabilities")
        xh, lh = data.images[hold], data.labels[hold]
        pred = tagger(xh)
        truth = [[t for t, v in zip(tag_names, row) if v > 0]
                 for row in target_matrix(xh, lh, names, tag_names, cuts, colours)]
        cls_ok = [f"class:{names[int(c)]}" in p for c, p in zip(lh, pred)]
        held = {"images": n_hold, "class_accuracy": sum(cls_ok) / n_hold,
                "mean_jaccard_to_truth": sum(jaccard(a, b) for a, b in zip(pred, truth)) / n_hold}
    meta = {"format": FORMAT, "kind": "tagger", "version": VERSION, "arch": net.config(), "tag_names": tag_names, "cuts": cuts,
            "colours": colours, "dataset": cfg.data, "split": cfg.split, "channels": cfg.channels,
            "resolution": cfg.resolution, "seed": cfg.seed, "command": command or command_line(),
            "train_config": asdict(cfg), "train_seconds": round(seconds, 1), "held_out": held,
            "torch": torch.__version__}
    from gradleak.nets.enhancer import save_pair

    st, _ = save_pair(Path(out) / "tagger", net.state_dict(), meta)
    state.finished()
    return st


def read_tagger(path: str | Path, *, threshold: float = 0.5, top_k: int | None = None, name: str = "") -> ModelTagger:
    """Load a ``train-tagger`` result (safetensors + JSON only), once per process for the same files and options
    (:func:`gradleak.loadonce.once`)."""
    from gradleak.loadonce import once

    return once("tagger", filepair.pair_files(path, "tagger"), (threshold, top_k, name), lambda: _read_tagger(path, threshold, top_k, name))


def _read_tagger(path: str | Path, threshold: float, top_k: int | None, name: str) -> ModelTagger:
    from gradleak.nets.enhancer import read_pair

    tensors, meta = read_pair(path, "tagger", "metrics.tagger", fmt=FORMAT)
    net = filepair.build(TaggerNet, meta, "metrics.tagger", path)
    filepair.load_state(net, tensors, "metrics.tagger", path)
    for k, ok in (("tag_names", isinstance(meta.get("tag_names"), list)), ("channels", meta.get("channels") in (1, 3)),
                  ("resolution", isinstance(meta.get("resolution"), int))):
        if not ok:
            raise UserError(f"metrics.tagger: {str(path)!r} has no valid {k!r} in its JSON")
    return ModelTagger(net, meta["tag_names"], threshold=threshold, top_k=top_k, name=name or str(path),
                       input_channels=meta["channels"], input_resolution=meta["resolution"], outputs="probabilities",
                       meta=meta)
