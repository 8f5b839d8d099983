"""The PRECODE threat model entry (the defense itself is the model option ``precode``).

PRECODE (Scheliga et al., 2022) is an architecture change — select it with ``model: {name: precode,
options: {base: convnet, ...}}`` (:mod:`gradleak.models.precode`). Its only secret is the client's
sampling noise ε. Without this entry the attacker rebuilds the model from the Observation's spec,
including the public ``seed``, and so knows ε (white-box, exact forward model; ROG §5.1).

``{name: precode, attacker_knows: false}`` makes the noise secret: the client draws a fresh seed from
the capture generator, recomputes its (clean) upload with it and restores the public seed, so the spec
the attacker sees yields different noise. With ``attacker_knows: true`` the entry changes nothing and
records that the noise seed is the spec's. It recomputes the upload, so it must be first in the chain.
"""
from __future__ import annotations

import torch

from gradleak.defenses.base import AttackerView, ClientContext, Defense, Params, register
from gradleak.errors import UserError
from gradleak.fl.client import client_update


@register
class PrecodeNoise(Defense):
    """Declares whether the attacker knows the PRECODE block's noise seed; hides it when not."""

    name = "precode"
    recomputes = True

    def __init__(self, attacker_knows: bool = True):
        self.attacker_knows = attacker_knows
        self._report: dict = {}

    @classmethod
    def attacker_view(cls, told: dict) -> AttackerView:
        if told.get("attacker_knows", True) is False:
            return AttackerView(unmodelled="PRECODE's noise seed is hidden from the attacker")
        return AttackerView()  # a known seed: the model's noise is part of the re-run forward pass

    def apply(self, update: Params, ctx: ClientContext) -> Params:
        from gradleak.models.precode import precode_block

        block = precode_block(ctx.model)
        if block is None:
            name = getattr(ctx.model, "gradleak_name", type(ctx.model).__name__)
            raise UserError(f"defense precode.model: got {name!r}; allowed: a PRECODE model "
                            "(model.name: precode with options.base)")
        if self.attacker_knows or block.noise != "seeded":
            self._report = {"noise": block.noise, "seed": block.seed}
            return update
        public = block.seed
        secret = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator))
        block.seed = secret if secret != public else secret + 1
        try:
            out = client_update(ctx.model, ctx.params, ctx.buffers, ctx.images, ctx.labels, ctx.protocol)
        finally:
            block.seed = public
        return out
