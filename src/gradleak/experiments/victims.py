"""Victim models used by the ROG experiments, loadable by import path (``model.name:
gradleak.experiments.victims:rog_lenet5``) so that Observations rebuild them without a registry entry.

:func:`rog_lenet5` is the LeNet-5 of the ROG code (Yue et al., 2023, ``networks/vgg.py`` ``LeNet_5``; the
paper's main victim, §4.2 "we present only the LeNet attack results"): two 5×5 convolution–ReLU–max-pool
stages and a bias-free ``Linear(c2·(R/4)², hidden)``–ReLU–``Linear(hidden, K)`` head, no batch norm. ROG
uses c1 = 32, c2 = 64, hidden = 512 at 128×128 (33 M parameters); the defaults here (16, 32, 256) keep a
64×64 attack at about a second per iteration on one CPU thread. The wide first FC layer over
high-resolution features is what makes 100 ROG iterations enough: its gradient is nearly linear in the
features. (gradleak's VGG-7 at small width — six convolutions, three pools — gave ≈ 10 dB for ROG and
InvertGrad alike after 100–300 iterations at 64×64, batch 8: no measurable leakage to compare.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet5(nn.Module):
    """ROG's LeNet-5. Input N × C × R × R (R divisible by 4); output N × num_classes."""

    def __init__(self, num_classes: int, in_channels: int = 3, resolution: int = 32, c1: int = 16, c2: int = 32,
                 hidden: int = 256):
        super().__init__()
        from gradleak.models._checks import check_common, check_int

        num_classes, in_channels, resolution = check_common("rog_lenet5", num_classes, in_channels, resolution,
                                                            multiple=4, minimum=4)
        c1, c2 = check_int("rog_lenet5 option c1", c1, 1), check_int("rog_lenet5 option c2", c2, 1)
        hidden = check_int("rog_lenet5 option hidden", hidden, 1)
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.fc1 = nn.Linear(c2 * (resolution // 4) ** 2, hidden, bias=False)
        self.classifier = nn.Linear(hidden, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.classifier(F.relu(self.fc1(torch.flatten(x, 1))))

    def reset_parameters(self) -> None:
        for m in (self.conv1, self.conv2, self.fc1, self.classifier):
            if hasattr(m, "reset_parameters"):  # PRECODE moves the head out (classifier = Identity)
                m.reset_parameters()


def rog_lenet5(num_classes: int, in_channels: int = 3, resolution: int = 32, c1: int = 16, c2: int = 32,
               hidden: int = 256) -> LeNet5:
    """Factory for ``model.name: gradleak.experiments.victims:rog_lenet5`` (options c1, c2, hidden)."""
    return LeNet5(num_classes, in_channels, resolution, c1, c2, hidden)


ROG_LENET5 = "gradleak.experiments.victims:rog_lenet5"
