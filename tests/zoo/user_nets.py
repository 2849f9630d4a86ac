"""A user's own net and ModelHelper, defined only here (not in nets/): the tools and learners
must work with them given ``--helper=tests.zoo.user_nets:UserHelper``."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from datasets.digits import load_digits_splits
from nets.abstract_model_helper import HelperConfig, ImageClassificationHelper
from nets.registry import net_spec, register_net
from utils.config import option


class DepthwiseSeparableNet(nn.Module):
    """Stem, a depthwise-separable residual block, a pointwise expansion, pooling, classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                                nn.BatchNorm2d(width), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.expand = nn.Sequential(nn.Conv2d(width, 2 * width, 1, bias=False),
                                    nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.pw(self.dw(x)))
        return self.fc(torch.flatten(self.pool(self.expand(x)), 1))


@register_net("user_dsnet")
def user_dsnet(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> nn.Module:
    return DepthwiseSeparableNet(num_classes, in_channels, width)


@dataclass
class UserConfig(HelperConfig):
    batch_size: int = option(64, "training mini-batch size per process")
    nb_epochs_rat: float = option(0.1, "multiplier on the helper's number of training epochs")
    lrn_rate_init: float = option(0.05, "initial learning rate")


class UserHelper(ImageClassificationHelper):
    """The user's net on the digits at 8x8."""

    Config = UserConfig
    nb_epochs = 30.0

    @property
    def model_name(self) -> str:
        return "user_dsnet"

    @property
    def dataset_name(self) -> str:
        return "digits"

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def input_shape(self) -> tuple:
        return (1, 8, 8)

    def net_spec(self) -> dict:
        return net_spec("user_dsnet", num_classes=10, in_channels=1)

    def splits(self) -> dict:
        if getattr(self, "_splits", None) is None:
            self._splits = load_digits_splits(seed=0, image_size=8)
        return self._splits

    def load_train(self, augment: bool):
        return self.splits()["train"]

    def load_eval(self):
        return self.splits()["test"]
