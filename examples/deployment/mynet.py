"""The user's own model, as a gradleak factory: ``factory(num_classes, in_channels, resolution, **options)``."""
import torch.nn as nn


def make(num_classes, in_channels, resolution, width=16):
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(width * (resolution // 2) ** 2, num_classes))
