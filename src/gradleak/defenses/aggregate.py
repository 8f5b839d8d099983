"""Large-batch / secure-aggregation view: the server sees the mean of n clients' uploads.

Under secure aggregation (Bonawitz et al., 2017) the server only learns Σ_j φ(U_j)/n; with equal batch
sizes and FedSGD this is the gradient of one batch of n·B images. ``aggregate`` simulates it simply:

    upload = ( U_victim + Σ_{j=2..n} U_j ) / n,

where U_victim is the victim's upload as it enters this defense (after any earlier defenses in the chain)
and U_j are the *clean* uploads (same θ_0, same protocol, batch size B) of n − 1 simulated clients whose
batches are drawn, with ``ctx.generator``, from

1. ``ctx.pool`` (images, labels) when the caller provides other clients' data; else
2. the gradleak dataset ``dataset`` (split ``split``, the victim's resolution and channels); else
3. random images: i.i.d. uniform pixels in [0, 1] with uniformly random labels (the default — a
   worst case for the attacker only in that the other gradients carry no natural-image structure).

The Observation still says ``num_images = B``: the attacker is told ``clients`` (if ``attacker_knows``)
but attacks the aggregate as the victim's own update, which is the point of the defense.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from gradleak.defenses.base import AttackerView, ClientContext, Defense, Params, check, register
from gradleak.fl.client import client_update


def _num_classes(ctx: ClientContext) -> int:
    from gradleak.models import feature_layer

    try:
        return feature_layer(ctx.model).out_features
    except Exception:  # noqa: BLE001 - fall back to a forward pass
        with torch.no_grad():
            return int(ctx.model.eval()(ctx.images[:1]).shape[-1])


@register
class Aggregate(Defense):
    """Mean of the victim's upload and n − 1 simulated clients' uploads (secure aggregation's view)."""

    name = "aggregate"

    def __init__(self, clients: Annotated[int, Field(ge=1)] = 8, dataset: str | None = None,
                 split: str = "private", attacker_knows: bool = True):
        check(self.name, "clients", isinstance(clients, int) and clients >= 1, clients, "an integer >= 1")
        self.clients, self.dataset, self.split, self.attacker_knows = int(clients), dataset, split, attacker_knows
        self._report: dict = {}

    def _others(self, ctx: ClientContext, count: int) -> tuple[Tensor, Tensor, str]:
        B, shape = ctx.images.shape[0], tuple(ctx.images.shape[1:])
        if ctx.pool is not None:
            imgs, labs = ctx.pool
            src = "pool"
        elif self.dataset is not None:
            from gradleak.data import load_dataset

            ds = load_dataset(self.dataset, split=self.split, resolution=shape[-1], channels=shape[0])
            imgs, labs = ds.images, ds.labels
            src = f"dataset:{self.dataset}/{self.split}"
        else:
            x = torch.rand((count * B, *shape), generator=ctx.generator, dtype=ctx.images.dtype)
            y = torch.randint(0, _num_classes(ctx), (count * B,), generator=ctx.generator)
            return x, y, "random"
        idx = torch.randint(0, imgs.shape[0], (count * B,), generator=ctx.generator)
        return imgs[idx].to(ctx.images.dtype), labs[idx].to(ctx.labels.dtype), src

    @classmethod
    def attacker_view(cls, told: dict) -> AttackerView:
        n = told.get("clients")
        return AttackerView(mixed=int(n) if isinstance(n, int) else None,
                            unmodelled=None if n == 1 else "the upload is averaged with other clients' uploads")

    def apply(self, update: Params, ctx: ClientContext) -> Params:
        n = self.clients
        if n == 1:
            self._report = {"source": "none"}
            return dict(update)
        B = ctx.images.shape[0]
        x, y, src = self._others(ctx, n - 1)
        total = {k: v.clone() for k, v in update.items()}
        for j in range(n - 1):
            u = client_update(ctx.model, ctx.params, ctx.buffers, x[j * B:(j + 1) * B], y[j * B:(j + 1) * B], ctx.protocol)
            for k in total:
                total[k] += u[k]
        self._report = {"source": src}
        return {k: v / n for k, v in total.items()}
