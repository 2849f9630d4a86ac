"""ResNet-20/32/44/56 on CIFAR-10 (PocketFlow's resnet_at_cifar10); ``--net``: any registered net."""
from __future__ import annotations

from dataclasses import dataclass

from datasets.cifar10 import Cifar10
from nets.abstract_model_helper import HelperConfig, ImageClassificationHelper
from nets.registry import list_nets, net_spec
from utils.config import check, option

RESNET_SIZES = (20, 32, 44, 56)


@dataclass
class CifarDataConfig(HelperConfig):
    """The data options of every CIFAR-10 helper."""

    data_dir_local: str = option("./data/cifar-10", "CIFAR-10 directory (binary or python version)")
    cifar_records_per_file: int = option(10000, "images expected in each CIFAR-10 batch file (the "
                                                "real set: 10000); 0 accepts any count")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.cifar_records_per_file >= 0, "cifar_records_per_file", "must be >= 0")


@dataclass
class Config(CifarDataConfig):
    resnet_size: int = option(20, "ResNet depth: 20, 32, 44 or 56")
    net: str = option("", "any registered net instead of the ResNet of --resnet_size (e.g. "
                          "preact_resnet20_cifar, vgg16_cifar; 3 input channels, 10 classes); "
                          "'' = the ResNet")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(not self.net or self.net in list_nets(), "net",
              f"unknown net {self.net!r}; valid nets: {', '.join(list_nets())}")
        check(self.resnet_size in RESNET_SIZES, "resnet_size",
              f"must be one of {', '.join(map(str, RESNET_SIZES))}, got {self.resnet_size}")


class ModelHelper(ImageClassificationHelper):
    """250 epochs, LR x0.1 at epochs 100/150/200, batch 128, weight decay 2e-4."""

    Config = Config
    nb_epochs = 250.0
    lr_decay_epochs = (100, 150, 200)
    lr_decay_rates = (1.0, 0.1, 0.01, 0.001)

    @property
    def model_name(self) -> str:
        return self.cfg.net or f"resnet_{self.cfg.resnet_size}"

    @property
    def dataset_name(self) -> str:
        return "cifar10"

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def input_shape(self) -> tuple:
        return (3, 32, 32)

    def net_spec(self) -> dict:
        return net_spec(self.cfg.net or f"resnet{self.cfg.resnet_size}", num_classes=10,
                        in_channels=3)

    def load_train(self, augment: bool):
        return Cifar10(self.cfg.data_dir_local, "train", augment=augment, seed=self.seed,
                       records_per_file=self.cfg.cifar_records_per_file or None)

    def load_eval(self):
        return Cifar10(self.cfg.data_dir_local, "test", augment=False, seed=self.seed,
                       records_per_file=self.cfg.cifar_records_per_file or None)
