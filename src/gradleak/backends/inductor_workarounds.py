"""Decompositions applied while tracing the compiled attack step, to keep Inductor off a miscompiled pattern.

**The bug (torch 2.13, CPU).** Inductor decomposes ``max_pool2d_with_indices_backward`` into a zero-filled
buffer plus a ``scatter_add`` of the output gradient at the forward pass's argmax indices. In a large graph
(the InvertGrad ConvNet's gradient-matching step: BatchNorm → ReLU → MaxPool2d(3), then the client's backward
and its derivative) the scheduler can fuse a *consumer* of that buffer — the ReLU backward
``threshold_backward(grad, relu_out, 0)`` and the BatchNorm backward after it — into the kernel that
zero-fills the buffer, before the kernel that scatters into it: the consumer reads zeros. Seen in the
generated C++ (``cpp_fused_..._max_pool2d_with_indices_backward_..._threshold_backward_1`` stores 0 to the
buffer and reads it back in its next loop; ``cpp_fused_max_pool2d_with_indices_backward_..._5`` does the
``+=`` later), so the pooled layer's gradient is dropped: relative error 1.0 in a part of the step compiled
alone and in ``docs/inductor_maxpool_scatter_repro.py``. Whether the fusion happens depends on the rest of the
graph (which buffers are outputs, the layout); in the whole step it happened not to be chosen — the step's
separate 10⁻²-level disagreements on that victim are ReLU kinks, not this bug (``docs/speed.md``,
"Session 4"). Backends without Inductor's lowering (``aot_eager``) are exact.

**The workaround.** :data:`TRACE_DECOMPOSITIONS` replaces the op while ``make_fx`` traces the step by a
gather form without any scatter or mutation: every input position looks up the (at most ⌈k/s⌉² per axis)
pooling windows that contain it, and takes the output gradient of each whose argmax index is that position,

    ∂x[p] = Σ_{o : p ∈ window(o), idx[o] = p} ∂y[o]

which is the definition of max pooling's backward (the same sum ``scatter_add`` computes), built from
index loads, comparisons and ``where`` that Inductor fuses as plain pointwise code. Ties are routed exactly
as the forward pass's ``indices`` say, so the result equals ATen's kernel bit for bit on non-overlapping
windows (tested), and to rounding where overlapping windows add several terms.
"""
from __future__ import annotations

import torch
from torch import Tensor

aten = torch.ops.aten


def _axis(size_in: int, size_out: int, kernel: int, stride: int, pad: int, shift: int, device):
    """For every input coordinate along one axis: the ``shift``-th candidate window (clamped into range) and
    whether it really contains the coordinate."""
    p = torch.arange(size_in, device=device)
    o = torch.div(p + pad, stride, rounding_mode="floor") - shift
    valid = (o >= 0) & (o < size_out) & (p + pad - o * stride < kernel)
    return o.clamp(0, size_out - 1), valid


def max_pool2d_backward_gather(grad_output: Tensor, self: Tensor, kernel_size, stride, padding, dilation,
                               ceil_mode: bool, indices: Tensor):
    """``aten.max_pool2d_with_indices_backward`` without scatter (see the module docstring)."""
    kernel = list(kernel_size) * (2 if len(kernel_size) == 1 else 1)
    stride = list(stride) if stride else list(kernel)
    stride = stride * (2 if len(stride) == 1 else 1)
    padding = list(padding) * (2 if len(padding) == 1 else 1)
    dilation = list(dilation) * (2 if len(dilation) == 1 else 1)
    if any(d != 1 for d in dilation):
        return NotImplemented
    H, W = self.shape[-2:]
    Ho, Wo = grad_output.shape[-2:]
    dev = grad_output.device
    position = (torch.arange(H, device=dev) * W).unsqueeze(1) + torch.arange(W, device=dev)  # (H, W)
    result = None
    for sh in range(-(-kernel[0] // stride[0])):
        oh, vh = _axis(H, Ho, kernel[0], stride[0], padding[0], sh, dev)
        for sw in range(-(-kernel[1] // stride[1])):
            ow, vw = _axis(W, Wo, kernel[1], stride[1], padding[1], sw, dev)
            rows, cols = oh.unsqueeze(1), ow.unsqueeze(0)
            hit = (indices[..., rows, cols] == position) & vh.unsqueeze(1) & vw.unsqueeze(0)
            term = torch.where(hit, grad_output[..., rows, cols], torch.zeros((), dtype=grad_output.dtype, device=dev))
            result = term if result is None else result + term
    return result


TRACE_DECOMPOSITIONS = {aten.max_pool2d_with_indices_backward.default: max_pool2d_backward_gather}
