"""Options of the ``channel`` learner (PocketFlow's ``cp_*`` flags; defaults noted where they
differ)."""
from __future__ import annotations

from dataclasses import dataclass

from learners.options import ChannelOptions
from learners.channel_strategy import StrategySettings
from learners.rl.config import DdpgConfig
from learners.strategy_options import SearchStrategy
from utils.config import check, nested, option


@dataclass
class ChannelConfig(ChannelOptions):
    uniform_preserve_ratio: float = option(
        0.0, "uniform: fraction of channels kept per layer; 0 matches preserve_ratio's FLOPs "
        "(PocketFlow: 0.6, a channel fraction that ignores the budget)")
    lasso: bool = option(True, "LASSO (ISTA, exact count) selection; false: L1 magnitude")
    quadruple: bool = option(False, "kept counts are multiples of 4")
    nb_points_per_layer: int = option(10, "output positions sampled per image and layer")
    nb_batches: int = option(30, "training batches sampled for the final selection")
    list_group: int = option(1000, "layers pruned per group; between groups the masked model is "
                                   "fine-tuned with Adam")
    lrn_rate_ft: float = option(1e-4, "Adam rate of the between-group fine-tune")
    nb_iters_ft_ratio: float = option(0.2, "between-group fine-tune length, as a fraction of the "
                                           "training iterations")
    skip_frst_layer: bool = option(True, "do not prune the layer that reads the image")
    skip_last_layer: bool = option(True, "do not prune the last layer (the classifier)")
    strategy: SearchStrategy = nested(SearchStrategy)
    ddpg: DdpgConfig = nested(DdpgConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.uniform_preserve_ratio <= 1, "uniform_preserve_ratio",
              f"must be in [0, 1], got {self.uniform_preserve_ratio}")
        for name in ("nb_points_per_layer", "nb_batches", "list_group"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")

    def strategy_settings(self) -> StrategySettings:
        return self.strategy.settings(uniform_ratio=self.uniform_preserve_ratio,
                                      multiple=4 if self.quadruple else 1)
