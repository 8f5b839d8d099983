"""FedAvg training simulation (McMahan et al., 2017) for the privacy–utility trade-off (ROG §5.2, Fig. 9a).

* :func:`dirichlet_split` — non-IID partition of a labelled dataset over M clients (Hsu et al., 2019, as ROG
  §5.2 describes it): for every client m a vector q_m ~ Dir(α·1_c) over the c classes is drawn, and the
  examples of class k are divided among the clients in proportion to q_{m,k} (shuffled, seeded; every
  example goes to exactly one client). Smaller α → more skewed clients.
* :func:`simulate_fedavg` — R communication rounds; each round ``clients_per_round`` clients are sampled
  with equal probability (without replacement); each runs the gradleak client
  (:func:`gradleak.fl.client.client_update`: τ local SGD steps with lr η on mini-batches of b, walking
  through its shuffled local data) from the current global model, its upload goes through the same
  defense chain as an audited client (:class:`gradleak.defenses.Defense`, fresh ``ClientContext`` per
  client, one seeded generator), and the server applies the size-weighted mean upload,
  θ ← θ − η_s Σ_m n_m Δ̃_m / Σ_m n_m (η_s = ``server_lr``, 1 = plain FedAvg). Test accuracy is measured
  every ``eval_every`` rounds and at the end.

Models with BatchNorm keep their initial running statistics (clients update copies); the ROG experiments use
BN-free victims, as the paper does. A PRECODE model draws fresh noise in training (``noise = "random"``,
torch RNG seeded from ``seed``) and is evaluated on its mean (``noise = "mean"``); its mode is restored after.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from gradleak.data.base import ImageSet
from gradleak.defenses.base import ClientContext, Defense
from gradleak.errors import bad_value
from gradleak.fl.client import client_update, split_state
from gradleak.fl.protocol import Protocol


def dirichlet_split(labels: Tensor, num_clients: int = 100, alpha: float = 0.5, seed: int = 0,
                    num_classes: int | None = None) -> list[Tensor]:
    """Indices of each client's examples (sorted), see the module docstring. Deterministic given ``seed``."""
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise bad_value("tradeoff.num_clients", num_clients, "an integer >= 1")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise bad_value("tradeoff.alpha", alpha, "a number > 0")
    labels = torch.as_tensor(labels).long().reshape(-1)
    K = int(num_classes or (int(labels.max()) + 1 if labels.numel() else 1))
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.full(K, float(alpha)), size=num_clients)  # (M, K), rows on the simplex
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for k in range(K):
        idx = np.flatnonzero(labels.numpy() == k)
        if idx.size == 0:
            continue
        idx = rng.permutation(idx)
        share = q[:, k] / q[:, k].sum()
        bounds = np.round(np.cumsum(share) * idx.size).astype(int)
        bounds[-1] = idx.size
        start = 0
        for m, stop in enumerate(bounds):
            parts[m].extend(idx[start:stop].tolist())
            start = max(start, stop)
    return [torch.tensor(sorted(p), dtype=torch.long) for p in parts]


@dataclass
class Federation:
    """Who trains and how often (ROG §5.2: 100 clients split by Dir(α = 0.5), 10 per round, 100 rounds on
    CIFAR-10; each client τ local steps of b images): the settings the trade-off shares with the simulation."""

    rounds: int = 30
    num_clients: int = 100
    clients_per_round: int = 10
    alpha: float = 0.5
    local_steps: int = 5
    local_batch_size: int = 16

    def federation(self) -> dict:
        """These settings as keywords (for a :class:`FedAvgConfig`)."""
        from dataclasses import fields

        return {f.name: getattr(self, f.name) for f in fields(Federation)}


@dataclass
class FedAvgConfig(Federation):
    """Simulation settings: the :class:`Federation`, the clients' learning rate, the server's, evaluation."""

    lr: float = 0.05
    server_lr: float = 1.0
    eval_every: int = 0  # 0: only before training and at the end
    seed: int = 0

    def check(self) -> None:
        for key, ok, allowed in (
            ("rounds", self.rounds >= 1, "an integer >= 1"),
            ("num_clients", self.num_clients >= 1, "an integer >= 1"),
            ("clients_per_round", 1 <= self.clients_per_round <= self.num_clients, "an integer in 1..num_clients"),
            ("alpha", self.alpha > 0, "a number > 0"),
            ("local_steps", self.local_steps >= 1, "an integer >= 1"),
            ("lr", self.lr > 0, "a number > 0"),
            ("local_batch_size", self.local_batch_size >= 1, "an integer >= 1"),
            ("server_lr", self.server_lr > 0, "a number > 0"),
            ("eval_every", self.eval_every >= 0, "an integer >= 0"),
        ):
            if not ok:
                raise bad_value(f"tradeoff.{key}", getattr(self, key), allowed)


@torch.no_grad()
def accuracy(model: nn.Module, params: dict, buffers: dict, data: ImageSet, batch_size: int = 256) -> float:
    """Top-1 accuracy of the model at ``params`` on ``data`` (eval mode)."""
    was = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, len(data), batch_size):
            logits = functional_call(model, {**params, **buffers}, (data.images[i:i + batch_size],))
            correct += int((logits.argmax(1) == data.labels[i:i + batch_size]).sum())
    finally:
        model.train(was)
    return correct / max(len(data), 1)


def _precode_mode(model: nn.Module, mode: str | None) -> str | None:
    from gradleak.models.precode import precode_block

    block = precode_block(model)
    if block is None:
        return None
    old = block.noise
    if mode is not None:
        block.noise = mode
    return old


def simulate_fedavg(model: nn.Module, train: ImageSet, test: ImageSet, defenses: list[Defense] | None = None,
                    cfg: FedAvgConfig | None = None, progress: bool = False) -> dict:
    """Train ``model`` (in place) by simulated FedAvg on ``train`` split over clients; returns
    ``{"accuracy", "initial_accuracy", "history": [{"round", "accuracy"}], "seconds", "config",
    "client_sizes"}``."""
    from tqdm.auto import tqdm

    cfg = cfg or FedAvgConfig()
    cfg.check()
    defenses = list(defenses or [])
    parts = dirichlet_split(train.labels, cfg.num_clients, cfg.alpha, cfg.seed, train.num_classes)
    protocol = Protocol(kind="fedavg", local_steps=cfg.local_steps, lr=cfg.lr, local_batch_size=cfg.local_batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    params, buffers = split_state(model)
    t0 = time.perf_counter()
    old_mode = _precode_mode(model, None)
    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        _precode_mode(model, "mean")
        history.append({"round": 0, "accuracy": accuracy(model, params, buffers, test)})
        bar = tqdm(range(1, cfg.rounds + 1), desc="fedavg", disable=not progress, leave=False, dynamic_ncols=True)
        for r in bar:
            _precode_mode(model, "random")
            chosen = torch.randperm(cfg.num_clients, generator=gen)[:cfg.clients_per_round].tolist()
            total, agg = 0, {n: torch.zeros_like(p) for n, p in params.items()}
            for m in chosen:
                idx = parts[m]
                if idx.numel() == 0:
                    continue
                idx = idx[torch.randperm(idx.numel(), generator=gen)]
                x, y = train.images[idx], train.labels[idx]
                upd = client_update(model, params, buffers, x, y, protocol)
                ctx = ClientContext(model, params, buffers, x, y, protocol, gen)
                for d in defenses:
                    upd = d.apply(upd, ctx)
                n = idx.numel()
                total += n
                for k in agg:
                    agg[k] += n * upd[k].detach()
            if total:
                params = {k: (params[k] - cfg.server_lr * agg[k] / total).detach() for k in params}
            if (cfg.eval_every and r % cfg.eval_every == 0) or r == cfg.rounds:
                _precode_mode(model, "mean")
                history.append({"round": r, "accuracy": accuracy(model, params, buffers, test)})
                bar.set_postfix(acc=f"{history[-1]['accuracy']:.3f}")
        bar.close()
    _precode_mode(model, old_mode)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])
    return {"accuracy": history[-1]["accuracy"], "initial_accuracy": history[0]["accuracy"], "history": history,
            "seconds": time.perf_counter() - t0, "config": asdict(cfg),
            "client_sizes": [int(p.numel()) for p in parts]}
