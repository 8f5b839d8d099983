"""User model factories that are wrong in the ways a careless user's are (imported by test_bad_input.py as
``model: tests._bad_models:<name>``)."""
import torch
from torch import nn


def raises(num_classes, in_channels, resolution):
    raise RuntimeError("cannot build\nsecond line of the message")


def wrong_outputs(num_classes, in_channels, resolution):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * resolution * resolution, num_classes + 3))


def nan_params(num_classes, in_channels, resolution):
    net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * resolution * resolution, num_classes))
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    return net


def rejects_input(num_classes, in_channels, resolution):
    return nn.Sequential(nn.Flatten(), nn.Linear(7, num_classes))  # ignores the input size


def good(num_classes, in_channels, resolution):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * resolution * resolution, num_classes))
