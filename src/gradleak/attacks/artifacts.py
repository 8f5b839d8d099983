"""Typed artifacts: what one attack family produces besides the reconstruction every attack returns.

A :class:`~gradleak.attacks.base.Reconstruction` holds what all attacks have (images, labels, timing, the
loss trace, restarts). Whatever only one family produces — ROG's post-processing steps, ROGS' generator
inversion path, GIAS snapshots, R-GAP's rank analysis, the prior or the random-gradient control a run used —
is an :class:`Artifact` in ``rec.artifacts``, defined in the family's module. An artifact knows how to

- :meth:`~Artifact.describe` itself: JSON-able facts merged into ``metrics.json`` (top-level keys it owns;
  :attr:`~Artifact.fact_labels` names the ones the report's run table shows),
- :meth:`~Artifact.score` its own images against the originals with the run's scorer (more facts),
- :meth:`~Artifact.draw` its figures into the run directory (the report embeds them),
- give :meth:`~Artifact.summary` lines for the command line,
- move its tensors to the CPU (:meth:`~Artifact.cpu`, generic over dataclass fields).

The audit, the run writer, the report and the CLI only iterate over ``rec.artifacts``: a new family output
is one subclass here or in the family's module, nothing else changes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

from torch import Tensor

#: ``scorer(images, truth)``: the run's scorer (:func:`gradleak.audit.score` with the run's metrics
#: settings): matches ``images`` to ``truth`` and returns a Scores object (``psnr``/``ssim`` summaries with a
#: ``"mean"``, ``semantic`` with the Jaccard summary or None).
Scorer = Callable[[Tensor, Tensor], Any]

#: One figure of a run directory: (caption, file name inside the directory).
Figure = tuple[str, str]

A = TypeVar("A", bound="Artifact")


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (also inside lists, tuples and dicts) moved to the CPU."""
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, list):
        return [to_cpu(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    return value


def brief(scores: Any) -> dict:
    """Mean PSNR, SSIM and Jaccard (None without a tagger) of a Scores object: one row of an artifact's scores."""
    jaccard = (scores.semantic.get("jaccard") or {}).get("mean") if scores.semantic else None
    return {"psnr": scores.psnr["mean"], "ssim": scores.ssim["mean"], "jaccard": jaccard}


def merge_facts(out: dict, *parts: dict) -> dict:
    """``out`` updated with each of ``parts``; a key given twice is a programming error (an artifact's facts
    never overwrite another's or the common ones)."""
    for part in parts:
        clash = sorted(set(part) & set(out))
        if clash:
            raise ValueError(f"metrics keys given twice: {clash} (an artifact's facts must have keys of their own)")
        out.update(part)
    return out


def matched_rows(rows: list[Tensor], order: list[int] | None) -> list[Tensor]:
    """Each batch of ``rows`` reordered to the originals (``order[i]``: the image matched to original i)."""
    if order is None:
        return list(rows)
    from gradleak.metrics import apply_match

    return [apply_match(r, order) for r in rows]


class Artifact:
    """Base of every family-specific output of an attack (see the module docstring). Subclasses are
    dataclasses holding their tensors and facts; every method has a do-nothing default."""

    #: Display label of each :meth:`describe` key the report lists under "Run" (others land in "Other").
    fact_labels: ClassVar[dict[str, str]] = {}

    def describe(self) -> dict:
        """JSON-able facts for ``metrics.json`` (merged at the top level; keys must not clash with others)."""
        return {}

    def score(self, truth: Tensor, scorer: Scorer) -> dict:
        """JSON-able scores of this artifact's images against the originals ``truth`` (merged likewise)."""
        return {}

    def draw(self, out: Path, originals: Tensor | None, order: list[int] | None) -> list[Figure]:
        """Write this artifact's figures into the run directory ``out`` and return their (caption, file) entries.
        ``order[i]`` is the reconstruction matched to original i (None with no originals: not scored)."""
        return []

    def summary(self) -> list[str]:
        """Lines the command line prints after the run's scores."""
        return []

    def cpu(self: A) -> A:
        """This artifact with every tensor on the CPU (for scoring and writing); returns ``self``."""
        if dataclasses.is_dataclass(self):
            for f in dataclasses.fields(self):
                setattr(self, f.name, to_cpu(getattr(self, f.name)))
        return self


__all__ = ["Artifact", "Figure", "Scorer", "brief", "matched_rows", "merge_facts", "to_cpu"]
