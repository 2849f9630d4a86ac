"""LeNet on CIFAR-10 (PocketFlow's lenet_at_cifar10)."""
from __future__ import annotations

from dataclasses import dataclass

from nets import resnet_at_cifar10
from nets.registry import net_spec
from utils.config import option


@dataclass
class Config(resnet_at_cifar10.CifarDataConfig):
    lrn_rate_init: float = option(0.01, "initial learning rate for a global batch of batch_size_norm")


class ModelHelper(resnet_at_cifar10.ModelHelper):
    """Same data and schedule as the CIFAR-10 ResNets, with the small LeNet."""

    Config = Config

    @property
    def model_name(self) -> str:
        return "lenet"

    def net_spec(self) -> dict:
        return net_spec("lenet", num_classes=10, in_channels=3, input_size=32)
