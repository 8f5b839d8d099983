"""LeNet as used by Deep Leakage from Gradients (Zhu et al., 2019).

Three 5x5 sigmoid convolutions (strides 2, 2, 1; 12 channels) and one linear layer. The sigmoid
activations make the model twice differentiable everywhere, which is what DLG's gradient matching
needs. DLG initialises every weight and bias uniformly in [-0.5, 0.5] (``init="dlg"``, the
default); ``init="default"`` keeps PyTorch's layer initialisation instead. ``width`` (default 12, DLG's)
sets the channels of every convolution; ``batchnorm`` adds a BatchNorm after each convolution (before the
sigmoid) — a small victim for the +BN priors of GradInversion / GIAS.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_bool, check_choice, check_common, check_int

INIT_STYLES = ("dlg", "default")


class LeNet(nn.Module):
    """DLG LeNet. Input ``N x C x R x R`` with ``R`` divisible by 4; output ``N x num_classes``."""

    def __init__(
        self, num_classes: int, in_channels: int = 3, resolution: int = 32, init: str = "dlg",
        width: int = 12, batchnorm: bool = False,
    ) -> None:
        super().__init__()
        num_classes, in_channels, resolution = check_common("lenet", num_classes, in_channels, resolution,
                                                            multiple=4, minimum=4)
        self.init_style = check_choice("lenet option init", init, INIT_STYLES)
        width = check_int("lenet option width", width, 1)
        batchnorm = check_bool("lenet option batchnorm", batchnorm)
        layers: list[nn.Module] = []
        for i, stride in enumerate((2, 2, 1)):
            layers.append(nn.Conv2d(in_channels if i == 0 else width, width, kernel_size=5, padding=2, stride=stride))
            if batchnorm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.Sigmoid())
        self.body = nn.Sequential(*layers)
        side = resolution // 4
        self.classifier = nn.Linear(width * side * side, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every layer from the global torch RNG."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if self.init_style == "dlg":
                    with torch.no_grad():
                        module.weight.uniform_(-0.5, 0.5)
                        if module.bias is not None:
                            module.bias.uniform_(-0.5, 0.5)
                else:
                    module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.flatten(self.body(x), 1)
        return self.classifier(features)
