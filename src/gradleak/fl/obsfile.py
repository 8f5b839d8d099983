"""The checks an Observation file pair passes before an Observation is built from it.

:func:`check_file` runs after :func:`gradleak.filepair.read_pair` (which validated the safetensors header and
the JSON syntax): every metadata field against :class:`gradleak.filemeta.ObservationMeta`, the declared batch
against :mod:`gradleak.limits`, every tensor's dtype against its role and NaN/inf. Each failure is one line
naming the file and the field or tensor.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from gradleak import filemeta, limits
from gradleak.errors import UserError


def check_file(tensors: dict[str, Tensor], meta: dict, js: Path, st: Path, rebuild: bool = True) -> None:
    """Raise a one-line :class:`UserError` for the first problem of the pair (see the module docstring).
    ``rebuild``: the architecture will be rebuilt from ``model`` (so name, num_classes, in_channels and
    resolution are required)."""
    schema = filemeta.ObservationMeta if rebuild else filemeta.ObservationMetaGivenModel
    m = filemeta.check(schema, meta, "observation", js)
    limits.check_batch(m.num_images, m.image_shape, f"observation: {str(js)!r}")
    if rebuild:
        limits.IMAGE_PIXELS.check(m.model.resolution ** 2, f"observation: {str(js)!r} model.resolution", " pixels")
    for name, t in tensors.items():
        where = f"observation: tensor {name!r} in {str(st)!r}"
        if name == "labels":
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.ndim != 1:
                raise UserError(f"{where}: {t.dtype} of shape {tuple(t.shape)}; allowed: integer class indices, "
                                "one per image")
            if t.numel() and (int(t.min()) < 0 or (rebuild and int(t.max()) >= m.model.num_classes)):
                bound = f"0..{m.model.num_classes - 1}" if rebuild else "integers >= 0"
                raise UserError(f"{where}: label {int(t.min()) if int(t.min()) < 0 else int(t.max())} out of range; "
                                f"allowed: {bound}")
            continue
        if name.startswith(("param/", "update/", "bn/")) and not t.is_floating_point():
            raise UserError(f"{where}: dtype {t.dtype}; allowed: a floating-point tensor")
        if (t.is_floating_point() or t.is_complex()) and not torch.isfinite(t).all():
            raise UserError(f"{where} contains NaN or inf")
    if m.has_labels and "labels" not in tensors:
        raise UserError(f"observation: {str(js)!r} field has_labels is true but {str(st)!r} holds no 'labels' tensor")
