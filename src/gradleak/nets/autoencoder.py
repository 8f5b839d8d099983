"""A convolutional autoencoder for ROG's learned low-dimensional representation (Yue et al., 2023, §4.1
and the ablation of §4.2: enc/dec "as complicated as a neural network encoder", d_z ∈ {8192, 2048, 512}).

The latent is spatial: the encoder halves the resolution log2(``downsample``) times (stride-2 4×4
convolutions) and ends in ``latent_channels`` = d_z / (R/downsample)² channels, so d_z =
``latent_dim`` must be a multiple of (R/downsample)² (e.g. at 64×64 with downsample 4: 256, 512, 768, …).
The decoder mirrors it (nearest upsampling + 3×3 convolution) and ends in a sigmoid, so decoded images
lie in [0, 1]. Trained on the public side of a dataset with the MSE reconstruction loss (Adam, flips and
90° rotations) by ``gradleak train-autoencoder``; files are safetensors + JSON (no code execution), like
the enhancer's (:mod:`gradleak.nets.enhancer`).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradleak import filepair
from gradleak.errors import bad_value
from gradleak.nets.enhancer import augment, read_pair, save_pair
from gradleak.priors.train import command_line
from gradleak.trainconfig import AutoencoderConfig
from gradleak.trainstate import TrainState, train_loop


def latent_layout(resolution: int, latent_dim: int, downsample: int, key: str = "autoencoder") -> tuple[int, int]:
    """(latent_channels, latent side) for d_z = ``latent_dim``; one-line UserError when impossible."""
    if downsample < 1 or downsample & (downsample - 1):
        raise bad_value(f"{key}.downsample", downsample, "a power of two >= 1")
    if resolution % downsample:
        raise bad_value(f"{key}.resolution", resolution, f"a multiple of downsample = {downsample}")
    side = resolution // downsample
    if latent_dim < side * side or latent_dim % (side * side):
        raise bad_value(f"{key}.latent_dim", latent_dim,
                        f"a positive multiple of (resolution/downsample)^2 = {side * side}")
    return latent_dim // (side * side), side


class ConvAutoencoder(nn.Module):
    """enc: x (N, C, R, R) → z (N, c_z, R/f, R/f); dec: z → x̂ in [0, 1]. d_z = c_z (R/f)²."""

    def __init__(self, channels: int = 3, resolution: int = 64, latent_dim: int = 768, downsample: int = 4,
                 width: int = 32):
        super().__init__()
        self.channels, self.resolution, self.latent_dim = channels, resolution, latent_dim
        self.downsample, self.width = downsample, width
        self.latent_channels, self.side = latent_layout(resolution, latent_dim, downsample)
        n = int(math.log2(downsample))
        enc: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        for _ in range(n):
            enc += [nn.Conv2d(width, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        enc += [nn.Conv2d(width, self.latent_channels, 3, padding=1)]
        dec: list[nn.Module] = [nn.Conv2d(self.latent_channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        for _ in range(n):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1),
                    nn.LeakyReLU(0.2)]
        dec += [nn.Conv2d(width, channels, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def config(self) -> dict:
        return {"channels": self.channels, "resolution": self.resolution, "latent_dim": self.latent_dim,
                "downsample": self.downsample, "width": self.width}

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.side, self.side)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x - 0.5)

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def train_autoencoder(cfg: AutoencoderConfig, out: str | Path, progress: bool = True) -> Path:
    """Train on the public side; writes ``out/autoencoder.safetensors`` + ``.json`` and
    ``out/samples.png`` (originals / reconstructions). Returns the .safetensors path."""
    from gradleak.data import load_dataset
    from gradleak.nets import val_psnr
    from gradleak.imagegrid import image_rows

    cfg.check()
    latent_layout(cfg.resolution, cfg.latent_dim, cfg.downsample, "train-autoencoder")
    out = Path(out)
    data = load_dataset(cfg.data, split=cfg.split, resolution=cfg.resolution, channels=cfg.channels, root=cfg.root)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        ae = ConvAutoencoder(cfg.channels, cfg.resolution, cfg.latent_dim, cfg.downsample, cfg.width)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)

    def step(_i: int) -> float:
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        x = augment(data.images[idx], gen)
        loss = F.mse_loss(ae(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return float(loss.detach())

    state = TrainState(out, cfg.command, asdict(cfg), {"ae": ae}, {"opt": opt}, {"sched": sched}, {"gen": gen},
                       every=cfg.checkpoint_every)
    hist = train_loop(state, cfg.steps, step, "train-autoencoder", progress, shown="mse", digits=5)
    ae.eval()
    k = min(64, len(data))
    with torch.no_grad():
        rec = ae(data.images[:k])
    summary = {"train_psnr": val_psnr(rec, data.images[:k]), "final_mse": sum(hist[-100:]) / len(hist[-100:]),
               "train_seconds": round(time.perf_counter() - t0, 1), "torch_threads": torch.get_num_threads()}
    meta = {"kind": "autoencoder", "arch": ae.config(), "dataset": cfg.data, "split": cfg.split,
            "resolution": cfg.resolution, "channels": cfg.channels, "config": asdict(cfg),
            "command": command_line(), "seed": cfg.seed, "summary": summary}
    st, _ = save_pair(out / "autoencoder", ae.state_dict(), meta)
    state.finished()
    image_rows([data.images[:8], rec[:8]], ["original", "autoencoded"], out / "samples.png",
               scale=max(1, 128 // cfg.resolution))
    return st


def load_autoencoder(path: str | Path, key: str = "attack.options.autoencoder") -> ConvAutoencoder:
    """Load a ``train-autoencoder`` result (directory, stem, .safetensors or .json)."""
    tensors, meta = read_pair(path, "autoencoder", key)
    ae = filepair.build(ConvAutoencoder, meta, key, path)
    filepair.load_state(ae, tensors, key, path)
    ae.meta = meta
    return ae.eval()
