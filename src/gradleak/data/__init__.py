"""Datasets as plain tensors.

Images are ``float32`` tensors ``N x C x H x W`` in ``[0, 1]``; labels are ``int64`` tensors ``N``.

* :func:`load_dataset` -- load a registered dataset (:data:`DATASETS`, :func:`list_datasets`):
  ``digits`` (scikit-learn digits, upsampled), ``photos`` (crops of bundled colour photographs,
  split by source photograph), ``cifar10`` / ``cifar100`` (python pickles in ``root``) and
  ``folder`` (any image folder at ``root``).
* :class:`ImageSet` -- the dataset container (``len``, ``subset``).
* :func:`sample_batch` -- the victim's batch, deterministic, optionally with distinct labels.
"""

from .base import ImageSet
from .registry import DATASETS, Loader, list_datasets, load_dataset
from .sampling import sample_batch

__all__ = ["DATASETS", "ImageSet", "Loader", "list_datasets", "load_dataset", "sample_batch"]
