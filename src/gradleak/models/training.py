"""Deterministic (re-)initialisation and short pre-training of victim models."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from gradleak.errors import bad_value

from ._checks import check_int


def _reset_in_place(model: nn.Module) -> None:
    """Re-initialise ``model`` from the global RNG.

    A model with its own ``reset_parameters`` (all built-in models) is trusted to cover all its
    parameters and buffers. Otherwise every submodule's ``reset_parameters`` is called, and a
    parameter owned by a module without one raises :class:`UserError` (it could not be re-drawn,
    so the seed would not determine the model).
    """
    own = getattr(model, "reset_parameters", None)
    if callable(own):
        own()
        return
    uncovered = []
    for module_name, module in model.named_modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        elif any(True for _ in module.parameters(recurse=False)):
            uncovered += [
                f"{module_name}.{p}" if module_name else p
                for p, _ in module.named_parameters(recurse=False)
            ]
    if uncovered:
        name = getattr(model, "gradleak_name", type(model).__name__)
        raise bad_value(
            "model",
            name,
            "a model whose parameters all belong to modules with reset_parameters() or that "
            f"defines reset_parameters() itself (not covered: {', '.join(uncovered[:5])})",
        )


def init_model(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise ``model`` deterministically from ``seed`` and return it.

    The same seed gives bit-identical parameters and buffers (BatchNorm running statistics are
    reset too), independent of the model's device: initialisation always runs on a CPU copy and
    is copied back. The global RNG state is left untouched.
    """
    seed = check_int("seed", seed, 0)
    tensors = list(model.parameters()) + list(model.buffers())
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if on_cpu:
            with torch.no_grad():
                _reset_in_place(model)
        else:
            clone = copy.deepcopy(model).to("cpu")
            with torch.no_grad():
                _reset_in_place(clone)
                model.load_state_dict(clone.state_dict())
    return model


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def pretrain(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
) -> list[float]:
    """Train ``model`` in place with plain SGD (cross-entropy) for ``steps`` mini-batch steps.

    Used to make a "trained for N steps" victim. Mini-batches of ``min(batch_size, len(images))``
    samples are drawn without replacement from seeded permutations (a new one each pass through
    the data), so equal arguments and equal initial parameters give identical results. The model
    is in training mode while training and gets its previous mode back afterwards; gradients are
    cleared at the end. Returns the loss of each step.
    """
    steps = check_int("steps", steps, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_int("seed", seed, 0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise bad_value("lr", lr, "a finite number > 0")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise bad_value("images", shape, "a non-empty N x C x H x W tensor")
    if (
        not isinstance(labels, torch.Tensor)
        or labels.dim() != 1
        or labels.shape[0] != images.shape[0]
        or labels.dtype.is_floating_point
        or labels.dtype.is_complex
        or bool((labels < 0).any())
    ):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise bad_value(
            "labels", shape, f"a 1-D tensor of {images.shape[0]} non-negative integer class indices"
        )
    device = _device_of(model)
    images = images.detach().to(device=device, dtype=torch.float32)
    labels = labels.detach().to(device=device, dtype=torch.long)
    count = images.shape[0]
    batch = min(batch_size, count)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    was_training = model.training
    model.train()
    losses: list[float] = []
    order = torch.empty(0, dtype=torch.long)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for step in range(steps):
                while order.numel() < batch:
                    order = torch.cat([order, torch.randperm(count, generator=generator)])
                index, order = order[:batch].to(device), order[batch:]
                logits = model(images[index])
                if step == 0 and int(labels.max()) >= logits.shape[1]:
                    raise bad_value(
                        "labels", int(labels.max()), f"class indices below {logits.shape[1]}"
                    )
                loss = F.cross_entropy(logits, labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return losses
