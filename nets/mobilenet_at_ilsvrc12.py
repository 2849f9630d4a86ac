"""MobileNet v1/v2 on ILSVRC-12 (PocketFlow's mobilenet_at_ilsvrc12)."""
from __future__ import annotations

from dataclasses import dataclass

from nets.abstract_model_helper import HelperConfig
from nets.registry import net_spec
from nets.resnet_at_ilsvrc12 import DATA_HELP, ImagenetHelper
from utils.config import check, option
from utils.lrn_rate import CosineLr, scaled_lr


@dataclass
class Config(HelperConfig):
    mobilenet_version: int = option(1, "MobileNet version: 1 or 2")
    mobilenet_depth_mult: float = option(1.0, "width (depth) multiplier")
    data_dir_local: str = option("./data/ilsvrc12", DATA_HELP)
    batch_size: int = option(96, "training mini-batch size per process")
    batch_size_norm: int = option(96, "global batch size that lrn_rate_init refers to")
    lrn_rate_init: float = option(0.045, "initial learning rate for a global batch of batch_size_norm")
    loss_w_dcy: float = option(4e-5, "weight decay (L2) coefficient")
    image_size: int = option(224, "training/evaluation crop size")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.mobilenet_version in (1, 2), "mobilenet_version",
              f"must be 1 or 2, got {self.mobilenet_version}")
        check(self.mobilenet_depth_mult > 0, "mobilenet_depth_mult", "must be positive")


class ModelHelper(ImagenetHelper):
    """Cosine schedule over 120 epochs (PocketFlow used exponential decay; cosine is the
    common PyTorch recipe for MobileNets)."""

    Config = Config
    nb_epochs = 120.0

    @property
    def model_name(self) -> str:
        return f"mobilenet_v{self.cfg.mobilenet_version}"

    def net_spec(self) -> dict:
        return net_spec(f"mobilenet_v{self.cfg.mobilenet_version}", num_classes=1000,
                        in_channels=3, depth_mult=self.cfg.mobilenet_depth_mult)

    def lr_schedule(self, nb_workers: int = 1):
        global_batch = self.global_batch(nb_workers)
        return CosineLr(scaled_lr(self.cfg.lrn_rate_init, global_batch, self.cfg.batch_size_norm),
                        self.nb_iters_train(nb_workers))
