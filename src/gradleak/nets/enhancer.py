"""ROG's enhancement network (Yue et al., 2023, §4.2 and appendix A): a U-Net generator trained with a
PatchGAN discriminator to undo image degradation, applied to the search output as post-processing.

* :class:`UNet` — convolution–InstanceNorm–ReLU blocks, four 2× downsamplings (max-pool), bilinear
  upsampling with skip connections to the matching encoder block; it predicts a residual (output =
  input + U(input)). Optionally class-conditional: a learned label embedding is broadcast as extra
  input channels. Inputs are padded (reflect) to a multiple of 16 (at least 32) and cropped back.
* :class:`PatchDiscriminator` — pix2pix's PatchGAN, conditioned on the degraded input (it sees
  [degraded, candidate] concatenated), one logit per overlapping patch.
* :func:`degrade` — the synthetic training pairs of appendix A: random downsampling (nearest, bilinear or
  bicubic, factor in [2, 5]), Gaussian blur and Gaussian noise, applied **in a random order**, then bicubic
  upsampling back (ROG's decoder); every draw from one ``torch.Generator`` (deterministic).
* :func:`train_enhancer` — L1 + λ·adversarial (non-saturating) loss, Adam, on the public side of a
  dataset with flips / 90° rotations; optionally also on actual ROG outputs of public images
  (``rog_pairs``): public batches are put through a simulated FedAvg client and the ROG search (without
  enhancement) and the (search output, original) pairs join the synthetic ones.
* Files: ``<stem>.safetensors`` (generator weights) + ``<stem>.json`` (architecture, dataset, command,
  seed, training summary), read with safetensors and JSON only — no code execution. Built-in enhancers
  (:data:`BUILTIN_ENHANCERS`) are shipped in ``gradleak/assets/rog_enhancer_*``; their JSON holds the
  exact command and seed that made them.

The paper trains on ImageNet with lr 1e-5; here the public sets are tiny (140 photo crops, 898 digits) and
the budget is minutes on one CPU thread, so widths are small and the lr is 2e-4 (pix2pix's).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradleak import filepair
from gradleak.errors import UserError, bad_value
from gradleak.filepair import write_pair
from gradleak.priors.train import command_line
from gradleak.trainconfig import EnhancerConfig
from gradleak.trainstate import TrainState, train_loop

FORMAT = "gradleak-rog"
VERSION = 1
BUILTIN_ENHANCERS = {"photos64": "rog_enhancer_photos64", "digits32": "rog_enhancer_digits32"}
DOWN_MODES = ("nearest", "bilinear", "bicubic")


# --- file pairs (safetensors + JSON), shared with gradleak.nets.autoencoder ------------------------------

def save_pair(path: str | Path, tensors: dict[str, Tensor], meta: dict) -> tuple[Path, Path]:
    """Write an enhancer / autoencoder / tagger file pair (:func:`gradleak.filepair.write_pair`); ``meta``
    carries its ``kind``, the format defaults to this module's."""
    return write_pair(path, tensors, {"format": FORMAT, "version": VERSION, **meta})


def read_pair(path: str | Path, kind: str, key: str, fmt: str = FORMAT) -> tuple[dict[str, Tensor], dict]:
    """Tensors and metadata of a pair written by :func:`save_pair`; ``fmt`` and ``kind`` must match."""
    return filepair.read_pair(path, key, fmt, kind)


# --- networks --------------------------------------------------------------------------------------------

def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3×3 convolution–InstanceNorm–ReLU layers (ROG appendix A's backbone module)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True), nn.ReLU(),
    )


class UNet(nn.Module):
    """U-Net generator: encoder widths ``width·min(2^i, max_mult)`` for i = 0..depth (``depth`` = 4
    downsamplings), decoder mirrored with skip connections, residual output. ``num_classes`` > 0 makes it
    label-conditional (``embed_dim`` extra input channels from a label embedding)."""

    def __init__(self, channels: int = 3, width: int = 16, depth: int = 4, max_mult: int = 4,
                 num_classes: int = 0, embed_dim: int = 4):
        super().__init__()
        self.channels, self.width, self.depth, self.max_mult = channels, width, depth, max_mult
        self.num_classes, self.embed_dim = num_classes, embed_dim
        widths = [width * min(2 ** i, max_mult) for i in range(depth + 1)]
        cin = channels + (embed_dim if num_classes else 0)
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        self.inc = _block(cin, widths[0])
        self.downs = nn.ModuleList(_block(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(_block(widths[i + 1] + widths[i], widths[i]) for i in range(depth))
        self.out = nn.Conv2d(widths[0], channels, 1)
        nn.init.zeros_(self.out.weight)  # starts as the identity map
        nn.init.zeros_(self.out.bias)

    def config(self) -> dict:
        return {"channels": self.channels, "width": self.width, "depth": self.depth, "max_mult": self.max_mult,
                "num_classes": self.num_classes, "embed_dim": self.embed_dim}

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        H, W = x.shape[-2:]
        m = 2 ** self.depth  # pad to a multiple of 2^depth, and ≥ 2·2^depth (InstanceNorm needs > 1 value)
        ph, pw = max((-H) % m, 2 * m - H), max((-W) % m, 2 * m - W)
        inp = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(H, W) > max(ph, pw) else "replicate") if ph or pw else x
        h = inp - 0.5
        if self.embed is not None:
            if labels is None:
                raise UserError("enhancer: this enhancer is label-conditional; give the labels")
            e = self.embed(labels.long())[:, :, None, None].expand(-1, -1, *h.shape[-2:])
            h = torch.cat([h, e], 1)
        skips = [self.inc(h)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        h = skips.pop()
        for up in reversed(self.ups):
            s = skips.pop()
            h = up(torch.cat([F.interpolate(h, size=s.shape[-2:], mode="bilinear", align_corners=False), s], 1))
        out = inp + self.out(h)
        return out[..., :H, :W]


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix): 4×4 convolutions, ``n_layers`` stride-2 stages (InstanceNorm, LeakyReLU 0.2),
    one logit per patch; conditioned on the degraded image (input: [degraded, candidate])."""

    def __init__(self, channels: int = 3, width: int = 16, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(2 * channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for i in range(1, n_layers):
            n = width * min(2 ** i, 8)
            layers += [nn.Conv2d(c, n, 4, 2, 1), nn.InstanceNorm2d(n, affine=True), nn.LeakyReLU(0.2)]
            c = n
        n = width * min(2 ** n_layers, 8)
        layers += [nn.Conv2d(c, n, 4, 1, 1), nn.InstanceNorm2d(n, affine=True), nn.LeakyReLU(0.2),
                   nn.Conv2d(n, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, degraded: Tensor, candidate: Tensor) -> Tensor:
        return self.net(torch.cat([degraded, candidate], 1) - 0.5)


# --- degradation -----------------------------------------------------------------------------------------

@dataclass
class Degradation:
    """Ranges of the synthetic degradation (appendix A): downsampling factor, blur σ and noise σ (drawn
    uniformly per image; σ in pixels of the resolution the step runs at)."""

    min_factor: float = 2.0
    max_factor: float = 5.0
    max_blur: float = 1.0
    max_noise: float = 0.3


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W) with standard deviation ``sigma`` pixels (reflect padding)."""
    if sigma <= 0:
        return x
    r = max(1, min(int(math.ceil(3 * sigma)), min(x.shape[-2:]) - 1))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    C = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def degrade(x: Tensor, gen: torch.Generator, cfg: Degradation | None = None) -> Tensor:
    """Degrade every image of (N, C, H, W) independently: downsampling (random mode among nearest /
    bilinear / bicubic, random factor), Gaussian blur and Gaussian noise (per channel) **in a random
    order**, then bicubic upsampling back to H×W (ROG's decoder). Blur or noise that comes after the
    downsampling acts on the low-resolution image, so upsampled noise becomes the blotchy colour error the
    ROG search leaves. Deterministic given ``gen``'s state; the result is clamped to [0, 1]."""
    cfg = cfg or Degradation()
    out = []
    H, W = x.shape[-2:]
    for img in x:
        y = img.unsqueeze(0)
        for op in torch.randperm(3, generator=gen).tolist():
            if op == 0:
                f = _uniform(gen, cfg.min_factor, cfg.max_factor)
                mode = DOWN_MODES[int(torch.randint(0, 3, (), generator=gen))]
                size = (max(2, round(H / f)), max(2, round(W / f)))
                y = F.interpolate(y, size=size, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
            elif op == 1:
                y = gaussian_blur(y, _uniform(gen, 0.0, cfg.max_blur))
            else:
                y = y + _uniform(gen, 0.0, cfg.max_noise) * torch.randn(y.shape, generator=gen, dtype=y.dtype)
        if tuple(y.shape[-2:]) != (H, W):
            y = F.interpolate(y, size=(H, W), mode="bicubic", align_corners=False)
        out.append(y.clamp(0, 1))
    return torch.cat(out)


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random horizontal flip and 90° rotation per image (square images)."""
    out = []
    for img in x:
        if float(torch.rand((), generator=gen)) < 0.5:
            img = img.flip(-1)
        k = int(torch.randint(0, 4, (), generator=gen))
        out.append(torch.rot90(img, k, (-2, -1)) if img.shape[-1] == img.shape[-2] else img)
    return torch.stack(out)


# --- the enhancer as the attack uses it -------------------------------------------------------------------

class Enhancer:
    """A trained :class:`UNet` plus its metadata; ``enhancer(images, labels)`` → enhanced images in [0, 1].

    Images with 3 channels through a 1-channel enhancer are enhanced channel by channel; 1-channel images
    through a 3-channel enhancer are repeated to RGB and converted back to luminance."""

    def __init__(self, net: UNet, meta: dict, name: str = ""):
        self.net, self.meta, self.name = net.eval(), meta, name or meta.get("name", "enhancer")

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        c, ce = images.shape[1], self.net.channels
        lab = labels if self.net.num_classes else None
        if lab is not None:
            lab = lab.long().clamp(0, self.net.num_classes - 1)
        if c == ce:
            return self.net(images, lab).clamp(0, 1)
        if ce == 1:
            n = images.shape[0]
            flat = images.reshape(n * c, 1, *images.shape[-2:])
            lab = None if lab is None else lab.repeat_interleave(c)
            return self.net(flat, lab).reshape(images.shape).clamp(0, 1)
        if c == 1 and ce == 3:
            from gradleak.data.base import to_channels

            return to_channels(self.net(images.repeat(1, 3, 1, 1), lab).clamp(0, 1), 1)
        raise UserError(f"enhancer: a {ce}-channel enhancer cannot enhance {c}-channel images")


def builtin_enhancer_path(name: str) -> Path:
    return Path(str(resources.files("gradleak") / "assets" / f"{BUILTIN_ENHANCERS[name]}.safetensors"))


def load_enhancer(spec: str | Path, key: str = "enhancer") -> Enhancer:
    """A built-in name (:data:`BUILTIN_ENHANCERS`) or a path (stem, .safetensors, .json or the
    ``train-enhancer`` output directory)."""
    text = str(spec)
    if text in BUILTIN_ENHANCERS:
        path = builtin_enhancer_path(text)
        if not path.is_file():
            raise UserError(f"{key}: built-in enhancer {text!r} is not installed ({path} missing)")
    else:
        path = Path(text).expanduser()
        if not path.exists() and not path.with_suffix(".safetensors").exists():
            raise bad_value(key, text, f"{', '.join(BUILTIN_ENHANCERS)}, auto, none, or a path to an enhancer "
                                       "(.safetensors + .json, or a train-enhancer output directory)")
    tensors, meta = read_pair(path, "enhancer", key)
    net = filepair.build(UNet, meta, key, path)
    filepair.load_state(net, tensors, key, path)
    return Enhancer(net, meta, text)


def auto_enhancer(channels: int, resolution: int, exact: bool = False) -> str | None:
    """The built-in enhancer for images of this shape: same channels and resolution first, then same
    channels (the U-Net is fully convolutional), then a 1-channel one applied per channel; None if none.
    ``exact``: only one trained at this very channel count and resolution (ROG's ``enhancer: auto``: on
    32 px photographs the 64 px ``photos64`` lowered ROG's output by 0.8–1.8 dB, docs/defaults.md)."""
    found = []
    for name in BUILTIN_ENHANCERS:
        path = builtin_enhancer_path(name)
        if path.is_file():
            try:
                meta = json.loads(path.with_suffix(".json").read_text())
            except (OSError, ValueError):
                continue
            found.append((name, meta["arch"]["channels"], meta.get("resolution", 0)))
    rules = [lambda c, r: c == channels and r == resolution]
    if not exact:
        rules += [lambda c, r: c == channels, lambda c, r: c == 1]
    for rule in rules:
        hits = [n for n, c, r in found if rule(c, r)]
        if hits:
            return min(hits, key=lambda n: abs(dict((a, r) for a, _, r in found)[n] - resolution))
    return None


# --- training --------------------------------------------------------------------------------------------

def _public(cfg: EnhancerConfig):
    from gradleak.data import load_dataset

    data = load_dataset(cfg.data, split=cfg.split, resolution=cfg.resolution, channels=cfg.channels, root=cfg.root)
    big = None
    if cfg.crops:
        big = load_dataset(cfg.data, split=cfg.split, resolution=2 * cfg.resolution, channels=cfg.channels,
                           root=cfg.root)
    return data, big


def _batch(data, big, cfg: EnhancerConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    n, R = len(data), cfg.resolution
    idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
    x, y = data.images[idx].clone(), data.labels[idx].clone()
    if big is not None:  # half the batch: a random R×R crop of the 2R version
        for j in range(0, cfg.batch_size, 2):
            t, l = (int(torch.randint(0, R + 1, (), generator=gen)) for _ in range(2))
            x[j] = big.images[idx[j], :, t:t + R, l:l + R]
    return augment(x, gen), y


def train_enhancer(cfg: EnhancerConfig, out: str | Path, progress: bool = True,
                   pairs: tuple[Tensor, Tensor, Tensor] | None = None) -> Path:
    """Train the enhancer (see the module docstring); writes ``out/enhancer.safetensors`` + ``.json`` and
    ``out/samples.png`` (degraded / enhanced / original rows). Returns the .safetensors path.
    ``pairs``: (attack outputs, originals, labels) to train on every other step — ROG's own outputs, made by
    :func:`gradleak.experiments.rog_pairs.rog_output_pairs` (an attack is a higher layer than this network)."""
    cfg.check()
    out = Path(out)
    data, big = _public(cfg)
    ncls = data.num_classes if cfg.conditional else 0
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G = UNet(cfg.channels, cfg.width, cfg.depth, num_classes=ncls)
        n_layers = 3  # pix2pix's 70×70 PatchGAN; fewer stride-2 stages for small images (≥ 4×4 maps)
        while n_layers > 1 and cfg.resolution // 2 ** n_layers < 4:
            n_layers -= 1
        D = PatchDiscriminator(cfg.channels, cfg.disc_width, n_layers)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    # a fixed validation batch of degraded public images, to report what the training achieved
    vgen = torch.Generator().manual_seed(cfg.seed + 1)
    vidx = torch.randperm(len(data), generator=vgen)[:min(32, len(data))]
    vx, vy = data.images[vidx], data.labels[vidx]
    deg = Degradation(max_noise=cfg.max_noise, max_blur=cfg.max_blur)
    vdeg = degrade(vx, vgen, deg)

    def step(i: int) -> float:
        x, y = _batch(data, big, cfg, gen)
        xd = degrade(x, gen, deg)
        if pairs is not None and i % 2 == 1:  # every other step: actual ROG outputs
            j = torch.randint(0, pairs[0].shape[0], (cfg.batch_size,), generator=gen)
            xd, x, y = pairs[0][j], pairs[1][j], pairs[2][j]
        lab = y if ncls else None
        fake = G(xd, lab)
        if cfg.adv_weight > 0:
            opt_d.zero_grad(set_to_none=True)
            d_real, d_fake = D(xd, x), D(xd, fake.detach())
            loss_d = 0.5 * (bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake)))
            loss_d.backward()
            opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        l1 = (fake - x).abs().mean()
        loss_g = l1
        if cfg.adv_weight > 0:
            d_out = D(xd, fake)
            loss_g = loss_g + cfg.adv_weight * bce(d_out, torch.ones_like(d_out))
        loss_g.backward()
        opt_g.step()
        return float(l1.detach())

    state = TrainState(out, cfg.command, asdict(cfg), {"G": G, "D": D}, {"opt_g": opt_g, "opt_d": opt_d},
                       generators={"gen": gen}, every=cfg.checkpoint_every)
    l1_hist = train_loop(state, cfg.steps, step, "train-enhancer", progress, shown="l1", digits=4)
    G.eval()
    with torch.no_grad():
        venh = G(vdeg, vy if ncls else None).clamp(0, 1)
    from gradleak.nets import val_psnr

    summary = {"val_psnr_degraded": val_psnr(vdeg, vx), "val_psnr_enhanced": val_psnr(venh, vx),
               "final_l1": sum(l1_hist[-100:]) / len(l1_hist[-100:]),
               "train_seconds": round(time.perf_counter() - t0, 1), 
               "torch_threads": torch.get_num_threads()}
    meta = {"kind": "enhancer", "arch": G.config(), "dataset": cfg.data, "split": cfg.split,
            "resolution": cfg.resolution, "channels": cfg.channels, "config": asdict(cfg),
            "command": command_line(), "seed": cfg.seed, "summary": summary}
    st, _ = save_pair(out / "enhancer", G.state_dict(), meta)
    state.finished()
    from gradleak.imagegrid import image_rows

    k = min(8, vx.shape[0])
    image_rows([vdeg[:k], venh[:k], vx[:k]], ["degraded", "enhanced", "original"], out / "samples.png",
               scale=max(1, 128 // cfg.resolution))
    return st
