"""A compact StyleGAN2 generator (Karras et al., 2020) whose state-dict keys follow rosinality's
``stylegan2-pytorch`` ``Generator`` (the ``g_ema`` entry of its checkpoints, and of checkpoints converted
from the official TensorFlow/PyTorch releases with its ``convert_weight.py``), so public weights load
as they are:

    style.{1..n_mlp}.weight / .bias              mapping MLP (EqualLinear, lr_mul 0.01, fused lReLU)
    input.input                                  (1, C4, 4, 4) constant
    conv1.conv.weight                            (1, out, in, 3, 3)   modulated conv
    conv1.conv.modulation.weight / .bias         (in, style_dim) / (in,)
    conv1.noise.weight                           (1,)
    conv1.activate.bias                          (out,)
    to_rgb1.conv.weight / .modulation.*          (1, 3, in, 1, 1) …, to_rgb1.bias (1, 3, 1, 1)
    convs.{2i}, convs.{2i+1}                     upsampling / plain StyledConv per resolution 8 … size
    convs.{2i}.conv.blur.kernel                  (4, 4) buffer
    to_rgbs.{i}.*, to_rgbs.{i}.upsample.kernel   (4, 4) buffer
    noises.noise_{j}                             (1, 1, r, r) fixed noise buffers

Equalised learning rate: weights are stored unscaled and multiplied by 1/√fan_in (× lr_mul) in the
forward pass, as there. Channel counts are read from the tensors, so any size / channel multiplier — and
tiny random instances in tests — load. Noise is the stored ``noises.*`` buffers (rosinality's
``randomize_noise=False``), so the synthesis is a deterministic function of the W / W+ latent.

Loading never executes code: ``torch.load(weights_only=True)`` (``argparse.Namespace``, the ``args``
entry of rosinality's training checkpoints, is allow-listed as inert data) or safetensors.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradleak.errors import UserError

SQRT2 = math.sqrt(2.0)


def _blur_kernel(k=(1, 3, 3, 1)) -> Tensor:
    t = torch.tensor(k, dtype=torch.float32)
    t = t[None, :] * t[:, None]
    return t / t.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """rosinality's ``upfirdn2d_native`` for down=1: insert ``up − 1`` zeros after every pixel, pad
    (pad0 before, pad1 after), then correlate every channel with the flipped FIR ``kernel``."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    k = torch.flip(kernel, [0, 1]).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, k, groups=c)


class EqualLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale, self.lr_mul, self.activation = lr_mul / math.sqrt(in_dim), lr_mul, activation

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight * self.scale)
        if self.activation:
            return F.leaky_relu(out + self.bias * self.lr_mul, 0.2) * SQRT2
        return out + self.bias * self.lr_mul


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)


class Blur(nn.Module):
    def __init__(self, pad: tuple[int, int], factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", _blur_kernel() * factor ** 2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, 1, self.pad)


class Upsample(nn.Module):
    def __init__(self, factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", _blur_kernel() * factor ** 2)
        p = self.kernel.shape[0] - factor
        self.factor, self.pad = factor, ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, self.factor, self.pad)


class ModulatedConv2d(nn.Module):
    """Weight modulation by the style, demodulation, optional ×2 transposed-conv upsampling + blur."""

    def __init__(self, in_ch: int, out_ch: int, k: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False):
        super().__init__()
        self.in_ch, self.out_ch, self.k = in_ch, out_ch, k
        self.scale = 1 / math.sqrt(in_ch * k * k)
        self.padding = k // 2
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, k, k))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.demodulate, self.upsample = demodulate, upsample
        if upsample:
            factor = 2
            p = (4 - factor) - (k - 1)
            self.blur = Blur(((p + 1) // 2 + factor - 1, p // 2 + 1), factor)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        b, cin, h, w = x.shape
        s = self.modulation(style).reshape(b, 1, cin, 1, 1)
        weight = self.scale * self.weight * s
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).reshape(b, self.out_ch, 1, 1, 1)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * cin, self.out_ch, self.k, self.k)
            out = F.conv_transpose2d(x.reshape(1, b * cin, h, w), weight, padding=0, stride=2, groups=b)
            out = out.reshape(b, self.out_ch, out.shape[-2], out.shape[-1])
            return self.blur(out)
        weight = weight.reshape(b * self.out_ch, cin, self.k, self.k)
        out = F.conv2d(x.reshape(1, b * cin, h, w), weight, padding=self.padding, groups=b)
        return out.reshape(b, self.out_ch, h, w)


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(ch))

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1), 0.2) * SQRT2


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True, rgb: int = 3):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_ch, rgb, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, rgb, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, ch: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, ch, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


def default_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """rosinality's channel plan {4: 512, …, 64: 256·cm, 128: 128·cm, …} up to ``size``."""
    plan = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
            256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {r: c for r, c in plan.items() if r <= size}


class StyleGAN2Generator(nn.Module):
    """StyleGAN2 generator. ``channels`` maps each resolution 4 … size to its width (default: the
    official plan). ``mapping(z)`` gives w; ``synthesis(ws)`` takes ws (N, n_latent, style_dim) = W+."""

    output_range = (-1.0, 1.0)

    def __init__(self, size: int = 256, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 channels: dict[int, int] | None = None, lr_mlp: float = 0.01, rgb: int = 3):
        super().__init__()
        log = int(math.log2(size))
        if 2 ** log != size or size < 4:
            raise UserError(f"prior: StyleGAN2 size must be a power of two >= 4, got {size}")
        self.size, self.style_dim, self.n_mlp, self.log_size = size, style_dim, n_mlp, log
        self.channels = {int(k): int(v) for k, v in (channels or default_channels(size, channel_multiplier)).items()}
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True)
                                                   for _ in range(n_mlp)])
        c4 = self.channels[4]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, style_dim)
        self.to_rgb1 = ToRGB(c4, style_dim, upsample=False, rgb=rgb)
        self.num_layers = (log - 2) * 2 + 1
        self.noises = nn.Module()
        for j in range(self.num_layers):
            r = 2 ** ((j + 5) // 2)
            self.noises.register_buffer(f"noise_{j}", torch.randn(1, 1, r, r))
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        cin = c4
        for i in range(3, log + 1):
            cout = self.channels[2 ** i]
            self.convs.append(StyledConv(cin, cout, style_dim, upsample=True))
            self.convs.append(StyledConv(cout, cout, style_dim))
            self.to_rgbs.append(ToRGB(cout, style_dim, rgb=rgb))
            cin = cout
        self.n_latent = log * 2 - 2

    def config(self) -> dict:
        return {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
                "channels": {str(k): v for k, v in self.channels.items()}}

    def mapping(self, z: Tensor) -> Tensor:
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> Tensor:
        return self.style(torch.randn(n, self.style_dim, generator=generator)).mean(0)

    def synthesis(self, ws: Tensor) -> Tensor:
        if ws.dim() == 2:
            ws = ws[:, None].expand(-1, self.n_latent, -1)
        noise = [getattr(self.noises, f"noise_{j}") for j in range(self.num_layers)]
        out = self.conv1(self.input(ws.shape[0]), ws[:, 0], noise[0])
        skip = self.to_rgb1(out, ws[:, 1])
        i = 1
        for c1, c2, n1, n2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs):
            out = c1(out, ws[:, i], n1)
            out = c2(out, ws[:, i + 1], n2)
            skip = to_rgb(out, ws[:, i + 2], skip)
            i += 2
        return skip

    def forward(self, z: Tensor) -> Tensor:
        return self.synthesis(self.mapping(z))


class StyleGAN2Latent(nn.Module):
    """Wraps a StyleGAN2 generator as ``forward(latent) → image`` for a search space:
    ``"z"`` (N, style_dim) through the mapping net, ``"w"`` (N, style_dim) broadcast to every layer,
    ``"w+"`` (N, n_latent, style_dim) one style per layer (Abdal et al., 2020)."""

    output_range = (-1.0, 1.0)

    def __init__(self, g: StyleGAN2Generator, space: str = "w+"):
        super().__init__()
        if space not in ("z", "w", "w+"):
            raise UserError(f"prior: StyleGAN2 latent space: got {space!r}; allowed: z, w, w+")
        self.g, self.space = g, space

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.g.n_latent, self.g.style_dim) if self.space == "w+" else (self.g.style_dim,)

    def forward(self, latent: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.space == "z":
            return self.g.synthesis(self.g.mapping(latent))
        return self.g.synthesis(latent)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.g.style_dim, generator=generator)
        if self.space == "z":
            return z
        with torch.no_grad():
            w = self.g.mapping(z)
        return w[:, None].expand(-1, self.g.n_latent, -1).clone() if self.space == "w+" else w

    def adapt(self, name: str) -> bool:
        """GI-w searches the synthesis weights; the mapping net is searched only in z space."""
        return self.space == "z" or not name.startswith("g.style.")


_CONV = re.compile(r"^convs\.(\d+)\.conv\.weight$")


def infer_config(sd: dict[str, Tensor]) -> dict:
    """Architecture of a rosinality-layout state dict, read from the tensor shapes."""
    try:
        style_dim = sd["conv1.conv.modulation.weight"].shape[1]
        n_mlp = len({k.split(".")[1] for k in sd if k.startswith("style.") and k.endswith(".weight")})
        n_convs = len([k for k in sd if _CONV.match(k)])
        size = 2 ** (2 + n_convs // 2)
        channels = {4: int(sd["conv1.conv.weight"].shape[1])}
        for i in range(n_convs // 2):
            channels[2 ** (3 + i)] = int(sd[f"convs.{2 * i}.conv.weight"].shape[1])
        rgb = int(sd["to_rgb1.conv.weight"].shape[1])
    except KeyError as err:
        raise UserError(f"prior: not a StyleGAN2 (rosinality g_ema) state dict: missing key {err}") from None
    return {"size": size, "style_dim": int(style_dim), "n_mlp": n_mlp, "channels": channels, "rgb": rgb}


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], Tensor | None]:
    """The generator state dict (``g_ema`` when present) and ``latent_avg`` (or None) of a checkpoint
    (.pt/.pth via ``torch.load(weights_only=True)``, or .safetensors, keys optionally prefixed ``g_ema.``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from gradleak.safefile import read_safetensors

        sd, _ = read_safetensors(path, "prior")  # validated header: a corrupt file is one line
        if any(k.startswith("g_ema.") for k in sd):
            avg = sd.get("latent_avg")
            return {k[6:]: v for k, v in sd.items() if k.startswith("g_ema.")}, avg
        return {k: v for k, v in sd.items() if k != "latent_avg"}, sd.get("latent_avg")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable / unsafe file is one line
        raise UserError(f"prior: cannot read {path} with torch.load(weights_only=True): "
                        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"prior: {path} does not hold a dict")
    avg = ckpt.get("latent_avg")
    sd = ckpt.get("g_ema", ckpt)
    if not isinstance(sd, dict):
        raise UserError(f"prior: {path}['g_ema'] is not a state dict")
    return {k: v for k, v in sd.items() if isinstance(v, Tensor) and k != "latent_avg"}, avg


def stylegan2_from_state_dict(sd: dict[str, Tensor]) -> StyleGAN2Generator:
    """Build the generator the state dict describes and load it strictly (every key must match)."""
    cfg = infer_config(sd)
    g = StyleGAN2Generator(cfg["size"], cfg["style_dim"], cfg["n_mlp"], channels=cfg["channels"], rgb=cfg["rgb"])
    missing, unexpected = g.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise UserError(f"prior: StyleGAN2 state dict does not match the rosinality layout "
                        f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return g.eval()
