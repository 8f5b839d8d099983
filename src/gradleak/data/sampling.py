"""Draw the victim's private batch from an :class:`ImageSet`."""
from __future__ import annotations

import torch
from torch import Tensor

from gradleak.errors import bad_value

from .base import ImageSet


def sample_batch(data: ImageSet, batch_size: int, distinct_labels: bool = True,
                 seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(images B x C x H x W, labels B)`` drawn without replacement, deterministic given ``seed``.

    With ``distinct_labels`` (as in the DLG / iDLG / InvertGrad papers) every image has a different
    label: the first image of each new label in a seeded permutation is taken. Raises UserError if
    ``batch_size`` exceeds the number of images, or the number of labels present in distinct mode.
    """
    n = len(data)
    present = int(data.labels.unique().numel())
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise bad_value("data.batch_size", batch_size, f"1..{n} (images in {data.name})")
    if distinct_labels and batch_size > present:
        raise bad_value("data.batch_size", batch_size,
                        f"1..{present} with distinct_labels ({data.name} has {present} labels here)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if distinct_labels:
        seen: set[int] = set()
        chosen = []
        for i, label in zip(perm.tolist(), data.labels[perm].tolist()):
            if label not in seen:
                seen.add(label)
                chosen.append(i)
                if len(chosen) == batch_size:
                    break
        perm = torch.tensor(chosen, dtype=torch.long)
    idx = perm[:batch_size]
    return data.images[idx].clone(), data.labels[idx].clone()
