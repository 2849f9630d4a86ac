"""Options of the ``channel`` learner (PocketFlow's ``cp_*`` names; defaults noted where they
differ)."""
from __future__ import annotations

from dataclasses import dataclass

from learners.channel_strategy import StrategySettings
from learners.rl.config import DdpgConfig
from learners.strategy_options import strategy_options
from utils.config import check, option, split_names

CpStrategyOptions = strategy_options("cp", "prune_option", "auto", "auto", 0.5)


@dataclass
class ChannelConfig(DdpgConfig, CpStrategyOptions):
    cp_save_path: str = option("./models_cp/model.ckpt", "channel: training checkpoint")
    cp_save_path_eval: str = option("./models_cp_eval/model.ckpt",
                                    "channel: final thinned model (report.json beside it)")
    cp_save_path_ws: str = option("./models_cp_ws/model.ckpt",
                                  "channel: thinned model right after selection")
    cp_uniform_preserve_ratio: float = option(
        0.0, "uniform: fraction of channels kept per layer; 0 matches cp_preserve_ratio's "
        "FLOPs (PocketFlow: 0.6, a channel fraction that ignores the budget)")
    cp_lasso: bool = option(True, "LASSO (ISTA, exact count) selection; false: L1 magnitude")
    cp_quadruple: bool = option(False, "kept counts are multiples of 4")
    cp_nb_points_per_layer: int = option(10, "output positions sampled per image and layer")
    cp_nb_batches: int = option(30, "training batches sampled for the final selection")
    cp_list_group: int = option(1000, "layers pruned per group; between groups the masked "
                                "model is fine-tuned with Adam")
    cp_lrn_rate_ft: float = option(1e-4, "Adam rate of the between-group fine-tune")
    cp_nb_iters_ft_ratio: float = option(0.2, "between-group fine-tune length, as a fraction "
                                         "of the training iterations")
    cp_skip_frst_layer: bool = option(True, "do not prune the layer that reads the image")
    cp_skip_last_layer: bool = option(True, "do not prune the last layer (the classifier)")
    cp_skip_op_names: str = option("", "comma-separated substrings of layer names not to prune")
    cp_warm_start: bool = option(False, "skip selection: start from cp_save_path_ws",
                                 run_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_strategy()
        check(0 <= self.cp_uniform_preserve_ratio <= 1, "cp_uniform_preserve_ratio",
              f"must be in [0, 1], got {self.cp_uniform_preserve_ratio}")
        for name in ("cp_nb_points_per_layer", "cp_nb_batches", "cp_list_group"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")

    @property
    def skip_names(self) -> list[str]:
        return split_names(self.cp_skip_op_names)

    def strategy(self) -> StrategySettings:
        return self.strategy_settings(uniform_ratio=self.cp_uniform_preserve_ratio,
                                      multiple=4 if self.cp_quadruple else 1)
