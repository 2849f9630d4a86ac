"""chn-pruned-rmt: LASSO (ISTA) channel selection + least squares, then physical thinning.

PocketFlow's "remastered" channel pruning (flags keep its ``cpr_*`` names). Unlike PocketFlow,
the pruned channels are removed: the saved model is really smaller and faster.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from compression.channel_selection import SELECTIONS, SelectionSettings, select_channels
from learners.channel_base import ChannelLearnerBase
from learners.options import RatioChannelOptions
from learners.registry import register_learner
from utils.config import check, option

log = logging.getLogger("pocketflow")


@dataclass
class CprConfig(RatioChannelOptions):
    nb_smpls: int = option(5000, "training samples used for channel selection")
    nb_crops_per_smpl: int = option(10, "random output positions sampled per sample")
    ista_lrn_rate: float = option(1.0, "ISTA step on the Frobenius-normalised Gram matrix "
                                       "(<= 1 is stable; PocketFlow's 1e-2 barely moves in 100 its)")
    ista_nb_iters: int = option(100, "ISTA iterations per penalty")
    lstsq_solver: str = option("closed", "refit of kept channels: closed-form ridge or Adam",
                               choices=["closed", "adam"])
    lstsq_lrn_rate: float = option(1e-3, "Adam learning rate of the refit (solver adam)")
    lstsq_nb_iters: int = option(100, "Adam iterations of the refit (solver adam)")
    selection: str = option("ista", "channel selection criterion", choices=list(SELECTIONS))

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.nb_smpls > 0, "nb_smpls", "must be positive")
        check(self.nb_crops_per_smpl > 0, "nb_crops_per_smpl", "must be positive")
        check(self.ista_nb_iters > 0, "ista_nb_iters", "must be positive")
        check(0 < self.ista_lrn_rate < 2, "ista_lrn_rate",
              f"must be in (0, 2) for ISTA to converge, got {self.ista_lrn_rate}")

    def selection_settings(self, seed: int) -> SelectionSettings:
        return SelectionSettings(self.selection, self.nb_crops_per_smpl, self.ista_lrn_rate,
                                 self.ista_nb_iters, self.lstsq_solver, self.lstsq_lrn_rate,
                                 self.lstsq_nb_iters, seed)


@register_learner("chn-pruned-rmt", config=CprConfig, prefix="cpr")
class ChannelPrunedRmtLearner(ChannelLearnerBase):

    @property
    def calibration_samples(self) -> int:
        return self.cfg.nb_smpls

    def select(self, full, pruned, chosen, counts, batches):
        return select_channels(full, pruned, chosen, counts, batches,
                               self.cfg.selection_settings(self.ctx.seed), on_layer=log_layer)

    # coupled residual pruning: LASSO over all readers of a group (L1 where the selection is)
    @property
    def residual_criterion(self) -> str:
        return "lasso" if self.cfg.selection == "ista" else "l1"

    def selection_settings(self):
        return self.cfg.selection_settings(self.ctx.seed)


def log_layer(record: dict) -> None:
    """One log line per selected layer."""
    log.info("select %-22s %-6s keep %3d/%-3d rel.err %.4f (unpruned %.4f) %.2f s",
             record["layer"], record["mode"], record["kept"], record["in_channels"],
             record["rel_error"], record["rel_error_unpruned"], record["seconds"])
