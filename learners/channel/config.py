"""Options of the ``channel`` learner (PocketFlow's ``cp_*`` names; defaults noted where they
differ)."""
from __future__ import annotations

from dataclasses import dataclass

from learners.channel_strategy import PROTOCOLS, StrategySettings
from learners.rl.channel_env import REWARD_POLICIES
from learners.rl.config import DdpgConfig
from utils.config import check, option, split_names


@dataclass
class ChannelConfig(DdpgConfig):
    cp_save_path: str = option("./models_cp/model.ckpt", "channel: training checkpoint")
    cp_save_path_eval: str = option("./models_cp_eval/model.ckpt",
                                    "channel: final thinned model (report.json beside it)")
    cp_save_path_ws: str = option("./models_cp_ws/model.ckpt",
                                  "channel: thinned model right after selection")
    cp_prune_option: str = option(
        "auto", "per-layer kept channels: auto (DDPG search under the FLOPs budget), uniform "
        "(same fraction everywhere, matched to the budget), list (cp_prune_list_file)",
        choices=PROTOCOLS)
    cp_prune_list_file: str = option("./ratio.list", "list: fraction of input channels KEPT per "
                                     "layer, one per line ('<ratio>' or '<layer> <ratio>')")
    cp_preserve_ratio: float = option(0.5, "fraction of the FLOPs kept (auto, uniform)")
    cp_uniform_preserve_ratio: float = option(
        0.0, "uniform: fraction of channels kept per layer; 0 matches cp_preserve_ratio's "
        "FLOPs (PocketFlow: 0.6, a channel fraction that ignores the budget)")
    cp_min_preserve_ratio: float = option(
        0.0, "lowest fraction of channels a layer keeps (auto, uniform); 0: AMC's "
        "1.5 * log10(cp_preserve_ratio + 1)")
    cp_noise_tolerance: float = option(0.15, "auto, flops reward: error floor of the reward")
    cp_reward_policy: str = option("accuracy", "auto: reward = held-out accuracy, or AMC's "
                                   "-max(tol, error) * log(FLOPs)", choices=REWARD_POLICIES)
    cp_nb_rlouts: int = option(200, "auto: roll-outs of the DDPG search")
    cp_nb_rlouts_min: int = option(50, "auto: roll-outs that fill the replay buffer first")
    cp_rl_nb_batches: int = option(4, "auto: calibration batches of a roll-out's selection")
    cp_rl_ft_steps: int = option(0, "auto: Adam steps on a roll-out's thinned model")
    cp_rl_lrn_rate: float = option(1e-3, "auto: Adam rate of a roll-out's fine-tune")
    cp_nb_iters_feval: int = option(10, "auto: held-out batches of a roll-out's evaluation")
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
    cp_warm_start: bool = option(False, "skip selection: start from cp_save_path_ws")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.cp_preserve_ratio <= 1, "cp_preserve_ratio",
              f"must be in (0, 1], got {self.cp_preserve_ratio}")
        check(0 <= self.cp_uniform_preserve_ratio <= 1, "cp_uniform_preserve_ratio",
              f"must be in [0, 1], got {self.cp_uniform_preserve_ratio}")
        check(0 <= self.cp_min_preserve_ratio <= 1, "cp_min_preserve_ratio",
              f"must be in [0, 1], got {self.cp_min_preserve_ratio}")
        for name in ("cp_nb_rlouts", "cp_nb_rlouts_min", "cp_rl_nb_batches",
                     "cp_nb_iters_feval", "cp_nb_points_per_layer", "cp_nb_batches",
                     "cp_list_group"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        check(self.cp_rl_ft_steps >= 0, "cp_rl_ft_steps", "must be >= 0")
        check(self.cp_nb_rlouts_min <= self.cp_nb_rlouts, "cp_nb_rlouts_min",
              f"must be <= cp_nb_rlouts ({self.cp_nb_rlouts})")

    @property
    def skip_names(self) -> list[str]:
        return split_names(self.cp_skip_op_names)

    def strategy(self) -> StrategySettings:
        return StrategySettings(
            protocol=self.cp_prune_option, preserve_ratio=self.cp_preserve_ratio,
            list_file=self.cp_prune_list_file, uniform_ratio=self.cp_uniform_preserve_ratio,
            multiple=4 if self.cp_quadruple else 1,
            min_ratio=self.cp_min_preserve_ratio or None, reward_policy=self.cp_reward_policy,
            noise_tolerance=self.cp_noise_tolerance, nb_rlouts=self.cp_nb_rlouts,
            nb_rlouts_min=self.cp_nb_rlouts_min, rl_nb_batches=self.cp_rl_nb_batches,
            rl_ft_steps=self.cp_rl_ft_steps, rl_lrn_rate=self.cp_rl_lrn_rate,
            nb_iters_feval=self.cp_nb_iters_feval)
