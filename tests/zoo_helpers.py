"""The zoo nets (tests/zoo_nets.py) registered as ``zoo_<name>`` with one ModelHelper each
(``--helper=tests.zoo_helpers:InceptionHelper``...), on the digits at 8x8. Imported only by
the tests that need them, which restore the net registry afterwards."""
from __future__ import annotations

from dataclasses import dataclass

from datasets.digits import load_digits_splits
from nets.abstract_model_helper import HelperConfig, ImageClassificationHelper
from nets.registry import net_spec, register_net
from tests.zoo_nets import INPUT_SHAPE, ZOO
from utils.config import option


@dataclass
class ZooConfig(HelperConfig):
    batch_size: int = option(64, "training mini-batch size per process")
    nb_epochs_rat: float = option(0.1, "multiplier on the helper's number of training epochs")
    lrn_rate_init: float = option(0.05, "initial learning rate")


class ZooHelper(ImageClassificationHelper):
    """One zoo net (``net``) on the digits at 8x8."""

    Config = ZooConfig
    nb_epochs = 30.0
    net = ""

    @property
    def model_name(self) -> str:
        return f"zoo_{self.net}"

    @property
    def dataset_name(self) -> str:
        return "digits"

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def input_shape(self) -> tuple:
        return INPUT_SHAPE

    def net_spec(self) -> dict:
        return net_spec(self.model_name, num_classes=10)

    def splits(self) -> dict:
        if getattr(self, "_splits", None) is None:
            self._splits = load_digits_splits(seed=0, image_size=8)
        return self._splits

    def load_train(self, augment: bool):
        return self.splits()["train"]

    def load_eval(self):
        return self.splits()["test"]


HELPERS = {}
for _name, _cls in ZOO.items():
    register_net(f"zoo_{_name}")(_cls)
    HELPERS[_name] = type(f"{_name.capitalize()}Helper", (ZooHelper,), {"net": _name})
    globals()[HELPERS[_name].__name__] = HELPERS[_name]
