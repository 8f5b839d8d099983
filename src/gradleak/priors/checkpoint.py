"""Prior files: ``<stem>.safetensors`` (tensors) + ``<stem>.json`` (architecture and provenance).

Two kinds, both read without executing code (safetensors + JSON only):

* a *prior* (``kind: "prior"``): the generator alone — what attacks load and what ``gradleak/assets``
  ships;
* a *training checkpoint* (``kind: "checkpoint"``): generator, discriminator, both Adam states and the
  data/noise RNG state, so ``train-prior`` resumes exactly where it stopped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from gradleak import filepair
from gradleak.errors import UserError, error_line
from gradleak.filepair import write_pair
from gradleak.trainstate import optimizer_state, optimizer_tensors

FORMAT = "gradleak-prior"
VERSION = 1


def read_pair(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Tensors and metadata of a prior or checkpoint pair (``path``: the stem, the .safetensors or the .json)."""
    return filepair.read_pair(path, "prior", FORMAT)


def _prefixed(prefix: str, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}/{k}": v for k, v in sd.items()}


def _strip(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    p = prefix + "/"
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def save_prior(path: str | Path, generator: nn.Module, arch: str, config: dict, info: dict | None = None):
    """Write the generator as a prior file pair; ``info`` (dataset, command, seed, …) goes to the JSON."""
    meta = {"format": FORMAT, "version": VERSION, "kind": "prior", "arch": arch, "config": config,
            **(info or {})}
    return write_pair(Path(path).with_suffix(""), _prefixed("generator", generator.state_dict()), meta)


def save_checkpoint(path: str | Path, G: nn.Module, D: nn.Module, opt_g, opt_d, rng: torch.Generator,
                    step: int, meta: dict, extra: dict[str, Tensor] | None = None) -> tuple[Path, Path]:
    """Training checkpoint (resume point): G, D, both optimisers, the RNG state, the step, ``extra`` tensors."""
    tensors = _prefixed("generator", G.state_dict()) | _prefixed("discriminator", D.state_dict())
    tensors |= _prefixed("extra", extra or {})
    tg, mg = optimizer_tensors(opt_g, "opt_g")
    td, md = optimizer_tensors(opt_d, "opt_d")
    tensors |= tg | td
    tensors["rng"] = rng.get_state()
    full = {"format": FORMAT, "version": VERSION, "kind": "checkpoint", "step": step, "opt_g": mg, "opt_d": md,
            **meta}
    return write_pair(Path(path).with_suffix(""), tensors, full)


def load_checkpoint(path: str | Path, G: nn.Module, D: nn.Module, opt_g, opt_d,
                    rng: torch.Generator) -> tuple[dict, dict[str, Tensor]]:
    """Restore everything :func:`save_checkpoint` wrote (in place); returns the metadata and ``extra``."""
    tensors, meta = read_pair(path)
    if meta.get("kind") != "checkpoint":
        raise UserError(f"prior: {path} is not a training checkpoint (kind {meta.get('kind')!r})")
    G.load_state_dict(_strip("generator", tensors))
    D.load_state_dict(_strip("discriminator", tensors))
    opt_g.load_state_dict(optimizer_state(tensors, meta["opt_g"], "opt_g"))
    opt_d.load_state_dict(optimizer_state(tensors, meta["opt_d"], "opt_d"))
    rng.set_state(tensors["rng"])
    return meta, _strip("extra", tensors)


def generator_state(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return _strip("generator", tensors)


def rebuild_generator(arch: str, make: Callable[[], nn.Module], state: dict[str, Tensor]) -> nn.Module:
    """The generator ``make()`` builds from a prior's config, loaded with ``state`` (strict), in eval mode. A
    config it cannot be built from is the one-line error ``prior: bad <arch> config: ...``; weights that do
    not fit it are ``prior: weights do not match the <arch> config: ...``."""
    try:
        net = make()
        net.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"prior: bad {arch} config: {error_line(err)}") from None
    except RuntimeError as err:
        raise UserError(f"prior: weights do not match the {arch} config: {str(err).splitlines()[0]}") from None
    return net.eval()
