"""chn-pruned-rmt: LASSO (ISTA) channel selection + least squares, then physical thinning.

PocketFlow's "remastered" channel pruning (flags keep its ``cpr_*`` names). Unlike PocketFlow,
the pruned channels are removed: the saved model is really smaller and faster.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from compression.channel_selection import (SELECTIONS, SelectionSettings, select_channels)
from learners.channel_base import ChannelLearnerBase
from learners.registry import register_learner
from learners.rl.config import DdpgConfig
from learners.strategy_options import prune_ratio_options
from utils.config import check, check_ratio, option, split_names

log = logging.getLogger("pocketflow")


CprStrategyOptions = prune_ratio_options("cpr")


@dataclass
class CprConfig(DdpgConfig, CprStrategyOptions):
    cpr_save_path: str = option("./models_cpr/model.ckpt", "chn-pruned-rmt: training checkpoint")
    cpr_save_path_eval: str = option("./models_cpr_eval/model.ckpt",
                                     "chn-pruned-rmt: final thinned model (report.json beside it)")
    cpr_save_path_ws: str = option("./models_cpr_ws/model.ckpt",
                                   "chn-pruned-rmt: thinned model right after selection")
    cpr_prune_ratio: float = option(0.5, "fraction of each layer's input channels removed")
    cpr_skip_frst_layer: bool = option(True, "do not prune the layer that reads the input image")
    cpr_skip_last_layer: bool = option(False, "do not prune the last layer (the classifier)")
    cpr_skip_op_names: str = option("", "comma-separated substrings of layer names not to prune")
    cpr_nb_smpls: int = option(5000, "training samples used for channel selection")
    cpr_nb_crops_per_smpl: int = option(10, "random output positions sampled per sample")
    cpr_ista_lrn_rate: float = option(1.0, "ISTA step on the Frobenius-normalised Gram matrix "
                                           "(<= 1 is stable; PocketFlow's 1e-2 barely moves in 100 its)")
    cpr_ista_nb_iters: int = option(100, "ISTA iterations per penalty")
    cpr_lstsq_solver: str = option("closed", "refit of kept channels: closed-form ridge or Adam",
                                   choices=["closed", "adam"])
    cpr_lstsq_lrn_rate: float = option(1e-3, "Adam learning rate of the refit (solver adam)")
    cpr_lstsq_nb_iters: int = option(100, "Adam iterations of the refit (solver adam)")
    cpr_warm_start: bool = option(False, "skip selection: start from cpr_save_path_ws",
                                  run_only=True)
    cpr_selection: str = option("ista", "channel selection criterion", choices=list(SELECTIONS))
    cpr_channel_multiple: int = option(0, "round each kept-channel count to a multiple of this; "
                                          "0: 8 under a latency budget (CPU kernels run fastest "
                                          "on multiples of 8), else 1 (PocketFlow's exact count)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_strategy()
        check_ratio(self.cpr_prune_ratio, "cpr_prune_ratio")
        check(self.cpr_nb_smpls > 0, "cpr_nb_smpls", "must be positive")
        check(self.cpr_channel_multiple >= 0, "cpr_channel_multiple", "must be >= 0")
        check(self.cpr_nb_crops_per_smpl > 0, "cpr_nb_crops_per_smpl", "must be positive")
        check(self.cpr_ista_nb_iters > 0, "cpr_ista_nb_iters", "must be positive")
        check(0 < self.cpr_ista_lrn_rate < 2, "cpr_ista_lrn_rate",
              f"must be in (0, 2) for ISTA to converge, got {self.cpr_ista_lrn_rate}")

    @property
    def skip_names(self) -> list[str]:
        return split_names(self.cpr_skip_op_names)

    def selection_settings(self, seed: int) -> SelectionSettings:
        return SelectionSettings(self.cpr_selection, self.cpr_nb_crops_per_smpl,
                                 self.cpr_ista_lrn_rate, self.cpr_ista_nb_iters,
                                 self.cpr_lstsq_solver, self.cpr_lstsq_lrn_rate,
                                 self.cpr_lstsq_nb_iters, seed)


@register_learner("chn-pruned-rmt", config=CprConfig)
class ChannelPrunedRmtLearner(ChannelLearnerBase):

    flag_prefix = "cpr"

    @property
    def calibration_samples(self) -> int:
        return self.own_cfg.cpr_nb_smpls

    def select(self, full, pruned, chosen, counts, batches):
        return select_channels(full, pruned, chosen, counts, batches,
                               self.own_cfg.selection_settings(self.cfg.seed), on_layer=log_layer)


def log_layer(record: dict) -> None:
    """One log line per selected layer."""
    log.info("select %-22s %-6s keep %3d/%-3d rel.err %.4f (unpruned %.4f) %.2f s",
             record["layer"], record["mode"], record["kept"], record["in_channels"],
             record["rel_error"], record["rel_error_unpruned"], record["seconds"])
