"""The dataset registry: name -> loader, and :func:`load_dataset`."""
from __future__ import annotations

from functools import partial
from typing import Protocol

from gradleak.errors import bad_value
from gradleak.registry import Registry

from .base import ImageSet
from .cifar import load_cifar
from .digits import load_digits_set
from .fetched import load_fetched
from .folder import load_folder
from .photo_corpus import load_photo_corpus
from .photos import load_photos

MAX_RESOLUTION = 1024


class Loader(Protocol):
    def __call__(self, *, split: str, resolution: int, channels: int, root: str | None, seed: int,
                 limit: int | None) -> ImageSet: ...


#: name -> loader(*, split, resolution, channels, root, seed, limit) returning an :class:`ImageSet`.
DATASETS = Registry("dataset")
DATASETS.register("digits")(load_digits_set)
DATASETS.register("photos")(load_photos)
DATASETS.register("photo-corpus")(load_photo_corpus)
DATASETS.register("cifar10")(partial(load_cifar, "cifar10"))
DATASETS.register("cifar100")(partial(load_cifar, "cifar100"))
DATASETS.register("folder")(load_folder)
DATASETS.register("fetched")(load_fetched)


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return list(DATASETS)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_dataset(name: str, split: str = "private", resolution: int = 32, channels: int = 3,
                 root: str | None = None, seed: int = 0, limit: int | None = None) -> ImageSet:
    """Load a registered dataset as an :class:`ImageSet` (float32 N x C x H x W in [0, 1]).

    ``split``: ``public`` (the prior-training side), ``private`` (the victim's side) or ``all`` for
    the built-ins ``digits`` and ``photos`` (fixed splits; ``seed`` and ``root`` are ignored);
    ``train``/``test`` (aliases ``public``/``private``) for ``cifar10``/``cifar100`` (``root``
    required); ``all`` or a ``seed``-ed half split for ``folder`` (``root`` required).
    ``limit`` keeps only the first N images (for ``folder``: reads only the first N files).
    """
    loader = DATASETS.get(name.lower()) if isinstance(name, str) else None
    if loader is None:
        raise bad_value("data.name", name, ", ".join(DATASETS))
    if not _is_int(resolution) or not 4 <= resolution <= MAX_RESOLUTION:
        raise bad_value("data.resolution", resolution, f"an integer in 4..{MAX_RESOLUTION}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise bad_value("data.channels", channels, "1, 3")
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise bad_value("data.limit", limit, "a positive integer or None")
    if not _is_int(seed):
        raise bad_value("seed", seed, "an integer")
    return loader(split=split, resolution=resolution, channels=channels, root=root, seed=seed, limit=limit)
