"""Small 2-D convolutions written as im2col and one matrix product, for the compiled attack step.

    y[b, o, l] = Σ_k W[o, k] · cols(x)[b, k, l] + bias[o],    cols = unfold(x)   (im2col; Chellapilla et al., 2006)

with k running over (input channel, kernel row, kernel column) and l over output positions. The numbers are
those of ``F.conv2d`` up to float32 summation order. Why: on a CPU, a convolution the size of LeNet's
(12 → 12 channels, 5 × 5, 8 × 8 positions, ≈ 2·10⁵ multiply-adds) takes 90–150 µs in oneDNN and its
backward 300–400 µs — almost all of it fixed cost — whereas in a compiled trace the im2col becomes one
generated gather loop and the product one small GEMM; the double backward an attack needs turns into
gathers, scatter-adds (``col2im``) and GEMMs the same way. For larger convolutions oneDNN is faster
(InvertGrad's ConvNet width 16 at batch 4 ran 2× slower this way), so only layers whose convolution costs
at most :data:`SMALL_CONV_MACS` multiply-adds per call switch, and :class:`gradleak.backends.fast.Compiled`
compiles the model both ways and keeps whichever its timing says is faster.

Only used inside traced graphs: eagerly, ``F.unfold`` costs as much as the convolution it replaces.
:func:`matmul_convs` returns a copy of a model with every eligible ``nn.Conv2d`` swapped, with the same
parameter names, for ``torch.func.functional_call``.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from gradleak.fl.swapped import SwappedCopies

SMALL_CONV_MACS = 600_000  # per call (one restart): LeNet batch 1–2 switch, batch 4 and every ConvNet layer not


class MatmulConv2d(nn.Module):
    """Drop-in for an ``nn.Conv2d`` (groups 1, zero padding, same ``weight`` / ``bias``): im2col + matrix
    product when the call is small (:data:`SMALL_CONV_MACS`), ``F.conv2d`` otherwise."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.kernel_size, self.stride, self.padding, self.dilation = (conv.kernel_size, conv.stride, conv.padding,
                                                                      conv.dilation)

    def _out(self, size: int, i: int) -> int:
        return (size + 2 * self.padding[i] - self.dilation[i] * (self.kernel_size[i] - 1) - 1) // self.stride[i] + 1

    def forward(self, x: Tensor) -> Tensor:
        squeeze = x.dim() == 3
        if squeeze:
            x = x.unsqueeze(0)
        b, _, h, w = x.shape
        ho, wo = self._out(h, 0), self._out(w, 1)
        out_channels = self.weight.shape[0]
        if b * math.prod(self.weight.shape) * ho * wo > SMALL_CONV_MACS:  # shapes only: nothing traced
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        else:
            cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (b, C·kh·kw, ho·wo)
            y = (self.weight.reshape(out_channels, -1) @ cols).reshape(b, out_channels, ho, wo)
            if self.bias is not None:
                y = y + self.bias.view(1, -1, 1, 1)
        return y.squeeze(0) if squeeze else y


def eligible(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution :class:`MatmulConv2d` reproduces (plain 2-D, groups 1, zero padding)."""
    return (type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def has_eligible(model: nn.Module) -> bool:
    return any(eligible(m) for m in model.modules())


_COPIES = SwappedCopies(lambda m: MatmulConv2d(m) if eligible(m) else None)


def matmul_convs(model: nn.Module) -> nn.Module:
    """A (cached) copy of ``model`` with every eligible ``nn.Conv2d`` replaced by :class:`MatmulConv2d`; same
    parameter and buffer names, so pass the state with ``functional_call``. Follows ``model``'s train/eval
    mode at each call."""
    return _COPIES(model)
