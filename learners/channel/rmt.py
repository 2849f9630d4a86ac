"""chn-pruned-rmt: LASSO (ISTA) channel selection + least squares, then physical thinning.

PocketFlow's "remastered" channel pruning (flags keep its ``cpr_*`` names). Unlike PocketFlow,
the pruned channels are removed: the saved model is really smaller and faster.
"""
from __future__ import annotations

import logging

from compression.selection.criteria import select_channels
from learners.channel.base import ChannelLearnerBase
from learners.registry import register_learner
from learners.channel.base import log_layer
from learners.channel.config import CprConfig

log = logging.getLogger("pocketflow")


@register_learner("chn-pruned-rmt", config=CprConfig, prefix="cpr")
class ChannelPrunedRmtLearner(ChannelLearnerBase):

    @property
    def calibration_samples(self) -> int:
        return self.cfg.nb_smpls

    def select(self, full, pruned, chosen, counts, batches):
        return select_channels(full, pruned, chosen, counts, batches, self.cfg, self.ctx.seed,
                               on_layer=log_layer)

    def select_final(self, full, pruned, chosen, counts, batches, trained=()):
        """The selection, saved after every layer and resumed with ``--resume``; with
        ``--cpr_refit_output=false`` the classifier keeps its trained weights (roll-outs, which
        score the model before fine-tuning, refit it)."""
        return select_channels(full, pruned, chosen, counts, batches, self.cfg, self.ctx.seed,
                               on_layer=log_layer, progress=self.selection_progress(),
                               trained=trained)

    # coupled residual pruning: LASSO over all readers of a group (L1 where the selection is)
    @property
    def residual_criterion(self) -> str:
        return "lasso" if self.cfg.selection == "ista" else "l1"
