"""ResNet on scikit-learn's embedded digits: the default, download-free (net, dataset) pair."""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from datasets.digits import load_digits_splits
from nets.abstract_model_helper import HelperConfig, ImageClassificationHelper
from nets.registry import list_nets, net_builder, net_spec
from utils.config import check, option
from utils.lrn_rate import CosineLr, scaled_lr

RESNET_SIZES = (20, 32, 44, 56)


@dataclass
class Config(HelperConfig):
    resnet_size: int = option(20, "ResNet depth: 20, 32, 44 or 56")
    net: str = option("", "any registered net instead of the ResNet of --resnet_size (e.g. "
                          "preact_resnet20_cifar, vgg16_cifar; 1 input channel, 10 classes, "
                          "--image_size as its input_size where it takes one); '' = the ResNet")
    image_size: int = option(16, "the 8x8 digits are upsampled once to this size")
    batch_size: int = option(64, "training mini-batch size per process")
    batch_size_eval: int = option(500, "evaluation mini-batch size")
    loss_w_dcy: float = option(5e-4, "weight decay (L2) coefficient")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.resnet_size in RESNET_SIZES, "resnet_size",
              f"must be one of {', '.join(map(str, RESNET_SIZES))}, got {self.resnet_size}")
        check(not self.net or self.net in list_nets(), "net",
              f"unknown net {self.net!r}; valid nets: {', '.join(list_nets())}")
        check(self.image_size >= 8, "image_size", f"must be >= 8, got {self.image_size}")


class ModelHelper(ImageClassificationHelper):
    """1,438 training (144 of them held out as "val") and 359 test images, 1 channel."""

    Config = Config
    nb_epochs = 30.0

    @property
    def model_name(self) -> str:
        return self.cfg.net or f"resnet_{self.cfg.resnet_size}"

    @property
    def dataset_name(self) -> str:
        return "digits"

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def input_shape(self) -> tuple:
        return (1, self.cfg.image_size, self.cfg.image_size)

    def net_spec(self) -> dict:
        if not self.cfg.net:
            return net_spec(f"resnet{self.cfg.resnet_size}", num_classes=10, in_channels=1)
        takes = inspect.signature(net_builder(self.cfg.net)).parameters
        sized = {"input_size": self.cfg.image_size} if "input_size" in takes else {}
        return net_spec(self.cfg.net, num_classes=10, in_channels=1, **sized)

    def splits(self) -> dict:
        if getattr(self, "_splits", None) is None:
            # the split is fixed (seed 0); the run seed only drives augmentation
            self._splits = load_digits_splits(seed=0, image_size=self.cfg.image_size)
            for dataset in self._splits.values():
                dataset.seed = self.seed
        return self._splits

    def load_train(self, augment: bool):
        return self.splits()["train"]

    def load_eval(self):
        return self.splits()["test"]

    def lr_schedule(self, nb_workers: int = 1):
        """Cosine decay with one epoch of warm-up (short schedules train better with it)."""
        global_batch = self.global_batch(nb_workers)
        nb_iters = self.nb_iters_train(nb_workers)
        warmup = min(nb_iters // 10, self.nb_smpls_train // global_batch)
        return CosineLr(scaled_lr(self.cfg.lrn_rate_init, global_batch, self.cfg.batch_size_norm),
                        nb_iters, warmup_iters=warmup)
