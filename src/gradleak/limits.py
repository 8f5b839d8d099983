"""Size limits for everything a user file or option declares, checked before any large allocation.

A hostile or corrupt file can declare absurd sizes: a safetensors header length of gigabytes, tensors of
10¹² elements, an architecture of width 10⁹, an image of 50 000 × 50 000 pixels, a batch of 10⁹ images.
Each is compared with a named limit *before* memory is reserved for it; the refusal is one line naming the
file, the field, the limit and how to raise it (an environment variable, so every command and the Python
API honour it)::

    GRADLEAK_MAX_FILE_BYTES=32e9 gradleak attack big_observation/ --attack invertgrad --out run

The defaults fit every model, prior and batch gradleak's papers use with room to spare (the largest, a
StyleGAN2 FFHQ-1024 generator, is 0.12 GB of float32 weights).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from gradleak.errors import UserError


@dataclass(frozen=True)
class Limit:
    """One limit: its environment variable, default and what it bounds (for the message)."""

    env: str
    default: int
    what: str

    def get(self) -> int:
        """The limit in force (the environment variable, parsed as a number such as ``8e9``, else the default)."""
        raw = os.environ.get(self.env)
        if raw is None or not raw.strip():
            return self.default
        try:
            value = float(raw)
        except ValueError:
            raise UserError(f"{self.env}: got {raw!r}; allowed: a positive number ({self.what})") from None
        if not math.isfinite(value) or value < 1:
            raise UserError(f"{self.env}: got {raw!r}; allowed: a positive number ({self.what})")
        return int(value)

    def check(self, value: int | float, where: str, unit: str = "") -> None:
        """Raise a one-line :class:`UserError` when ``value`` exceeds the limit."""
        limit = self.get()
        if value > limit:
            raise UserError(f"{where}: declares {_fmt(value)}{unit}; allowed: at most {_fmt(limit)}{unit} "
                            f"({self.what}; raise it with the environment variable {self.env})")


def _fmt(n: int | float) -> str:
    return f"{int(n):,}" if float(n) < 1e15 else f"{float(n):.3g}"


#: tensor bytes one user file may hold (observation, prior, checkpoint, weights) or one model may need
FILE_BYTES = Limit("GRADLEAK_MAX_FILE_BYTES", 8 * 1024**3, "bytes of tensors in one file or model")
#: length of a safetensors header (safetensors itself stops at 100 MB; a gradleak file needs kilobytes)
HEADER_BYTES = Limit("GRADLEAK_MAX_HEADER_BYTES", 16 * 1024**2, "bytes of a safetensors header")
#: size of a JSON / YAML file a user hands in (metadata, task index, capture index, configs)
TEXT_BYTES = Limit("GRADLEAK_MAX_TEXT_BYTES", 64 * 1024**2, "bytes of a JSON or YAML file")
#: pixels of one image on disk or one declared image shape: Pillow's own decompression-bomb limit
IMAGE_PIXELS = Limit("GRADLEAK_MAX_IMAGE_PIXELS", 89_478_485, "pixels per image (Pillow's MAX_IMAGE_PIXELS)")
#: images in one batch (an observation's num_images, a protocol's, a trainer's --batch-size)
BATCH = Limit("GRADLEAK_MAX_BATCH", 65_536, "images in one batch")
#: values in one batch of images (num_images × channels × height × width; 2³⁰ float32 values are 4 GiB)
BATCH_VALUES = Limit("GRADLEAK_MAX_BATCH_VALUES", 2**30, "values in one image batch")

ALL = (FILE_BYTES, HEADER_BYTES, TEXT_BYTES, IMAGE_PIXELS, BATCH, BATCH_VALUES)


def check_batch(num_images: int, image_shape: tuple[int, ...] | list[int], where: str) -> None:
    """A declared batch of ``num_images`` images of ``image_shape`` (C, H, W) within :data:`BATCH`,
    :data:`IMAGE_PIXELS` and :data:`BATCH_VALUES`."""
    BATCH.check(num_images, f"{where} num_images", " images")
    shape = [int(s) for s in image_shape]
    if len(shape) >= 2:
        IMAGE_PIXELS.check(math.prod(shape[-2:]), f"{where} image_shape {shape}", " pixels")
    BATCH_VALUES.check(num_images * math.prod(shape), f"{where} num_images × image_shape", " values")


#: random initialisers skipped while measuring on ``meta`` (their meta kernels import torch._dynamo: seconds)
_RANDOM_INIT = frozenset({"normal_", "uniform_", "trunc_normal_", "bernoulli_", "exponential_", "random_",
                          "log_normal_", "cauchy_", "geometric_", "orthogonal_", "kaiming_normal_",
                          "kaiming_uniform_", "xavier_normal_", "xavier_uniform_", "sparse_"})


def _no_random_init():
    """A ``TorchFunctionMode`` that turns random in-place initialisation into a no-op (values are irrelevant on
    the ``meta`` device; only shapes are measured). Thread-local, like every torch function mode."""
    import torch
    from torch.overrides import TorchFunctionMode

    class NoRandomInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if getattr(func, "__name__", "") in _RANDOM_INIT:
                first = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
                if first is not None:
                    return first
            return func(*args, **kwargs)

    return NoRandomInit()


def check_model_size(factory, where: str):
    """Build ``factory()`` on torch's ``meta`` device (no memory, random initialisers skipped: ~0.1 s) and
    refuse it when its parameters and buffers exceed :data:`FILE_BYTES`; returns nothing. A factory that
    cannot be built on ``meta`` is let through (the real build reports its own errors)."""
    import torch

    try:
        with torch.device("meta"), _no_random_init():
            model = factory()
        size = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - best effort: the real build below names the problem
        return
    FILE_BYTES.check(size, f"{where}: the architecture", " bytes of weights")
