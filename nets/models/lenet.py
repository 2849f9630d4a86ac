"""The LeNet-like CIFAR-10 net used by PocketFlow.

conv5x5(32) + ReLU + maxpool2, conv5x5(64) + ReLU + maxpool2, then
FC 384 + ReLU, FC 192 + ReLU, FC num_classes. There is no BN, so the convs
have biases. ``input_size`` (square side, divisible by 4) sizes the first FC.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from nets.registry import register_net

__all__ = ["LeNet", "lenet"]


class LeNet(nn.Module):
    """Two conv/pool layers and three fully connected layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        if input_size < 4:
            raise ValueError(f"input_size must be at least 4, got {input_size}")
        self.input_size = input_size
        self.stage_names: list = []  # no stages to attach auxiliary heads to
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2, bias=True)
        self.relu1 = nn.ReLU(inplace=False)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2, bias=True)
        self.relu2 = nn.ReLU(inplace=False)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear((input_size // 4) ** 2 * 64, 384)
        self.relu3 = nn.ReLU(inplace=False)
        self.fc2 = nn.Linear(384, 192)
        self.relu4 = nn.ReLU(inplace=False)
        self.fc3 = nn.Linear(192, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu4(self.fc2(self.relu3(self.fc1(x))))
        return self.fc3(x)


@register_net("lenet")
def lenet(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> LeNet:
    """PocketFlow's CIFAR-10 LeNet; ``input_size`` is the square input side."""
    return LeNet(num_classes, in_channels, input_size)
