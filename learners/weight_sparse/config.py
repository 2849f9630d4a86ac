"""Options of the weight-sparse learner (PocketFlow's ``ws_*`` flags and defaults)."""
from __future__ import annotations

from dataclasses import dataclass

from learners.search.config import DdpgConfig
from learners.config import OutputOptions
from utils.config import check, check_ratio, nested, option, split_names

PROTOCOLS = ("uniform", "heurist", "optimal", "global", "list")
SCHEDULES = ("agp", "oneshot")
REWARDS = ("single-obj", "multi-obj")


@dataclass
class WsConfig(OutputOptions):
    prune_ratio: float = option(0.75, "fraction of conv/linear weights set to zero")
    prune_ratio_prtl: str = option(
        "heurist", "per-layer ratios: uniform (p everywhere), heurist (p_i ~ log n_i, weighted "
        "mean p), optimal (DDPG search), global (one magnitude ranking over all layers), list "
        "(prune_list_file, e.g. written by tools.sensitivity)",
        choices=PROTOCOLS)
    prune_list_file: str = option("./ws_ratio.list", "list: fraction of weights PRUNED per "
                                  "layer ('<ratio>' lines in layer order or '<layer> <ratio>')")
    schedule: str = option("agp", "agp: sparsity ramps up during fine-tuning (cubic); oneshot: "
                                  "final masks from the start, pruned weights frozen at zero",
                           choices=SCHEDULES)
    skip_op_names: str = option("", "comma-separated substrings of layer names never pruned")
    nb_rlouts: int = option(200, "optimal: roll-outs of the DDPG search")
    nb_rlouts_min: int = option(50, "optimal: roll-outs that fill the replay buffer first")
    reward_type: str = option("single-obj", "optimal: reward = accuracy (single-obj) or "
                                            "accuracy * log(1 + sparsity) (multi-obj)",
                              choices=REWARDS)
    lrn_rate_rg: float = option(3e-2, "optimal: Adam rate of the layer-wise regression")
    nb_iters_rg: int = option(20, "optimal: layer-wise regression steps per layer")
    lrn_rate_ft: float = option(3e-4, "optimal: Adam rate of a roll-out's fine-tune")
    nb_iters_ft: int = option(400, "optimal: fine-tune steps per roll-out")
    nb_iters_feval: int = option(25, "optimal: held-out batches of the fast evaluation")
    prune_ratio_exp: float = option(3.0, "agp: exponent of the sparsity ramp")
    iter_ratio_beg: float = option(0.1, "agp: ramp starts at this fraction of fine-tuning")
    iter_ratio_end: float = option(0.5, "agp: ramp ends (final sparsity) at this fraction")
    mask_update_step: int = option(0, "agp: steps between mask updates "
                                      "(0: 20 updates spread over the ramp)")

    ddpg: DdpgConfig = nested(DdpgConfig)

    def __post_init__(self) -> None:
        check_ratio(self.prune_ratio, "prune_ratio")
        check(self.prune_ratio_prtl in PROTOCOLS, "prune_ratio_prtl",
              f"must be one of {', '.join(PROTOCOLS)}, got {self.prune_ratio_prtl!r}")
        check(self.schedule in SCHEDULES, "schedule",
              f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        check(self.reward_type in REWARDS, "reward_type",
              f"must be one of {', '.join(REWARDS)}, got {self.reward_type!r}")
        check(self.nb_rlouts > 0, "nb_rlouts", f"must be positive, got {self.nb_rlouts}")
        check(0 < self.nb_rlouts_min <= self.nb_rlouts, "nb_rlouts_min",
              f"must be in [1, --nb_rlouts={self.nb_rlouts}], got {self.nb_rlouts_min}")
        check(0.0 <= self.iter_ratio_beg <= self.iter_ratio_end <= 1.0, "iter_ratio_end",
              "need 0 <= --iter_ratio_beg <= --iter_ratio_end <= 1, got "
              f"{self.iter_ratio_beg} and {self.iter_ratio_end}")
        check(self.prune_ratio_exp > 0, "prune_ratio_exp", "must be positive")
        check(self.mask_update_step >= 0, "mask_update_step", "must be >= 0")
        for name in ("nb_iters_rg", "nb_iters_ft"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        check(self.nb_iters_feval > 0, "nb_iters_feval", "must be positive")

    @property
    def skip_names(self) -> list[str]:
        return split_names(self.skip_op_names)
