"""MobileNet-v1 (depthwise separable convs) and MobileNet-v2 (inverted residuals).

Both keep their convolutional trunk in a flat ``features`` Sequential, followed
by ``avgpool`` and ``classifier``. ``stage_names`` lists the ``features.<i>``
modules after which the spatial resolution drops (plus the last one).
``depth_mult`` scales the widths; ``small_input=True`` makes the stem conv
stride 1, which suits 32x32 inputs. MobileNet-v2 matches torchvision's layout
and parameter names.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

from nets.models.init import init_weights
from nets.registry import register_net

__all__ = ["DepthwiseSeparable", "MobileNetV1", "InvertedResidual", "MobileNetV2",
           "mobilenet_v1", "mobilenet_v2"]

# MobileNet-v1 (out_channels, stride) for the 13 depthwise-separable blocks.
_V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
              (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
# MobileNet-v2 inverted-residual settings: expansion t, channels c, repeats n, stride s.
_V2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going below 90% of it (torchvision)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int = 1,
                 groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN + ReLU6, as indices 0/1/2 (torchvision Conv2dNormActivation)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2,
                  groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=False),
    )


def _stage_ends(features: nn.Sequential) -> List[str]:
    """Names of the ``features`` entries right before each stride-2 block, plus the last."""
    names = [f"features.{i - 1}" for i in range(1, len(features))
             if getattr(features[i], "stride", 1) == 2]
    return names + [f"features.{len(features) - 1}"]


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv-BN-ReLU6 (``dw``) then 1x1 pointwise conv-BN-ReLU6 (``pw``)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.dw = _conv_bn_act(in_ch, in_ch, 3, stride=stride, groups=in_ch)
        self.pw = _conv_bn_act(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class MobileNetV1(nn.Module):
    """MobileNet-v1 (Howard et al. 2017); widths are ``max(int(c * depth_mult), 8)``.

    Activations are ReLU6, as in the TF-slim model used by PocketFlow.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, depth_mult: float = 1.0,
                 small_input: bool = False) -> None:
        super().__init__()
        if depth_mult <= 0:
            raise ValueError(f"depth_mult must be positive, got {depth_mult}")

        def width(c: int) -> int:
            return max(int(c * depth_mult), 8)

        ch = width(32)
        layers: List[nn.Module] = [_conv_bn_act(in_channels, ch, 3, stride=1 if small_input else 2)]
        for out, stride in _V1_BLOCKS:
            layers.append(DepthwiseSeparable(ch, width(out), stride))
            ch = width(out)
        self.features = nn.Sequential(*layers)
        self.stage_names = _stage_ends(self.features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


class InvertedResidual(nn.Module):
    """1x1 expand (if t > 1), 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.stride = stride
        self.use_res_connect = stride == 1 and in_ch == out_ch
        hidden = int(round(in_ch * expand_ratio))
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_act(in_ch, hidden, 1))
        layers += [
            _conv_bn_act(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:  # fixed at construction, so FX-traceable
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNet-v2 (Sandler et al. 2018) with torchvision's width rounding."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, depth_mult: float = 1.0,
                 small_input: bool = False, dropout: float = 0.2) -> None:
        super().__init__()
        if depth_mult <= 0:
            raise ValueError(f"depth_mult must be positive, got {depth_mult}")
        ch = _make_divisible(32 * depth_mult)
        last_channel = _make_divisible(1280 * max(1.0, depth_mult))
        layers: List[nn.Module] = [_conv_bn_act(in_channels, ch, 3, stride=1 if small_input else 2)]
        for t, c, n, s in _V2_SETTINGS:
            out = _make_divisible(c * depth_mult)
            for i in range(n):
                layers.append(InvertedResidual(ch, out, s if i == 0 else 1, t))
                ch = out
        layers.append(_conv_bn_act(ch, last_channel, 1))
        self.features = nn.Sequential(*layers)
        self.stage_names = _stage_ends(self.features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_channel, num_classes))
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


@register_net("mobilenet_v1")
def mobilenet_v1(num_classes: int = 1000, in_channels: int = 3, depth_mult: float = 1.0,
                 small_input: bool = False) -> MobileNetV1:
    """MobileNet-v1 with width multiplier ``depth_mult``."""
    return MobileNetV1(num_classes, in_channels, depth_mult, small_input)


@register_net("mobilenet_v2")
def mobilenet_v2(num_classes: int = 1000, in_channels: int = 3, depth_mult: float = 1.0,
                 small_input: bool = False, dropout: float = 0.2) -> MobileNetV2:
    """MobileNet-v2 with width multiplier ``depth_mult``."""
    return MobileNetV2(num_classes, in_channels, depth_mult, small_input, dropout)
