"""Victims in R-GAP's *standard form* (Zhu & Blaschko, ICLR 2021): a chain of convolutions with an
invertible activation (LeakyReLU, slope 0.2) and one final linear layer, no pooling, no normalisation.

* ``cnn6`` — R-GAP's CNN6: six convolutions (3→12 k4 s2 p2, 12→36 k3 s2 p1, two 36→36 k3 s1 p1,
  36→64 k3 s2 p1, 64→128 k3 s1 p1) and one linear layer (128·5·5 = 3200 features at 32×32). R-GAP's own
  network ends in one logit for a binary logistic loss; here the head has ``num_classes`` logits for the
  client's cross-entropy.
* ``cnn10`` — the deeper variant of GIAS appendix C (Figure A2): the same stem and tail with six 36→36
  convolutions in the middle (ten convolutions + one linear layer). The paper does not list its layers;
  this is our choice in CNN6's style.
* ``mlp`` — a fully connected victim (Flatten → Linear → activation … → Linear) for the analytic FC-layer
  attacks (:mod:`gradleak.attacks.analytic`).

``bias`` (default False, R-GAP's networks have none) adds a bias to every layer; ``width`` scales the
channels (1.0 = R-GAP's).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ._checks import check_bool, check_choice, check_common, check_int
from gradleak.errors import bad_value

#: (out_channels, kernel, stride, padding) of CNN6's convolutions; CNN10 repeats the 36-channel layer.
_STEM = [(12, 4, 2, 2), (36, 3, 2, 1)]
_MIDDLE = (36, 3, 1, 1)
_TAIL = [(64, 3, 2, 1), (128, 3, 1, 1)]


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class StandardCNN(nn.Module):
    """Convolutions + LeakyReLU, then one linear layer on the flattened features (R-GAP standard form)."""

    def __init__(self, name: str, layers: list[tuple[int, int, int, int]], num_classes: int, in_channels: int,
                 resolution: int, width: float = 1.0, bias: bool = False, slope: float = 0.2) -> None:
        super().__init__()
        num_classes, in_channels, resolution = check_common(name, num_classes, in_channels, resolution, minimum=8)
        bias = check_bool(f"{name} option bias", bias)
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 16:
            raise bad_value(f"{name} option width", width, "a number in (0, 16]")
        if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not 0 < slope < 1:
            raise bad_value(f"{name} option slope", slope, "a number in (0, 1) (LeakyReLU must stay invertible)")
        seq: list[tuple[str, nn.Module]] = []
        channels, side = in_channels, resolution
        for i, (out, k, s, p) in enumerate(layers):
            out = max(1, round(out * width))
            seq.append((f"conv{i}", nn.Conv2d(channels, out, kernel_size=k, stride=s, padding=p, bias=bias)))
            seq.append((f"act{i}", nn.LeakyReLU(negative_slope=float(slope))))
            channels, side = out, _conv_out(side, k, s, p)
        self.features = nn.Sequential(OrderedDict(seq))
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels * side * side, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def CNN6(num_classes: int, in_channels: int = 3, resolution: int = 32, width: float = 1.0, bias: bool = False,
         slope: float = 0.2) -> StandardCNN:
    """R-GAP's CNN6 (six convolutions + one linear layer, LeakyReLU 0.2, no bias)."""
    return StandardCNN("cnn6", _STEM + [_MIDDLE] * 2 + _TAIL, num_classes, in_channels, resolution, width, bias,
                       slope)


def CNN10(num_classes: int, in_channels: int = 3, resolution: int = 32, width: float = 1.0, bias: bool = False,
          slope: float = 0.2) -> StandardCNN:
    """CNN10 of GIAS Figure A2 (ten convolutions + one linear layer) in CNN6's style."""
    return StandardCNN("cnn10", _STEM + [_MIDDLE] * 6 + _TAIL, num_classes, in_channels, resolution, width, bias,
                       slope)


ACTIVATIONS = ("relu", "leakyrelu", "sigmoid")


class MLP(nn.Module):
    """Flatten → [Linear(hidden) → activation] × depth → Linear(num_classes); every layer has a bias
    (the analytic FC attack reads the input of the first layer from ∇W / ∇b)."""

    def __init__(self, num_classes: int, in_channels: int = 3, resolution: int = 32, width: int = 256,
                 depth: int = 1, activation: str = "relu") -> None:
        super().__init__()
        num_classes, in_channels, resolution = check_common("mlp", num_classes, in_channels, resolution)
        width = check_int("mlp option width", width, 1)
        depth = check_int("mlp option depth", depth, 1)
        activation = check_choice("mlp option activation", activation, ACTIVATIONS)
        act = {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.2), "sigmoid": nn.Sigmoid}[activation]
        seq: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        n = in_channels * resolution * resolution
        for i in range(depth):
            seq += [(f"fc{i}", nn.Linear(n, width)), (f"act{i}", act())]
            n = width
        self.body = nn.Sequential(OrderedDict(seq))
        self.classifier = nn.Linear(n, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))
