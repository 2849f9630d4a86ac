"""Options of the weight-sparse learner (PocketFlow's ``ws_*`` names and defaults)."""
from __future__ import annotations

from dataclasses import dataclass

from learners.rl.config import DdpgConfig
from utils.config import check, check_ratio, option, split_names

PROTOCOLS = ("uniform", "heurist", "optimal", "global", "list")
SCHEDULES = ("agp", "oneshot")
REWARDS = ("single-obj", "multi-obj")


@dataclass
class WsConfig(DdpgConfig):
    ws_save_path: str = option("./models_ws/model.ckpt", "weight-sparse: training checkpoint")
    ws_save_path_eval: str = option("./models_ws_eval/model.ckpt",
                                    "weight-sparse: final model (dense with zeros; the COO/CSR "
                                    "files and report.json go beside it)")
    ws_prune_ratio: float = option(0.75, "fraction of conv/linear weights set to zero")
    ws_prune_ratio_prtl: str = option(
        "heurist", "per-layer ratios: uniform (p everywhere), heurist (p_i ~ log n_i, weighted "
        "mean p), optimal (DDPG search), global (one magnitude ranking over all layers), list "
        "(ws_prune_list_file, e.g. written by tools.sensitivity)",
        choices=PROTOCOLS)
    ws_prune_list_file: str = option("./ws_ratio.list", "list: fraction of weights PRUNED per "
                                     "layer ('<ratio>' lines in layer order or '<layer> <ratio>')")
    ws_schedule: str = option("agp", "agp: sparsity ramps up during fine-tuning (cubic); oneshot: "
                                     "final masks from the start, pruned weights frozen at zero",
                              choices=SCHEDULES)
    ws_skip_op_names: str = option("", "comma-separated substrings of layer names never pruned")
    ws_nb_rlouts: int = option(200, "optimal: roll-outs of the DDPG search")
    ws_nb_rlouts_min: int = option(50, "optimal: roll-outs that fill the replay buffer first")
    ws_reward_type: str = option("single-obj", "optimal: reward = accuracy (single-obj) or "
                                               "accuracy * log(1 + sparsity) (multi-obj)",
                                 choices=REWARDS)
    ws_lrn_rate_rg: float = option(3e-2, "optimal: Adam rate of the layer-wise regression")
    ws_nb_iters_rg: int = option(20, "optimal: layer-wise regression steps per layer")
    ws_lrn_rate_ft: float = option(3e-4, "optimal: Adam rate of a roll-out's fine-tune")
    ws_nb_iters_ft: int = option(400, "optimal: fine-tune steps per roll-out")
    ws_nb_iters_feval: int = option(25, "optimal: held-out batches of the fast evaluation")
    ws_prune_ratio_exp: float = option(3.0, "agp: exponent of the sparsity ramp")
    ws_iter_ratio_beg: float = option(0.1, "agp: ramp starts at this fraction of fine-tuning")
    ws_iter_ratio_end: float = option(0.5, "agp: ramp ends (final sparsity) at this fraction")
    ws_mask_update_step: int = option(0, "agp: steps between mask updates "
                                         "(0: 20 updates spread over the ramp)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ratio(self.ws_prune_ratio, "ws_prune_ratio")
        check(self.ws_prune_ratio_prtl in PROTOCOLS, "ws_prune_ratio_prtl",
              f"must be one of {', '.join(PROTOCOLS)}, got {self.ws_prune_ratio_prtl!r}")
        check(self.ws_schedule in SCHEDULES, "ws_schedule",
              f"must be one of {', '.join(SCHEDULES)}, got {self.ws_schedule!r}")
        check(self.ws_reward_type in REWARDS, "ws_reward_type",
              f"must be one of {', '.join(REWARDS)}, got {self.ws_reward_type!r}")
        check(self.ws_nb_rlouts > 0, "ws_nb_rlouts", f"must be positive, got {self.ws_nb_rlouts}")
        check(0 < self.ws_nb_rlouts_min <= self.ws_nb_rlouts, "ws_nb_rlouts_min",
              f"must be in [1, ws_nb_rlouts={self.ws_nb_rlouts}], got {self.ws_nb_rlouts_min}")
        check(0.0 <= self.ws_iter_ratio_beg <= self.ws_iter_ratio_end <= 1.0, "ws_iter_ratio_end",
              "need 0 <= ws_iter_ratio_beg <= ws_iter_ratio_end <= 1, got "
              f"{self.ws_iter_ratio_beg} and {self.ws_iter_ratio_end}")
        check(self.ws_prune_ratio_exp > 0, "ws_prune_ratio_exp", "must be positive")
        check(self.ws_mask_update_step >= 0, "ws_mask_update_step", "must be >= 0")
        for name in ("ws_nb_iters_rg", "ws_nb_iters_ft"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        check(self.ws_nb_iters_feval > 0, "ws_nb_iters_feval", "must be positive")

    @property
    def skip_names(self) -> list[str]:
        return split_names(self.ws_skip_op_names)
