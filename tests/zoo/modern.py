"""Modern user-style nets (tests only): the patterns users bring that the first zoo lacked.

- ``ConvNeXtNet``: depthwise 7x7, ``permute -> LayerNorm -> Linear -> GELU -> Linear``, a
  layer-scale parameter, ``permute`` back, residual sum.
- ``MobileNetV3Net``: Hardswish, an SE gate of 1x1 convs ending in Hardsigmoid, residual sum.
- ``ShuffleNetNet``: two ShuffleNetV2 units (``chunk``, ``cat``, the channel shuffle written
  ``view -> transpose -> reshape``).
- ``FunctionalNet``: ``F.relu``, ``x = x + self.conv(x)``, an in-place ``out.mul_(0.5)`` on a
  residual member, ``torch.flatten`` before the classifier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, expansion: int = 4) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, expansion * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(expansion * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = (self.gamma * x).permute(0, 3, 1, 2)
        return shortcut + x


class ConvNeXtNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.block1 = ConvNeXtBlock(16)
        self.block2 = ConvNeXtBlock(16)
        self.head_norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(self.head_norm(x.mean((2, 3))))


class SqueezeExcite1x1(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.expand(F.relu(self.reduce(s))))


def cbh(c_in: int, c_out: int, k: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, 1, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.Hardswish()) if act else nn.Sequential(*layers)


class MobileNetV3Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = cbh(1, 16, 3)
        self.expand = cbh(16, 48)
        self.dw = cbh(48, 48, 3, groups=48)
        self.se = SqueezeExcite1x1(48, 12)
        self.project = cbh(48, 16, act=False)
        self.head = cbh(16, 64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.se(self.dw(self.expand(x))))
        x = F.adaptive_avg_pool2d(self.head(x), 1)
        return self.fc(torch.flatten(x, 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: half the channels pass, half go through the branch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch(x2)), dim=1), 2)


class ShuffleNetNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24),
                                  nn.ReLU())
        self.unit1 = ShuffleUnit(24)
        self.unit2 = ShuffleUnit(24)
        self.head = nn.Sequential(nn.Conv2d(24, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.unit2(self.unit1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class FunctionalNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 26, 3, padding=1)
        self.conv2 = nn.Conv2d(26, 26, 3, padding=1)
        self.conv3 = nn.Conv2d(26, 26, 3, padding=1)
        self.conv4 = nn.Conv2d(26, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = x + F.relu(self.conv2(x))
        out = self.conv3(x)
        out.mul_(0.5)
        x = x + out
        x = F.relu(self.conv4(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


MODERN = {"convnext": ConvNeXtNet, "mobilenetv3": MobileNetV3Net, "shufflenet": ShuffleNetNet,
          "functional": FunctionalNet}
