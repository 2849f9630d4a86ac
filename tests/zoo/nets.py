"""User-style nets defined only in the tests (not registered anywhere), and the probe that
counts output channels nobody reads. Each net exercises a graph pattern the channel graph
must follow: concatenated branches, squeeze-and-excitation, grouped convs, a DenseNet block,
1-D convs, channel split / transposed conv, and the modern ones of ``tests/zoo/modern.py``
(ConvNeXt, MobileNetV3, ShuffleNetV2, a functional net with an in-place op). Also: ``pruned``
(a zoo net with a random keep), ``LATE_MEMBERS`` (the residual members dead-channel
elimination shrinks), ``DEAD_AFTER_PLAN`` and ``UserNet``."""
from __future__ import annotations

import torch
from torch import nn

from compression.graph.layers import analyse, choose_layers
from compression.selection.blocks import whole_blocks
from compression.surgery.unread import unread_channels  # noqa: F401  (the tests' probe)
from tests.zoo.modern import MODERN


def cbr(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class InceptionNet(nn.Module):
    """Three branches (1x1; 1x1 -> 3x3; pool -> 1x1) concatenated, read by one 1x1 conv."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(1, 16)
        self.b1 = cbr(16, 8, 1)
        self.b2 = nn.Sequential(cbr(16, 8, 1), cbr(8, 12))
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(16, 4, 1))
        self.mix = cbr(24, 32, 1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b2(x), self.b3(x)], dim=1)
        x = self.mix(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, reduced)
        self.fc2 = nn.Linear(reduced, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s.view(s.shape[0], s.shape[1], 1, 1)


class SENet(nn.Module):
    """An inverted residual: 1x1 expand, depthwise 3x3, SE gate, 1x1 project, residual add."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(1, 16)
        self.expand = cbr(16, 32, 1)
        self.dw = cbr(32, 32, 3, groups=32)
        self.se = SqueezeExcite(32, 8)
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32),
                                  nn.Hardswish())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.se(self.dw(self.expand(x))))
        x = self.head(x)
        return self.fc(x.mean((2, 3)))


class GroupedNet(nn.Module):
    """A ResNeXt-style block: 1x1 reduce, 3x3 conv in 4 groups, 1x1 expand, conv shortcut."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(1, 16)
        self.reduce = cbr(16, 16, 1)
        self.grouped = cbr(16, 16, 3, groups=4)
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.shortcut = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.expand(self.grouped(self.reduce(x))) + self.shortcut(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class DenseNet(nn.Module):
    """A dense block (each layer reads the concatenation of all before it) and a transition."""

    def __init__(self, num_classes: int = 10, growth: int = 6, depth: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        width = 8
        self.dense = nn.ModuleList()
        for _ in range(depth):
            self.dense.append(nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(),
                                            nn.Conv2d(width, growth, 3, padding=1, bias=False)))
            width += growth
        self.transition = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(),
                                        nn.Conv2d(width, 16, 1, bias=False), nn.AvgPool2d(2))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.dense:
            x = torch.cat([x, layer(x)], 1)
        x = self.transition(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Conv1dNet(nn.Module):
    """1-D convs over a sequence (the 64 pixels of a digit): BN1d, PReLU per channel, a
    residual block, a strided conv with a per-channel GroupNorm, global max pooling (the
    average of a per-channel normalisation would be its bias alone)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU())
        self.conv_a = nn.Sequential(nn.Conv1d(16, 16, 3, padding=1), nn.BatchNorm1d(16),
                                    nn.PReLU(16))
        self.conv_b = nn.Sequential(nn.Conv1d(16, 16, 3, padding=1), nn.BatchNorm1d(16))
        self.down = nn.Sequential(nn.Conv1d(16, 32, 3, stride=2, padding=1),
                                  nn.GroupNorm(32, 32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2)                       # (N, 1, 8, 8) digits -> (N, 1, 64)
        x = self.stem(x)
        x = torch.relu(x + self.conv_b(self.conv_a(x)))
        x = self.down(x)
        return self.fc(nn.functional.adaptive_max_pool1d(x, 1).flatten(1))


class SplitNet(nn.Module):
    """Channel split (half processed, half passed on), the halves concatenated in swapped
    order, a transposed conv up and a strided conv down."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(1, 16)
        self.branch = cbr(8, 8)
        self.up = nn.Sequential(nn.ConvTranspose2d(16, 16, 2, stride=2, bias=False),
                                nn.BatchNorm2d(16), nn.ReLU())
        self.down = cbr(16, 24, 3, stride=2)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([b, self.branch(a)], dim=1)
        x = self.down(self.up(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


ZOO = {"inception": InceptionNet, "se": SENet, "grouped": GroupedNet, "dense": DenseNet,
       "conv1d": Conv1dNet, "split": SplitNet, **MODERN}
INPUT_SHAPE = (1, 8, 8)


def randomise_bn(model: nn.Module, seed: int = 7) -> None:
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)


# Residual sums whose later member writes channels that only readers BEFORE the sum keep:
# net -> (the member's last conv, the readers after the sum). The union graph keeps them;
# dead-channel elimination (compression.surgery.dead_channels) removes them from that member alone.
LATE_MEMBERS = {"se": ("project.0", ["head.0"]), "conv1d": ("conv_b.0", ["down.0"]),
                "mobilenetv3": ("project.0", ["head.0"])}
# Nets whose thinned model computes channels nothing reads for other reasons, which only
# liveness over the trace finds: a channel shuffle after which a reader keeps a subset
# (shufflenet), several residual members and an in-place op on one (functional).
DEAD_AFTER_PLAN = {*LATE_MEMBERS, "shufflenet", "functional"}


def pruned(name: str, ratio: float = 0.5, seed: int = 1):
    """Zoo net ``name`` (eval, random BN statistics), its layers and a random keep of
    ``ratio`` of every prunable layer's inputs."""
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    randomise_bn(model)
    layers = analyse(model, INPUT_SHAPE)
    gen = torch.Generator().manual_seed(seed)
    keep = {}
    for layer in choose_layers(layers, True, False, []):
        count = max(1, int(layer.in_channels * ratio))       # whole groups, as selection keeps
        picked = torch.randperm(layer.in_channels, generator=gen)[:count]
        keep[layer.name] = whole_blocks(picked, layer.blocks, count)
    return model, layers, keep


class UserNet(nn.Module):
    """A user's own net (3x32x32 inputs; not registered, not in ``ZOO``): concatenation,
    depthwise conv, residual add, 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(8, 10, 1, bias=False), nn.BatchNorm2d(10), nn.ReLU())
        self.expand = nn.Conv2d(16, 24, 1)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False)
        self.bn = nn.BatchNorm2d(24)
        self.pw = nn.Conv2d(24, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.cat([self.left(x), self.right(x)], dim=1)
        y = y + self.pw(torch.relu(self.bn(self.dw(self.expand(y)))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class Scale(nn.Module):
    """A user's per-channel scale through an op no rule covers (``log1p`` of its weight): a
    layer type no built-in pruner knows, kept whole until one is registered."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.log1p().view(1, -1, 1, 1)


class ScaledNet(nn.Module):
    """conv -> Scale -> conv: the scale's channels follow the first conv's once a pruner
    for ``Scale`` is registered."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.a = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.scale = Scale(8)
        self.b = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.scale(self.a(x))).mean((2, 3))
