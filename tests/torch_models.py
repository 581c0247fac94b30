"""Tiny PyTorch modules with known numbers, shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


def one_conv_net() -> nn.Module:
    """The PyTorch twin of ``keras_models.one_conv_net``: 1x1 conv [2, -1], average, Linear [3, 1]."""
    net = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1, bias=False)
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([2.0, -1.0]).reshape(2, 1, 1, 1))
        net[3].weight.copy_(torch.tensor([[3.0, 1.0]]))
    return net
