"""Check a victim model against the data before a run: finite parameters, the input shape accepted, one
output per class. Built-in models satisfy this by construction (tested); a user factory
(``model: package.module:factory``) is checked when it is built, so a mismatch is one line before any work.
"""
from __future__ import annotations

import torch
from torch import nn

from gradleak.errors import UserError, error_line


def check_fits(model: nn.Module, name: str, num_classes: int, in_channels: int, resolution: int) -> None:
    """Raise :class:`UserError` unless every parameter/buffer is finite and ``model`` maps a batch of two
    ``in_channels x resolution x resolution`` images to ``(2, num_classes)`` logits. The probe runs in eval
    mode under ``no_grad`` with the RNG state restored, so it changes neither the model nor later draws."""
    for pname, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"model {name!r}: tensor {pname!r} holds NaN or inf; allowed: finite initial weights")
    modes = {m: m.training for m in model.modules()}
    x = torch.zeros(2, in_channels, resolution, resolution)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            out = model(x)
    except Exception as err:  # noqa: BLE001 - whatever the user's forward raises is one line
        raise UserError(f"model {name!r}: does not accept inputs of shape {tuple(x.shape[1:])} "
                        f"(data.channels, data.resolution): {error_line(err)}") from None
    finally:
        for m, mode in modes.items():
            m.training = mode
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model {name!r}: outputs {got} per image, the data has {num_classes} classes; "
                        f"allowed: a model with one logit per class ({num_classes})")
