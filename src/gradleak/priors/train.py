"""Train a DCGAN prior on the public side of a dataset (what ``gradleak train-prior`` runs).

Non-saturating GAN loss (Goodfellow et al., 2014), Adam(2e-4, β = (0.5, 0.999)) for both nets (DCGAN),
optional differentiable random translation of real and fake images before D (DiffAugment, Zhao et al.,
2020 — the built-in public sets are small: 898 digits, 140 photo crops). Every source of randomness
(batch order, z, augmentation) is one seeded ``torch.Generator`` whose state is checkpointed, so a
resumed run continues bit-identically. Writes into ``out``:

    checkpoint.safetensors / .json   resume point (G, D, Adam states, RNG, step), every ``checkpoint_every``
    samples/step_XXXXXX.png          a grid of G(z) for fixed z, every ``sample_every`` steps
    prior.safetensors / .json        the generator alone (BN statistics recalibrated), the attack prior
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gradleak.errors import UserError
from gradleak.priors.checkpoint import load_checkpoint, save_checkpoint, save_prior
from gradleak.priors.dcgan import DCGANDiscriminator, DCGANGenerator, calibrate_bn
from gradleak.trainconfig import PriorConfig
from gradleak.trainstate import changed_settings, incomplete, say_interrupted, train_loop


TrainConfig = PriorConfig  # train-prior's settings (gradleak.trainconfig), under the name its callers import


class _Resumed:
    """train-prior's checkpoint (a prior-file layout, :mod:`gradleak.priors.checkpoint`) as the
    :class:`gradleak.trainstate.Checkpoint` of :func:`gradleak.trainstate.train_loop`, already resumed."""

    def __init__(self, step: int, save, path: Path, every: int):
        self.step, self.save, self.path, self.every = step, save, path, every

    def resume(self) -> tuple[int, list]:
        return self.step, []

    def step_done(self, step: int, history: list, stop_requested: bool = False) -> None:
        if self.every and step % self.every == 0:
            self.save(step)
        if stop_requested:
            self.save(step)
            say_interrupted("train-prior", step, self.path)
            raise KeyboardInterrupt


def translate(x: Tensor, shifts: Tensor, pad: int) -> Tensor:
    """Shift each image by integer ``shifts`` (N, 2) pixels (rows, cols), edge-replicated; differentiable."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    iy = torch.arange(h)[None] + pad - shifts[:, :1]
    ix = torch.arange(w)[None] + pad - shifts[:, 1:]
    rows = xp.gather(2, iy[:, None, :, None].expand(n, c, h, w + 2 * pad))
    return rows.gather(3, ix[:, None, None, :].expand(n, c, h, w))


def _augment(x: Tensor, gen: torch.Generator, on: bool) -> Tensor:
    if not on:
        return x
    pad = max(1, x.shape[-1] // 8)
    return translate(x, torch.randint(-pad, pad + 1, (x.shape[0], 2), generator=gen), pad)


def command_line() -> str:
    """The command that is running, for provenance in the JSON metadata of trained files."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("gradleak", "cli.py", "__main__.py"):
        argv[0] = "gradleak"
    return " ".join(shlex.quote(a) for a in argv)


def train_prior(cfg: TrainConfig, out: str | Path, resume: bool = True, progress: bool = True,
                command: str | None = None) -> Path:
    """Train (or resume) and write the run directory; returns the path of ``prior.safetensors``."""
    from gradleak.data import load_dataset
    from gradleak.imagegrid import image_rows

    cfg.check()
    out = Path(out)
    data = load_dataset(cfg.data, split=cfg.split, resolution=cfg.resolution, channels=cfg.channels,
                        root=cfg.root, seed=cfg.seed)
    images = data.images * 2 - 1
    labels = data.labels
    K = data.num_classes if cfg.conditional else 0
    torch.manual_seed(cfg.seed)  # initialisation only; training randomness comes from `rng`
    G = DCGANGenerator(cfg.latent_dim, cfg.width, cfg.channels, cfg.resolution, K)
    D = DCGANDiscriminator(cfg.width, cfg.channels, cfg.resolution, K)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    rng = torch.Generator().manual_seed(cfg.seed)
    fixed_gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    fixed_z = torch.randn(32, cfg.latent_dim, generator=fixed_gen)
    present = labels.unique()
    fixed_y = present[torch.arange(32) % len(present)] if K else None
    ckpt = out / "checkpoint"
    step, elapsed = 0, 0.0
    config = {**asdict(cfg)}
    n = len(labels)
    perm, pos = torch.randperm(n, generator=rng), 0
    if resume and ckpt.with_suffix(".json").exists():
        try:
            saved = json.loads(ckpt.with_suffix(".json").read_text(encoding="utf-8"))
        except ValueError as err:
            raise UserError(f"train-prior: cannot read {ckpt}.json: {err}") from None
        saved = saved.get("config") if isinstance(saved, dict) else None
        if not isinstance(saved, dict):
            raise UserError(f"train-prior: {ckpt}.json is not a train-prior checkpoint (no config object); "
                            "use a new --out or --no-resume")
        free = ("steps", "sample_every", "checkpoint_every")
        changed = changed_settings(saved, config, free)
        if changed:
            raise UserError(f"train-prior: {ckpt}.json was trained with different settings ({', '.join(changed)}); "
                            "use a new --out or --no-resume")
        try:
            meta, extra = load_checkpoint(ckpt, G, D, opt_g, opt_d, rng)
            step, elapsed = int(meta["step"]), float(meta.get("seconds", 0.0))
            perm, pos = extra["epoch_order"], int(meta["epoch_position"])
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            raise incomplete("train-prior", ckpt, err, "use a new --out or --no-resume") from None
    command = command or command_line()
    (out / "samples").mkdir(parents=True, exist_ok=True)

    def snapshot(s: int) -> None:
        G.eval()
        with torch.no_grad():
            x = (G(fixed_z, fixed_y) + 1) / 2
        G.train()
        image_rows([x[:16], x[16:]], [f"step {s}", ""], out / "samples" / f"step_{s:06d}.png", scale=2)

    def checkpoint(s: int) -> None:
        save_checkpoint(ckpt, G, D, opt_g, opt_d, rng, s,
                        {"config": config, "seconds": elapsed + time.perf_counter() - t0, "command": command,
                         "epoch_position": pos, "generator_config": G.config()}, {"epoch_order": perm})

    G.train()
    D.train()
    t0 = time.perf_counter()
    if step == 0:
        snapshot(0)

    def train_step(i: int) -> dict | None:
        nonlocal perm, pos
        # batch without replacement within an epoch, drawn from the checkpointed RNG
        if pos + cfg.batch_size > n:
            perm, pos = torch.randperm(n, generator=rng), 0
        idx = perm[pos:pos + min(cfg.batch_size, n)]
        pos += len(idx)
        real, y = images[idx], labels[idx]
        yk = y if K else None
        z = torch.randn(len(idx), cfg.latent_dim, generator=rng)
        fake = G(z, yk)
        d_real = D(_augment(real, rng, cfg.augment), yk)
        d_fake = D(_augment(fake.detach(), rng, cfg.augment), yk)
        loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.softplus(-D(_augment(fake, rng, cfg.augment), yk)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if cfg.sample_every and (i + 1) % cfg.sample_every == 0:
            snapshot(i + 1)
        return {"loss_d": f"{loss_d.item():.3f}", "loss_g": f"{loss_g.item():.3f}"} if i % 20 == 0 else None

    train_loop(_Resumed(step, checkpoint, ckpt, cfg.checkpoint_every), cfg.steps, train_step,
               f"train-prior {cfg.data}", progress)
    step = max(step, cfg.steps)
    checkpoint(step)
    snapshot(step)
    return export_prior(G, cfg, out / "prior", step, elapsed + time.perf_counter() - t0, command)


def export_prior(G: DCGANGenerator, cfg: TrainConfig, path: Path, step: int, seconds: float, command: str) -> Path:
    """Recalibrate G's BN statistics (precise BN, fixed seed) and write the prior file pair."""
    import copy

    G = copy.deepcopy(G)
    gen = torch.Generator().manual_seed(20_000 + cfg.seed)
    K = G.num_classes

    def inputs(_i):
        z = torch.randn(128, G.latent_dim, generator=gen)
        return (z, torch.randint(0, K, (128,), generator=gen)) if K else (z,)

    calibrate_bn(G, inputs, batches=32)
    info = {"dataset": cfg.data, "split": cfg.split, "steps": step, "seed": cfg.seed, "command": command,
            "train_seconds": round(seconds, 1), "train_config": asdict(cfg), "torch": torch.__version__,
            "output_range": [-1.0, 1.0]}
    st, _ = save_prior(path, G.eval(), "dcgan", G.config(), info)
    return st
