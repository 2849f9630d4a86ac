"""Distiller's CIFAR-10 models (IntelLabs/distiller, ``distiller/models/cifar10``), written anew
with Distiller's module names, so that its schedule files address them as published
(``module.layer1.0.pre_relu``, ``module.features.0.weight``, ``layer2.0.downsample.0``).

- ``resnet{20,32,44,56}_cifar``: stem ``conv1`` / ``bn1`` / ``relu``; three stages ``layer1..3``
  of ``n`` blocks (16/32/64 channels, strides 1/2/2) with ``conv1 bn1 relu1 conv2 bn2``, the
  sum ``residual_eltwiseadd`` and ``relu2`` after it; where the shape changes, the shortcut
  ``downsample`` is ``Sequential(1x1 conv, BN)``; ``avgpool`` + ``fc``.
- ``preact_resnet{20,32,44,56,110}_cifar``: stem ``conv1``; pre-activation blocks
  ``pre_bn pre_relu conv1 bn relu conv2`` (the sum is the block's output); ``final_bn``,
  ``final_relu``, ``avgpool``, ``fc``. The shortcut that changes the shape is Distiller's
  parameter-free ``downsample = Sequential(AvgPool2d(2), ChannelPad)`` (zero channels on both
  sides, Distiller's ``ConstantPad3d``) on the block's input; the ``_conv_ds`` variants use a
  1x1 conv ``downsample`` on the pre-activation.
- ``vgg{11,13,16,19}_cifar`` and ``vgg{..}_bn_cifar``: ``features`` (conv [+ BN] + ReLU, max
  pools) and one ``classifier`` Linear.
- ``simplenet_cifar``: LeNet-5 (``conv1 relu_conv1 pool1 conv2 relu_conv2 pool2 fc1 relu_fc1 fc2
  relu_fc2 fc3``).

Differences from Distiller's code, none of which renames a parameter or module:
``num_classes`` / ``in_channels`` (and ``input_size`` where the classifier's width depends on
it) are arguments; every ReLU is a module with ``inplace=False`` (Distiller's stem, VGG and
``final_relu`` ReLUs are in-place, and its pre-activation sum is ``+=``); the pool-and-pad shortcut pads
with a concatenation (``ChannelPad``, the same values); the ResNets' ``avgpool``
is adaptive (Distiller's ``AvgPool2d(8)`` equals it at 32x32 and fails on smaller inputs); no
layer gates; weights start from this project's ``init_weights``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from nets.models.init import init_weights
from nets.registry import register_net

__all__ = ["ChannelPad", "EltwiseAdd", "DistillerBasicBlock", "DistillerResNetCifar",
           "PreactBasicBlock", "PreactResNetCifar", "VGGCifar", "Simplenet", "VGG_CFGS", "RESNET_BLOCKS",
           "PREACT_BLOCKS"]

RESNET_BLOCKS = {20: 3, 32: 5, 44: 7, 56: 9}              # depth -> blocks per stage
PREACT_BLOCKS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}
VGG_CFGS = {  # Distiller's configurations A, B, D, E: conv widths, "M" = 2x2 max pool
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class EltwiseAdd(nn.Module):
    """``a + b`` as a module (Distiller's ``distiller.modules.EltwiseAdd``), so quantizer
    overrides that name ``residual_eltwiseadd`` find it."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class ChannelPad(nn.Module):
    """``pad`` zero channels on each side of dim 1: Distiller's ``ConstantPad3d((0, 0, 0, 0, pad,
    pad), 0)`` on a 4-D tensor, written as a concatenation so that the channel graph sees the
    input's channels pass to the middle of the output (it reads a pad as spatial)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.zeros, not x.new_zeros: the channel graph fixes the channels an op it does not
        # know reads, and new_zeros would read x (its whole residual stream unprunable)
        zeros = torch.zeros((x.size(0), self.pad, x.size(2), x.size(3)), dtype=x.dtype,
                            device=x.device)
        return torch.cat([zeros, x, zeros], dim=1)


class DistillerBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers, the shortcut added, ReLU after the sum (post-activation)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.downsample = downsample
        self.stride = stride
        self.residual_eltwiseadd = EltwiseAdd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu2(self.residual_eltwiseadd(residual, out))


class DistillerResNetCifar(nn.Module):
    """Distiller's ``ResNetCifar``: ``blocks`` DistillerBasicBlocks per stage."""

    def __init__(self, blocks: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.inplanes = 16
        self.stage_names = ["layer1", "layer2", "layer3"]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._make_layer(16, blocks, stride=1)
        self.layer2 = self._make_layer(32, blocks, stride=2)
        self.layer3 = self._make_layer(64, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes))
        layers = [DistillerBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [DistillerBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PreactBasicBlock(nn.Module):
    """BN + ReLU before each conv; the sum with the shortcut is the block's output.
    ``preact_downsample``: the shortcut reads the pre-activation (Distiller: only a conv
    shortcut does), otherwise the block's input."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, preact_downsample: bool = True) -> None:
        super().__init__()
        self.pre_bn = nn.BatchNorm2d(inplanes)
        self.pre_relu = nn.ReLU(inplace=False)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample
        self.stride = stride
        self.preact_downsample = preact_downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.pre_relu(self.pre_bn(x))
        out = self.conv2(self.relu(self.bn(self.conv1(preact))))
        if self.downsample is None:
            residual = x
        else:
            residual = self.downsample(preact if self.preact_downsample else x)
        return out + residual


class PreactResNetCifar(nn.Module):
    """Distiller's ``PreactResNetCifar``; ``conv_downsample``: 1x1 conv shortcuts instead of
    the parameter-free pool-and-pad ones."""

    def __init__(self, blocks: int, num_classes: int = 10, in_channels: int = 3,
                 conv_downsample: bool = False) -> None:
        super().__init__()
        self.inplanes = 16
        self.stage_names = ["layer1", "layer2", "layer3"]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(16, blocks, 1, conv_downsample)
        self.layer2 = self._make_layer(32, blocks, 2, conv_downsample)
        self.layer3 = self._make_layer(64, blocks, 2, conv_downsample)
        self.final_bn = nn.BatchNorm2d(64)
        self.final_relu = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int,
                    conv_downsample: bool) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            if conv_downsample:
                downsample = nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False)
            else:   # identity: strided average + zero channels on both sides (Distiller's)
                pad = self.inplanes // 2
                downsample = nn.Sequential(nn.AvgPool2d(2), ChannelPad(pad))
        layers = [PreactBasicBlock(self.inplanes, planes, stride, downsample, conv_downsample)]
        self.inplanes = planes
        layers += [PreactBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.final_relu(self.final_bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGGCifar(nn.Module):
    """Distiller's ``VGGCifar``: ``features`` and one Linear ``classifier`` on the flattened
    512 x (input_size / 32)^2 features (512 at 32x32). Its stages are the max pools."""

    def __init__(self, cfg: list, batch_norm: bool = False, num_classes: int = 10,
                 in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        if input_size < 32 or input_size % 32:
            raise ValueError(f"VGG (5 max pools) needs an input_size that is a multiple of 32, "
                             f"got {input_size}")
        layers: list = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(channels, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=False))
            channels = v
        self.features = nn.Sequential(*layers)
        self.stage_names = [f"features.{i}" for i, m in enumerate(layers)
                            if isinstance(m, nn.MaxPool2d)]
        self.classifier = nn.Linear(channels * (input_size // 32) ** 2, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class Simplenet(nn.Module):
    """Distiller's ``Simplenet`` (LeNet-5): two 5x5 convs (no padding) with max pools, three
    Linear layers; ``fc1`` reads 16 x 5 x 5 features at 32x32 (``input_size`` >= 16)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"simplenet needs an input_size of at least 16, got {input_size}")
        self.stage_names: list = []        # no stages to attach auxiliary heads to
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.relu_conv1 = nn.ReLU(inplace=False)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu_conv2 = nn.ReLU(inplace=False)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.relu_fc1 = nn.ReLU(inplace=False)
        self.fc2 = nn.Linear(120, 84)
        self.relu_fc2 = nn.ReLU(inplace=False)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu_conv1(self.conv1(x)))
        x = self.pool2(self.relu_conv2(self.conv2(x)))
        x = self.relu_fc1(self.fc1(torch.flatten(x, 1)))
        return self.fc3(self.relu_fc2(self.fc2(x)))


# -- registration under Distiller's names --------------------------------------------------------
def _named(builder: Callable[..., nn.Module], name: str, doc: str) -> Callable[..., nn.Module]:
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    return register_net(name)(builder)


def _resnet(depth: int) -> None:
    def build(num_classes: int = 10, in_channels: int = 3) -> DistillerResNetCifar:
        return DistillerResNetCifar(RESNET_BLOCKS[depth], num_classes, in_channels)

    _named(build, f"resnet{depth}_cifar", f"Distiller's ResNet-{depth} for CIFAR.")


def _preact(depth: int, conv_ds: bool) -> None:
    def build(num_classes: int = 10, in_channels: int = 3) -> PreactResNetCifar:
        return PreactResNetCifar(PREACT_BLOCKS[depth], num_classes, in_channels, conv_ds)

    kind = "1x1 conv" if conv_ds else "pool-and-pad"
    _named(build, f"preact_resnet{depth}_cifar{'_conv_ds' if conv_ds else ''}",
           f"Distiller's pre-activation ResNet-{depth} for CIFAR ({kind} shortcuts).")


def _vgg(depth: int, batch_norm: bool) -> None:
    def build(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> VGGCifar:
        return VGGCifar(VGG_CFGS[depth], batch_norm, num_classes, in_channels, input_size)

    _named(build, f"vgg{depth}{'_bn' if batch_norm else ''}_cifar",
           f"Distiller's VGG-{depth} for CIFAR{' with BN' if batch_norm else ''}.")


for _depth in RESNET_BLOCKS:
    _resnet(_depth)
for _depth in PREACT_BLOCKS:
    _preact(_depth, conv_ds=False)
    _preact(_depth, conv_ds=True)
for _depth in VGG_CFGS:
    _vgg(_depth, batch_norm=False)
    _vgg(_depth, batch_norm=True)


@register_net("simplenet_cifar")
def simplenet_cifar(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> Simplenet:
    """Distiller's simplenet (LeNet-5) for CIFAR."""
    return Simplenet(num_classes, in_channels, input_size)
