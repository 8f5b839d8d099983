"""VGG-7 as used by ROG (Yue et al., 2023; ``networks/vgg.py`` of their code).

Six 3x3 conv-ReLU layers ``[w, w, M, 2w, 2w, M, 4w, 4w, M]`` (``w = 128`` by default, as in ROG),
then ``Linear(4w * (R/8)^2, hidden, bias=False)``-ReLU-``Linear(hidden, num_classes, bias=False)``.
ROG uses no batch norm (``batchnorm=False`` default); with ``batchnorm=True`` a BatchNorm follows
each conv (and the convs lose their bias). ``pool=k`` inserts an adaptive average pool to ``k x k``
before the classifier so the head no longer grows with the resolution.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_bool, check_common, check_int

_PLAN = (1, 1, "M", 2, 2, "M", 4, 4, "M")


class VGG7(nn.Module):
    """ROG VGG-7. Input ``N x C x R x R`` (``R`` divisible by 8); output ``N x num_classes``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        resolution: int = 32,
        width: int = 128,
        hidden: int = 1024,
        batchnorm: bool = False,
        pool: int | None = None,
    ) -> None:
        super().__init__()
        num_classes, in_channels, resolution = check_common("vgg7", num_classes, in_channels, resolution,
                                                            multiple=8, minimum=8)
        width = check_int("vgg7 option width", width, 1)
        hidden = check_int("vgg7 option hidden", hidden, 1)
        batchnorm = check_bool("vgg7 option batchnorm", batchnorm)
        if pool is not None:
            pool = check_int("vgg7 option pool", pool, 1)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out = int(item) * width
            layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            channels = out
        side = resolution // 8
        if pool is not None:
            layers.append(nn.AdaptiveAvgPool2d(pool))
            side = pool
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(channels * side * side, hidden, bias=False)
        self.relu = nn.ReLU()
        self.classifier = nn.Linear(hidden, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.flatten(self.features(x), 1)
        return self.classifier(self.relu(self.fc1(features)))
