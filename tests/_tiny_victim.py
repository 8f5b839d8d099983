"""The small conv victim and local dataset the protocol forward-model tests share (test_client_protocols,
test_fedprox, test_scaffold): N = 7 images (not a multiple of the batch sizes: incomplete last batches), K = 5
classes."""
from __future__ import annotations

import torch
from torch import nn

N, K = 7, 5


def tiny_net(bn: bool, bias_before_bn: bool = False) -> nn.Module:
    """Conv–(BN)–ReLU–Conv–ReLU–Linear, seeded. By default no bias before BatchNorm (as ResNets): that bias's true
    gradient is 0 and its computed one rounding noise, which Adam normalises to steps of ±lr and a proximal term
    then keeps pulling on — a trajectory set by the noise's sign, which no two implementations share."""
    torch.manual_seed(1)
    layers = [nn.Conv2d(3, 4, 3, padding=1, bias=bias_before_bn or not bn)] + ([nn.BatchNorm2d(4)] if bn else []) + [
        nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, K)]
    return nn.Sequential(*layers)


def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.rand(N, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 4, 1, 3])
