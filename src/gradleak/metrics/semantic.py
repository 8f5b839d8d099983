"""Semantic similarity (ROGS, Yue et al., 2023, §6): tag both images, compare the tag sets.

    J(A, B) = |A ∩ B| / |A ∪ B|                                                       (eq. 21)

A *tagger* maps images to sets of tags. The paper uses a multi-label classifier trained on OpenImages
(9,600 tags); none can be downloaded here, so any multi-label classifier can be plugged in
(:func:`load_tagger`):

* ``auto`` — the built-in tagger of the run's dataset, or else one trained on images of this shape, if one is
  shipped (:data:`BUILTIN_TAGGERS`);
* a built-in name (``digits``) — trained by ``gradleak train-tagger`` on the *public* split of a built-in
  dataset: its classes plus the attribute tags of :mod:`gradleak.nets.attributes` (see the JSON beside
  the weights for the command and seed);
* a path to a ``train-tagger`` result (``.safetensors`` + ``.json``, or its directory);
* an import path ``package.module:factory`` — ``factory()`` returns either an ``nn.Module`` giving one
  logit per tag, (N, T), with a ``tag_names`` attribute (list of T strings; optional ``input_channels`` /
  ``input_resolution`` to which images are converted, ``outputs = "probabilities"`` when it already applies
  the sigmoid), or any callable ``images -> list of tag lists`` (used as is).

A model tagger keeps the tags whose probability is ≥ ``threshold`` (default 0.5), then at most the
``top_k`` most probable of them (default: no limit). Empty sets: J(∅, ∅) = 1 (identical), J(A, ∅) = 0.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from gradleak.errors import UserError, bad_value
from gradleak.filepair import readable_metas
from gradleak.nets.tagger import KEY, ModelTagger, jaccard  # noqa: F401  (the tagger network lives in nets)
from gradleak.userimport import call_factory

BUILTIN_TAGGERS = {"digits": "tagger-digits"}


Tagger = Callable[[Tensor], list[list[str]]]


def describe_tagger(tagger) -> dict:
    """JSON-ready summary of a tagger (name, threshold, top-k, number of tags)."""
    if isinstance(tagger, ModelTagger):
        return {"name": tagger.name, "threshold": tagger.threshold, "top_k": tagger.top_k,
                "tags": len(tagger.tag_names), "dataset": tagger.meta.get("dataset")}
    return {"name": getattr(tagger, "name", type(tagger).__name__)}


def builtin_tagger_path(name: str) -> Path:
    return Path(str(resources.files("gradleak") / "assets" / f"{BUILTIN_TAGGERS[name]}.safetensors"))


def auto_tagger(channels: int, resolution: int) -> str | None:
    """The built-in tagger trained on images of this shape (channels and resolution), if shipped."""
    for name, meta in readable_metas((name, builtin_tagger_path(name)) for name in BUILTIN_TAGGERS):
        if meta.get("channels") == channels and meta.get("resolution") == resolution:
            return name
    return None


def _allowed() -> str:
    return (f"auto, none, {', '.join(BUILTIN_TAGGERS)}, a path to a train-tagger result (.safetensors + .json), "
            "or an import path 'package.module:factory'")


def _from_import(path: str, threshold: float, top_k: int | None):
    obj = call_factory(KEY, path, "an importable 'package.module:factory'")
    if isinstance(obj, nn.Module):
        names = getattr(obj, "tag_names", None)
        if not names:
            raise bad_value(KEY, path, "a factory returning an nn.Module with a tag_names attribute (one per output)")
        return ModelTagger(obj, names, threshold=threshold, top_k=top_k, name=path,
                           input_channels=getattr(obj, "input_channels", None),
                           input_resolution=getattr(obj, "input_resolution", None),
                           outputs=getattr(obj, "outputs", "logits"), meta={"import": path})
    if callable(obj):
        return obj
    raise bad_value(KEY, path, "a factory returning an nn.Module (logits per tag) or a callable images -> tag lists")


def load_tagger(spec: str | Path = "auto", *, threshold: float = 0.5, top_k: int | None = None,
                shape: tuple[int, int, int] | None = None, dataset: str | None = None):
    """A tagger from ``spec`` (see the module docstring); ``none`` returns None. ``auto``: the built-in tagger
    of ``dataset`` when there is one (images are converted to its channels and resolution), else the one
    trained on images of ``shape`` = (C, H, W), else None."""
    text = str(spec).strip() if spec is not None else "none"
    if text == "none":
        return None
    if text == "auto":
        if dataset in BUILTIN_TAGGERS and builtin_tagger_path(dataset).is_file():
            text = dataset
        elif shape is None:
            return None
        name = text if text != "auto" else auto_tagger(int(shape[0]), int(shape[-1]))
        if name is None:
            return None
        text = name
    if text in BUILTIN_TAGGERS:
        from gradleak.nets.tagger import read_tagger

        return read_tagger(builtin_tagger_path(text), threshold=threshold, top_k=top_k, name=text)
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "tagger.safetensors"
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if path.exists() or path.with_suffix(".safetensors").exists():
        from gradleak.nets.tagger import read_tagger

        return read_tagger(path, threshold=threshold, top_k=top_k, name=text)
    if ":" in text:
        return _from_import(text, threshold, top_k)
    raise bad_value(KEY, text, _allowed())


def tagger_unavailable(shape: tuple[int, int, int], dataset: str | None = None) -> str:
    """Why ``auto`` found no tagger for images of ``shape``."""
    what = f"dataset {dataset!r} or " if dataset else ""
    return (f"no built-in tagger for {what}{shape[0]}-channel {shape[-1]}×{shape[-1]} images (built-in: "
            f"{', '.join(BUILTIN_TAGGERS)}); train one with gradleak train-tagger and set metrics.tagger")


def semantic_scores(tagger, reconstructions: Tensor, originals: Tensor) -> dict:
    """Tags of matched pairs and their Jaccard index (eq. 21): ``{"jaccard": {mean, best, per_image},
    "tags": [{"original": [...], "reconstruction": [...], "jaccard": j}, ...], "tagger": {...}}``."""
    a, b = tagger(originals), tagger(reconstructions)
    per = [jaccard(x, y) for x, y in zip(a, b)]
    summary = {"mean": math.fsum(per) / len(per) if per else None, "best": max(per) if per else None,
               "per_image": per}
    return {"jaccard": summary, "tags": [{"original": list(x), "reconstruction": list(y), "jaccard": j}
                                         for x, y, j in zip(a, b, per)],
            "tagger": describe_tagger(tagger)}
