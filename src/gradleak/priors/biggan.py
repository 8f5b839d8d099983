"""BigGAN-deep generator (Brock et al., 2019) in the layout of huggingface's ``pytorch-pretrained-BigGAN``
(``pytorch_model.bin`` + ``config.json``), so its public 128/256/512 checkpoints load by key name — the
generator ROGS uses in the paper (§6). Nothing is downloaded: give the files' directory.

    cond = [z, E·onehot(y)]                       shared class embedding ``embeddings`` (no bias)
    h    = reshape(gen_z(cond)) as (16·ch, 4, 4)  (TF layout: view (4, 4, C), permuted)
    h    = GenBlock / SelfAttn … (``layers``)     each GenBlock: 4 × [class-conditional BN → ReLU → conv],
                                                  1×1 → 3×3 (2× nearest up first, if up_sample) → 3×3 → 1×1,
                                                  residual (channels dropped to out_size, upsampled)
    x    = tanh(conv_to_rgb(ReLU(BN(h)))[:, :3])  in (−1, 1)

Class-conditional BN (``BigGANBatchNorm``): stored statistics for ``n_stats`` truncation values
(``running_means`` / ``running_vars``, interpolated as the reference does), gain ``1 + scale(cond)``, bias
``offset(cond)`` (linear maps of the conditioning vector). Spectrally normalised layers are stored as
``weight_orig`` + ``weight_u`` (+ ``weight_v``) — the ``torch.nn.utils.spectral_norm`` state-dict names; here
the weight is ``weight_orig / σ`` with σ = uᵀ W v from the stored vectors (eval mode: no power iteration;
when ``weight_v`` is absent, v = normalise(Wᵀu), as torch's loader does). Key names were taken from the
reference implementation (``gen_z``, ``layers.<i>.bn_<k>.scale``/``offset``, ``conv_<k>``,
``snconv1x1_theta``/``phi``/``g``/``o_conv``, ``gamma``, ``bn``, ``conv_to_rgb``, ``embeddings``).

:func:`load_biggan` returns a :class:`gradleak.priors.Prior` (conditional, latent z ∈ R^{z_dim}, initial latents
from the truncated normal at ``truncation``), usable by ROGS and the GIAS attacks.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradleak.errors import UserError, bad_value

WEIGHTS_NAMES = ("pytorch_model.bin", "model.safetensors", "pytorch_model.safetensors")
CONFIG_NAME = "config.json"


@dataclass
class BigGANConfig:
    """``config.json`` of pytorch-pretrained-BigGAN (defaults: the 128×128 model)."""

    output_dim: int = 128
    z_dim: int = 128
    class_embed_dim: int = 128
    channel_width: int = 128
    num_classes: int = 1000
    layers: list = field(default_factory=lambda: [
        (False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4),
        (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1)])
    attention_layer_position: int = 8
    eps: float = 1e-4
    n_stats: int = 51

    @classmethod
    def from_dict(cls, d: dict) -> "BigGANConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        cfg = cls(**known)
        cfg.layers = [tuple(layer) for layer in cfg.layers]
        return cfg


class _SN(nn.Module):
    """Spectral normalisation with stored singular vectors (state-dict names of torch's spectral_norm)."""

    def _init_sn(self, shape: tuple[int, ...], eps: float) -> None:
        self.weight_orig = nn.Parameter(torch.randn(shape) * 0.02)
        w = self.weight_orig.detach().reshape(shape[0], -1)
        u = F.normalize(torch.randn(shape[0]), dim=0, eps=eps)
        for _ in range(20):  # power iteration, so a fresh instance has σ ≈ the top singular value
            v = F.normalize(w.t() @ u, dim=0, eps=eps)
            u = F.normalize(w @ v, dim=0, eps=eps)
        self.register_buffer("weight_u", u)
        self.register_buffer("weight_v", v)
        self.sn_eps = eps

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key_v, key_u, key_w = prefix + "weight_v", prefix + "weight_u", prefix + "weight_orig"
        if key_v not in state_dict and key_u in state_dict and key_w in state_dict:
            w = state_dict[key_w].reshape(state_dict[key_w].shape[0], -1)
            state_dict[key_v] = F.normalize(w.t() @ state_dict[key_u], dim=0, eps=self.sn_eps)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def weight(self) -> Tensor:
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, w.reshape(w.shape[0], -1) @ self.weight_v)
        return w / sigma


class SNLinear(_SN):
    def __init__(self, fin: int, fout: int, bias: bool = True, eps: float = 1e-12):
        super().__init__()
        self._init_sn((fout, fin), eps)
        self.bias = nn.Parameter(torch.zeros(fout)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight(), self.bias)


class SNConv2d(_SN):
    def __init__(self, cin: int, cout: int, kernel_size: int = 1, padding: int = 0, bias: bool = True,
                 eps: float = 1e-12):
        super().__init__()
        self._init_sn((cout, cin, kernel_size, kernel_size), eps)
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)


class BigGANBatchNorm(nn.Module):
    """BN with stored per-truncation statistics; conditional: gain 1 + scale(c), bias offset(c)."""

    def __init__(self, num_features: int, condition_dim: int | None = None, n_stats: int = 51, eps: float = 1e-4,
                 conditional: bool = True):
        super().__init__()
        self.eps, self.conditional = eps, conditional
        self.register_buffer("running_means", torch.zeros(n_stats, num_features))
        self.register_buffer("running_vars", torch.ones(n_stats, num_features))
        self.step_size = 1.0 / (n_stats - 1)
        if conditional:
            self.scale = SNLinear(condition_dim, num_features, bias=False, eps=eps)
            self.offset = SNLinear(condition_dim, num_features, bias=False, eps=eps)
        else:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))

    def stats(self, truncation: float) -> tuple[Tensor, Tensor]:
        coef, start = math.modf(truncation / self.step_size)
        start = int(start)
        if coef != 0.0:  # the reference's interpolation, kept as is
            mean = self.running_means[start] * coef + self.running_means[start + 1] * (1 - coef)
            var = self.running_vars[start] * coef + self.running_vars[start + 1] * (1 - coef)
        else:
            mean, var = self.running_means[start], self.running_vars[start]
        return mean, var

    def forward(self, x: Tensor, truncation: float, cond: Tensor | None = None) -> Tensor:
        mean, var = self.stats(truncation)
        h = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        if self.conditional:
            return h * (1 + self.scale(cond)[:, :, None, None]) + self.offset(cond)[:, :, None, None]
        return h * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class SelfAttn(nn.Module):
    """SAGAN self-attention (θ, φ, g 1×1 convs, 2×2 max-pooled keys/values, output conv, learned γ)."""

    def __init__(self, ch: int, eps: float = 1e-12):
        super().__init__()
        self.snconv1x1_theta = SNConv2d(ch, ch // 8, 1, bias=False, eps=eps)
        self.snconv1x1_phi = SNConv2d(ch, ch // 8, 1, bias=False, eps=eps)
        self.snconv1x1_g = SNConv2d(ch, ch // 2, 1, bias=False, eps=eps)
        self.snconv1x1_o_conv = SNConv2d(ch // 2, ch, 1, bias=False, eps=eps)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        n, ch, h, w = x.shape
        theta = self.snconv1x1_theta(x).reshape(n, ch // 8, h * w)
        phi = F.max_pool2d(self.snconv1x1_phi(x), 2).reshape(n, ch // 8, h * w // 4)
        attn = torch.softmax(theta.transpose(1, 2) @ phi, -1)
        g = F.max_pool2d(self.snconv1x1_g(x), 2).reshape(n, ch // 2, h * w // 4)
        o = (g @ attn.transpose(1, 2)).reshape(n, ch // 2, h, w)
        return x + self.gamma * self.snconv1x1_o_conv(o)


class GenBlock(nn.Module):
    def __init__(self, in_size: int, out_size: int, condition_dim: int, up_sample: bool, n_stats: int, eps: float,
                 reduction: int = 4):
        super().__init__()
        mid = in_size // reduction
        self.up_sample, self.drop_channels = up_sample, in_size != out_size
        sizes = [(in_size, mid, 1, 0), (mid, mid, 3, 1), (mid, mid, 3, 1), (mid, out_size, 1, 0)]
        for k, (cin, cout, ks, pad) in enumerate(sizes):
            setattr(self, f"bn_{k}", BigGANBatchNorm(cin, condition_dim, n_stats, eps, conditional=True))
            setattr(self, f"conv_{k}", SNConv2d(cin, cout, ks, pad, eps=eps))

    def forward(self, x: Tensor, cond: Tensor, truncation: float) -> Tensor:
        h = x
        for k in range(4):
            h = F.relu(getattr(self, f"bn_{k}")(h, truncation, cond))
            if k == 1 and self.up_sample:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = getattr(self, f"conv_{k}")(h)
        x0 = x[:, : x.shape[1] // 2] if self.drop_channels else x
        if self.up_sample:
            x0 = F.interpolate(x0, scale_factor=2, mode="nearest")
        return h + x0


class Generator(nn.Module):
    def __init__(self, cfg: BigGANConfig):
        super().__init__()
        ch, cond_dim = cfg.channel_width, cfg.z_dim * 2
        self.ch = ch
        self.gen_z = SNLinear(cond_dim, 4 * 4 * 16 * ch, eps=cfg.eps)
        layers: list[nn.Module] = []
        for i, (up, cin, cout) in enumerate(cfg.layers):
            if i == cfg.attention_layer_position:
                layers.append(SelfAttn(ch * cin, eps=cfg.eps))
            layers.append(GenBlock(ch * cin, ch * cout, cond_dim, bool(up), cfg.n_stats, cfg.eps))
        self.layers = nn.ModuleList(layers)
        self.bn = BigGANBatchNorm(ch, n_stats=cfg.n_stats, eps=cfg.eps, conditional=False)
        self.conv_to_rgb = SNConv2d(ch, ch, 3, 1, eps=cfg.eps)

    def forward(self, cond: Tensor, truncation: float) -> Tensor:
        h = self.gen_z(cond).reshape(-1, 4, 4, 16 * self.ch).permute(0, 3, 1, 2).contiguous()
        for layer in self.layers:
            h = layer(h, cond, truncation) if isinstance(layer, GenBlock) else layer(h)
        h = self.conv_to_rgb(F.relu(self.bn(h, truncation)))
        return torch.tanh(h[:, :3])


def _check_layers(cfg: BigGANConfig) -> None:
    """The reference's channel plan: 16·ch in, each block keeps or halves its channels, ch out (≥ 3)."""
    ins = [int(layer[1]) for layer in cfg.layers]
    outs = [int(layer[2]) for layer in cfg.layers]
    ok = (bool(cfg.layers) and ins[0] == 16 and outs[-1] == 1 and cfg.channel_width >= 3
          and all(o in (i, i // 2) and i * cfg.channel_width >= 4 for i, o in zip(ins, outs))
          and all(a == b for a, b in zip(outs[:-1], ins[1:])))
    if not ok:
        raise UserError(f"biggan: config layers {cfg.layers} with channel_width {cfg.channel_width} do not follow "
                        "the BigGAN-deep plan (first in 16, each block keeps or halves, last out 1, width >= 3)")


class BigGAN(nn.Module):
    """``BigGAN(z, class_vector, truncation)`` → (N, 3, R, R) in (−1, 1); class_vector (N, num_classes)."""

    def __init__(self, cfg: BigGANConfig):
        super().__init__()
        if cfg.class_embed_dim != cfg.z_dim:
            raise UserError(f"biggan: class_embed_dim ({cfg.class_embed_dim}) must equal z_dim ({cfg.z_dim}) in "
                            "this layout")
        _check_layers(cfg)
        self.config = cfg
        self.embeddings = nn.Linear(cfg.num_classes, cfg.z_dim, bias=False)
        self.generator = Generator(cfg)

    def forward(self, z: Tensor, class_vector: Tensor, truncation: float) -> Tensor:
        if not 0 < truncation <= 1:
            raise bad_value("prior.truncation", truncation, "a number in (0, 1]")
        return self.generator(torch.cat([z, self.embeddings(class_vector)], 1), truncation)


class BigGANLatent(nn.Module):
    """``net(z, labels)`` for :class:`~gradleak.priors.Prior`: class indices (or probabilities) → one-hot."""

    output_range = (-1.0, 1.0)

    def __init__(self, biggan: BigGAN, truncation: float = 0.4):
        super().__init__()
        self.biggan, self.truncation = biggan, float(truncation)
        self.num_classes, self.latent_dim = biggan.config.num_classes, biggan.config.z_dim

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        onehot = labels.float() if labels.dim() == 2 else F.one_hot(labels.long(), self.num_classes).float()
        return self.biggan(z.reshape(z.shape[0], -1), onehot, self.truncation)

    def sample_latent(self, n: int, generator: torch.Generator) -> Tensor:
        """Truncated normal: N(0, I) redrawn outside [−2, 2], times the truncation (the reference's sampler)."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        bad = z.abs() > 2
        while bad.any():
            z[bad] = torch.randn(int(bad.sum()), generator=generator)
            bad = z.abs() > 2
        return self.truncation * z


def read_biggan_state(path: str | Path) -> tuple[dict[str, Tensor], BigGANConfig]:
    """State dict and config from a directory (``pytorch_model.bin`` or ``*.safetensors`` + ``config.json``) or a
    weights file with ``config.json`` beside it. ``.bin``/``.pt`` are read with ``torch.load(weights_only=True)``."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = [p / n for n in WEIGHTS_NAMES if (p / n).is_file()]
        if not found:
            raise UserError(f"prior: {str(p)!r} holds none of {', '.join(WEIGHTS_NAMES)}")
        weights, cfg_file = found[0], p / CONFIG_NAME
    else:
        weights, cfg_file = p, p.parent / CONFIG_NAME
    if not weights.is_file():
        raise UserError(f"prior: file not found: {str(weights)!r}")
    if not cfg_file.is_file():
        raise UserError(f"prior: BigGAN weights need {CONFIG_NAME} beside them (pytorch-pretrained-BigGAN layout); "
                        f"not found: {str(cfg_file)!r}")
    try:
        cfg = BigGANConfig.from_dict(json.loads(cfg_file.read_text()))
        if weights.suffix == ".safetensors":
            from gradleak.safefile import read_safetensors

            sd = read_safetensors(weights, "prior")[0]  # validated header, bounded sizes
        else:
            sd = torch.load(str(weights), map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - corrupt files are one line
        raise UserError(f"prior: cannot read BigGAN files {str(weights)!r} / {str(cfg_file)!r}: "
                        f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise UserError(f"prior: {str(weights)!r} is not a state dict of tensors")
    return sd, cfg


def looks_biggan(keys) -> bool:
    keys = set(keys)
    return "embeddings.weight" in keys and "generator.gen_z.weight_orig" in keys


def biggan_from_state_dict(sd: dict[str, Tensor], cfg: BigGANConfig) -> BigGAN:
    from gradleak.limits import check_model_size

    check_model_size(lambda: BigGAN(cfg), "prior: BigGAN config.json")  # absurd sizes: refused before allocating
    net = BigGAN(cfg)
    try:
        missing, unexpected = net.load_state_dict(dict(sd), strict=False)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
        raise UserError(f"prior: BigGAN weights do not match config.json ({len(lines)} shape mismatches, e.g. "
                        f"{lines[0] if lines else str(err).splitlines()[0]})") from None
    missing = [k for k in missing if not k.endswith("weight_v")]  # recomputed from u (old checkpoints)
    if missing or unexpected:
        what = (missing or unexpected)[0]
        raise UserError(f"prior: BigGAN weights do not match config.json ({len(missing)} missing, {len(unexpected)} "
                        f"unexpected keys, e.g. {what!r})")
    return net.eval()


def load_biggan(path: str | Path, truncation: float = 0.4):
    """A :class:`~gradleak.priors.Prior` from a pytorch-pretrained-BigGAN checkpoint (see the module docstring)."""
    from gradleak.priors.base import Prior

    if not 0 < float(truncation) <= 1:
        raise bad_value("prior.truncation", truncation, "a number in (0, 1]")
    sd, cfg = read_biggan_state(path)
    if not looks_biggan(sd):
        raise bad_value("attack.options.prior", str(path), "a pytorch-pretrained-BigGAN checkpoint (keys "
                        "embeddings.weight, generator.gen_z.weight_orig, ...)")
    net = BigGANLatent(biggan_from_state_dict(sd, cfg), truncation)
    meta = {"arch": "biggan", "config": {**asdict(cfg), "layers": [list(x) for x in cfg.layers]},
            "truncation": float(truncation), "dataset": "imagenet"}
    return Prior(net, (cfg.z_dim,), output_range=(-1.0, 1.0), num_classes=cfg.num_classes,
                 sampler=net.sample_latent, name=str(path), meta=meta)
