"""ResNet-18 (BasicBlock, ``[2, 2, 2, 2]``) with a width knob, optional batch norm and two stems.

* ``stem="cifar"``: 3x3 conv, stride 1, no max-pool (the usual CIFAR variant, for 32x32 inputs).
* ``stem="imagenet"``: 7x7 conv, stride 2, then 3x3 max-pool, stride 2 (torchvision's stem; GIAS
  uses it on 64x64 inputs).

``stem=None`` (default) picks ``cifar`` for resolutions <= 32 and ``imagenet`` above. Stage widths
are ``[w, 2w, 4w, 8w]``; an adaptive average pool and ``Linear(8w, num_classes)`` finish. With
``batchnorm=False`` every BatchNorm becomes ``nn.Identity`` and the convolutions get biases.
Residual sums are out of place (``out = out + identity``) so the model works with ``torch.func``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_bool, check_choice, check_common, check_int

STEMS = ("cifar", "imagenet")


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, batchnorm: bool) -> None:
        super().__init__()
        bias = not batchnorm
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = _norm(planes, batchnorm)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=bias)
        self.bn2 = _norm(planes, batchnorm)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=bias), _norm(planes, batchnorm)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet-18. Input ``N x C x R x R``; output ``N x num_classes``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        resolution: int = 32,
        width: int = 64,
        batchnorm: bool = True,
        stem: str | None = None,
    ) -> None:
        super().__init__()
        num_classes, in_channels, resolution = check_common("resnet18", num_classes, in_channels, resolution)
        width = check_int("resnet18 option width", width, 1)
        batchnorm = check_bool("resnet18 option batchnorm", batchnorm)
        if stem is None:
            stem = "cifar" if resolution <= 32 else "imagenet"
        self.stem = check_choice("resnet18 option stem", stem, STEMS)
        self.batchnorm = batchnorm
        bias = not batchnorm
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=bias)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=bias)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = _norm(width, batchnorm)
        self.relu = nn.ReLU()
        stages = []
        in_planes = width
        for index, factor in enumerate((1, 2, 4, 8)):
            planes = factor * width
            stride = 1 if index == 0 else 2
            stages.append(
                nn.Sequential(
                    BasicBlock(in_planes, planes, stride, batchnorm),
                    BasicBlock(planes, planes, 1, batchnorm),
                )
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_planes, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's initialisation: Kaiming-normal (fan-out) convs, BN weight 1 / bias 0,
        default Linear init; conv biases (no-BN variant) start at 0. Uses the global torch RNG."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
            elif isinstance(module, nn.Linear):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(self.avgpool(out), 1)
        return self.classifier(out)
