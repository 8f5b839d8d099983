"""Cached copies of a model with some layers swapped for drop-in equivalents (same parameter and buffer names),
for ``torch.func.functional_call`` — used by :mod:`gradleak.fl.functional_bn` and :mod:`gradleak.fl.matmul_conv`."""
from __future__ import annotations

import copy
import weakref
from typing import Callable

from torch import nn


class SwappedCopies:
    """``copies(model)``: a copy of ``model`` in which every submodule ``m`` with ``replace(m)`` not None is
    replaced by it, made once per model (weakly cached) and switched to ``model``'s train/eval mode at each call.
    The copy's own tensor values are those of ``model`` at the first call: pass the state explicitly."""

    def __init__(self, replace: Callable[[nn.Module], nn.Module | None]):
        self.replace = replace
        self._cache: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()

    def _swap(self, module: nn.Module) -> None:
        for name, child in module.named_children():
            new = self.replace(child)
            if new is not None:
                setattr(module, name, new)
            else:
                self._swap(child)

    def __call__(self, model: nn.Module) -> nn.Module:
        swapped = self._cache.get(model)
        if swapped is None:
            swapped = copy.deepcopy(model)
            self._swap(swapped)
            self._cache[model] = swapped
        swapped.train(model.training)
        return swapped
