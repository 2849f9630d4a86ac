"""CIFAR-style ResNets (He et al. 2016, "6n+2" layers) with projection shortcuts.

Stem: 3x3 conv (16 ch) + BN + ReLU; three stages of ``n`` BasicBlocks with
16/32/64 channels (``widths``: other ones, e.g. a wide ResNet's multiples) and strides 1/2/2;
global average pool + Linear.
A shortcut is a 1x1 conv (with the stage's stride) + BN wherever the shape
changes ("option B"), and the identity otherwise.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from nets.models.init import init_weights
from nets.registry import register_net

__all__ = ["BasicBlock", "ResNetCifar", "resnet_cifar"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection; ReLU after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Sequential()  # identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet for 32x32 inputs with ``depth = 6n + 2`` layers."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3,
                 widths: tuple = (16, 32, 64)) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths: three positive channel counts, got {tuple(widths)}")
        n = (depth - 2) // 6
        w1, w2, w3 = (int(w) for w in widths)
        self.depth = depth
        self.stage_names = ["layer1", "layer2", "layer3"]
        self.conv1 = nn.Conv2d(in_channels, w1, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._make_layer(w1, w1, n, stride=1)
        self.layer2 = self._make_layer(w1, w2, n, stride=2)
        self.layer3 = self._make_layer(w2, w3, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)
        init_weights(self)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet_cifar(depth: int = 20, num_classes: int = 10, in_channels: int = 3,
                 widths: tuple = (16, 32, 64)) -> ResNetCifar:
    """Generic CIFAR ResNet builder for any ``depth = 6n + 2`` and stage ``widths``."""
    return ResNetCifar(depth=depth, num_classes=num_classes, in_channels=in_channels,
                       widths=widths)


@register_net("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    """ResNet-20 (n=3) for CIFAR."""
    return resnet_cifar(20, num_classes, in_channels)


@register_net("resnet32")
def resnet32(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    """ResNet-32 (n=5) for CIFAR."""
    return resnet_cifar(32, num_classes, in_channels)


@register_net("resnet44")
def resnet44(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    """ResNet-44 (n=7) for CIFAR."""
    return resnet_cifar(44, num_classes, in_channels)


@register_net("resnet56")
def resnet56(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    """ResNet-56 (n=9) for CIFAR."""
    return resnet_cifar(56, num_classes, in_channels)
