"""Defense interface: a named, seeded transform φ of the client's upload.

A defense sees the clean upload and the client context (model, θ_0, private batch, protocol) — most
only transform the upload (sparsification, quantisation, noise); some recompute it (FedCDP's
per-example clipping, Soteria's pruned representation). ``describe()`` is what the threat model lets the
attacker know about it and is recorded in the Observation and the run directory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradleak.errors import UserError
from gradleak.fl.protocol import Protocol

Params = dict[str, Tensor]


@dataclass
class ClientContext:
    model: nn.Module
    params: Params
    buffers: Params
    images: Tensor
    labels: Tensor
    protocol: Protocol
    generator: torch.Generator


class Defense:
    """Base class. Subclasses set ``name``, validate parameters in ``__init__`` and implement ``apply``."""

    name = "defense"

    def apply(self, update: Params, ctx: ClientContext) -> Params:
        raise NotImplementedError

    def describe(self) -> dict:
        """What the attacker is told (name and parameters by default)."""
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


DEFENSES: dict[str, type[Defense]] = {}


def register(cls: type[Defense]) -> type[Defense]:
    DEFENSES[cls.name] = cls
    return cls


def build_defenses(specs: list[dict]) -> list[Defense]:
    """``[{"name": "topk", "sparsity": 0.9}, ...]`` → Defense objects, validated (one-line errors)."""
    from gradleak.validate import validate_options

    out = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        name = spec.pop("name", None)
        if name not in DEFENSES:
            raise UserError(f"defense[{i}].name: got {name!r}; allowed: {', '.join(sorted(DEFENSES)) or '(none registered)'}")
        cls = DEFENSES[name]
        out.append(cls(**validate_options(cls.__init__, spec, f"defense[{i}]")))
    return out
