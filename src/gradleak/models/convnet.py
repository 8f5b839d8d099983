"""The ConvNet of Inverting Gradients (Geiping et al., 2020), as in ``inversefed``/``breaching``.

Eight 3x3 conv(-BN)-ReLU blocks with widths ``[w, 2w, 2w, 4w, 4w, 4w | 4w, 4w]``, a 3x3 max-pool
after the sixth and after the eighth block, and a linear layer on the ``4w x 3 x 3`` features
(``36 w`` inputs). At 32x32 the two pools give exactly 3x3; for other resolutions an adaptive
average pool brings the map to 3x3 (a no-op at 32x32), so the classifier size never changes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ._checks import check_bool, check_common, check_int

_WIDTHS = (1, 2, 2, 4, 4, 4, 4, 4)


class ConvNet(nn.Module):
    """InvertGrad ConvNet. Input ``N x C x R x R`` with ``R >= 9``; output ``N x num_classes``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        resolution: int = 32,
        width: int = 64,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        num_classes, in_channels, resolution = check_common("convnet", num_classes, in_channels, resolution, minimum=9)
        width = check_int("convnet option width", width, 1)
        batchnorm = check_bool("convnet option batchnorm", batchnorm)
        layers: list[tuple[str, nn.Module]] = []
        channels = in_channels
        for index, factor in enumerate(_WIDTHS):
            out = factor * width
            layers.append((f"conv{index}", nn.Conv2d(channels, out, kernel_size=3, padding=1)))
            if batchnorm:
                layers.append((f"bn{index}", nn.BatchNorm2d(out)))
            layers.append((f"relu{index}", nn.ReLU()))
            if index == 5:
                layers.append(("pool0", nn.MaxPool2d(3)))
            channels = out
        layers.append(("pool1", nn.MaxPool2d(3)))
        layers.append(("pool2", nn.AdaptiveAvgPool2d(3)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = nn.Linear(36 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
