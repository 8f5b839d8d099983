"""``cifar10`` / ``cifar100``: the official "python version" pickle batches, read from ``root``.

``root`` is the extracted directory (``cifar-10-batches-py`` / ``cifar-100-python``) or its
parent. Splits: ``train`` (alias ``public``) and ``test`` (alias ``private``). CIFAR-100 uses the
100 fine labels. Nothing is downloaded.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gradleak.errors import UserError, bad_value

from .base import ImageSet, missing_path, pick_split, resize, to_channels

SPLITS = {"train": "train", "test": "test", "public": "train", "private": "test"}


@dataclass(frozen=True)
class CifarLayout:
    """File names and pickle keys of one CIFAR variant."""

    dirname: str
    files: dict[str, tuple[str, ...]]
    meta: str
    label_keys: tuple[bytes, ...]
    name_keys: tuple[bytes, ...]
    num_classes: int

    def describe(self) -> str:
        return f"a {self.dirname} directory (or its parent) with {', '.join(sum(self.files.values(), ()))}"


LAYOUTS = {
    "cifar10": CifarLayout("cifar-10-batches-py",
                           {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
                           "batches.meta", (b"labels",), (b"label_names",), 10),
    "cifar100": CifarLayout("cifar-100-python", {"train": ("train",), "test": ("test",)},
                            "meta", (b"fine_labels", b"labels"), (b"fine_label_names", b"label_names"), 100),
}


def find_dir(root: str | Path | None, layout: CifarLayout) -> Path:
    """The directory holding the batches: ``root/<dirname>`` if present, else ``root`` itself."""
    if root is None:
        raise bad_value("data.root", None, layout.describe())
    path = Path(root).expanduser()
    if not path.is_dir():
        raise missing_path(path, layout.describe())
    return path / layout.dirname if (path / layout.dirname).is_dir() else path


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the CIFAR allow-list."""


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR batch needs (numpy arrays and dtypes), under their numpy 1 and 2 module names,
    mapped to the real objects (the module named in the file is never imported)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric
    found: dict[tuple[str, str], object] = {}
    for mod in ("numpy.core", "numpy._core"):
        found[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        if hasattr(numeric, "_frombuffer"):
            found[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
        found[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
    found[("numpy", "ndarray")] = np.ndarray
    found[("numpy", "dtype")] = np.dtype
    found[("_codecs", "encode")] = _latin1_bytes  # how Python 3 writes bytes at pickle protocol 2
    return found


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal("_codecs.encode with other than (str, 'latin1')")
    return text.encode("latin1")


class CifarUnpickler(pickle.Unpickler):
    """Restricted unpickler: a pickle may build dicts, lists, tuples, bytes, str, numbers, numpy arrays and
    dtypes — what the official CIFAR batches hold — and nothing else. Any other global (``os.system``,
    ``builtins.eval``, a class to instantiate, ...) is refused before it is looked up, so loading a crafted
    file never runs code from it."""

    _allowed = None

    def find_class(self, module: str, name: str):
        allowed = type(self)._allowed
        if allowed is None:
            allowed = type(self)._allowed = _numpy_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise RefusedGlobal(f"{module}.{name}")


def read_pickle(path: Path, allowed: str) -> dict:
    """Unpickle one CIFAR file (bytes keys) with :class:`CifarUnpickler`; errors name the file."""
    if not path.is_file():
        raise missing_path(path, allowed)
    try:
        with path.open("rb") as f:
            obj = CifarUnpickler(f, encoding="bytes").load()
    except RefusedGlobal as err:
        raise UserError(f"data.root: {str(path)!r} is not a CIFAR batch: its pickle refers to {err}, which a CIFAR "
                        f"file never holds (refused, nothing run); allowed: the python-version CIFAR pickles") from None
    except Exception as err:  # corrupt or not a pickle
        raise UserError(f"data.root: cannot read CIFAR file {str(path)!r} ({type(err).__name__}); "
                        f"allowed: the python-version CIFAR pickles") from None
    if not isinstance(obj, dict):
        raise UserError(f"data.root: {str(path)!r} is not a CIFAR batch (no dict); "
                        f"allowed: the python-version CIFAR pickles")
    return obj


def _first_key(obj: dict, keys: tuple[bytes, ...], path: Path) -> object:
    for key in keys:
        if key in obj:
            return obj[key]
    raise UserError(f"data.root: {str(path)!r} has none of the keys {[k.decode() for k in keys]}; "
                    f"allowed: the python-version CIFAR pickles")


def read_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 N x 3 x 32 x 32, labels int64 N)`` from one batch file."""
    obj = read_pickle(path, layout.describe())
    data = np.asarray(_first_key(obj, (b"data",), path))
    labels = np.asarray(_first_key(obj, layout.label_keys, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise UserError(f"data.root: {str(path)!r} has data {data.dtype} {data.shape} and {len(labels)} labels; "
                        f"allowed: uint8 N x 3072 data with N labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise UserError(f"data.root: {str(path)!r} has labels outside 0..{layout.num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def class_names(directory: Path, layout: CifarLayout) -> list[str]:
    """Names from the meta file; ``"0".."K-1"`` if it is absent."""
    path = directory / layout.meta
    if not path.is_file():
        return [str(i) for i in range(layout.num_classes)]
    names = _first_key(read_pickle(path, layout.describe()), layout.name_keys, path)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def load_cifar(variant: str, split: str = "private", resolution: int = 32, channels: int = 3,
               root: str | None = None, seed: int = 0, limit: int | None = None) -> ImageSet:
    """One CIFAR split from ``root``, resized to ``resolution``. ``seed`` is ignored; ``limit`` keeps
    the first N images (later batch files are then not read)."""
    layout = LAYOUTS[variant]
    side = pick_split(split, SPLITS)
    directory = find_dir(root, layout)
    arrays, labels, have = [], [], 0
    for fname in layout.files[side]:
        if limit is not None and have >= limit:
            break
        x, y = read_batch(directory / fname, layout)
        arrays.append(x)
        labels.append(y)
        have += len(y)
    images = torch.from_numpy(np.concatenate(arrays)[:limit]).to(torch.float32).div_(255.0)
    images = to_channels(resize(images, resolution), channels).contiguous()
    return ImageSet(images, torch.from_numpy(np.concatenate(labels)[:limit]), layout.num_classes, variant,
                    class_names(directory, layout))
