"""ResNet-18/34/50 on ILSVRC-12 (ImageNet): image folders or PocketFlow's TFRecord files."""
from __future__ import annotations

from dataclasses import dataclass

from datasets.ilsvrc12 import open_ilsvrc12
from nets.abstract_model_helper import HelperConfig, ImageClassificationHelper
from nets.registry import net_spec
from utils.config import check, option

RESNET_SIZES = (18, 34, 50)
DATA_HELP = ("ILSVRC-12 directory: image folders train/<class>/*.JPEG and val/<class>/..., or "
             "PocketFlow's TFRecord files train-*-of-01024 and validation-*-of-00128")


@dataclass
class Config(HelperConfig):
    resnet_size: int = option(18, "ResNet depth: 18, 34 or 50")
    data_dir_local: str = option("./data/ilsvrc12", DATA_HELP)
    batch_size: int = option(256, "training mini-batch size per process")
    batch_size_norm: int = option(256, "global batch size that lrn_rate_init refers to")
    loss_w_dcy: float = option(1e-4, "weight decay (L2) coefficient")
    image_size: int = option(224, "training/evaluation crop size")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.resnet_size in RESNET_SIZES, "resnet_size",
              f"must be one of {', '.join(map(str, RESNET_SIZES))}, got {self.resnet_size}")


class ImagenetHelper(ImageClassificationHelper):
    """Shared by the ILSVRC-12 helpers: image folders or TFRecord files (`open_ilsvrc12`),
    1000 classes, 50,000 held out."""

    nb_smpls_val = 50000

    @property
    def dataset_name(self) -> str:
        return "ilsvrc12"

    @property
    def num_classes(self) -> int:
        return 1000

    @property
    def input_shape(self) -> tuple:
        return (3, self.cfg.image_size, self.cfg.image_size)

    def load_train(self, augment: bool):
        return open_ilsvrc12(self.cfg.data_dir_local, "train", self.cfg.image_size, augment,
                             self.seed)

    def load_eval(self):
        return open_ilsvrc12(self.cfg.data_dir_local, "val", self.cfg.image_size, False, self.seed)


class ModelHelper(ImagenetHelper):
    """100 epochs, LR x0.1 at epochs 30/60/80/90, batch 256, weight decay 1e-4."""

    Config = Config
    nb_epochs = 100.0
    lr_decay_epochs = (30, 60, 80, 90)
    lr_decay_rates = (1.0, 0.1, 0.01, 0.001, 0.0001)

    @property
    def model_name(self) -> str:
        return f"resnet_{self.cfg.resnet_size}"

    def net_spec(self) -> dict:
        return net_spec(f"resnet{self.cfg.resnet_size}", num_classes=1000, in_channels=3)
