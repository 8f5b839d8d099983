"""Import shim for the peer tool ``breaching`` 0.1.2 under gradleak's CPU-only torch.

``breaching`` imports ``torchvision``; the PyPI ``torchvision==0.28.0`` wheel (installed ``--no-deps`` so
that it cannot replace gradleak's pinned torch) ships a compiled ``_C`` extension that does not load against
the CPU build, and its ``_meta_registrations`` then fails on import with
``RuntimeError: operator torchvision::nms does not exist``. Defining the two operator schemas it registers
fake kernels for (``nms``, ``qnms``) lets torchvision — and with it breaching — import. Calling them raises:
neither breaching's optimisation attacks nor these benchmarks use detection ops.

Benchmarks only (never imported by ``src/gradleak``): ``import _peer_shim`` (benchmarks/ on sys.path) before ``breaching``.
"""
from __future__ import annotations

import torch

_LIB = None


def install() -> None:
    """Define dummy ``torchvision::nms`` / ``torchvision::qnms`` schemas when torchvision's own ops are
    missing (idempotent)."""
    global _LIB
    if _LIB is not None:
        return
    try:
        torch.ops.torchvision.nms  # the real extension (or an earlier shim) already defined it
        return
    except (AttributeError, RuntimeError):
        pass
    _LIB = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


install()
