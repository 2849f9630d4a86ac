"""channel: He et al. (2017) channel pruning with AMC-style DDPG ratios, physically thinned.

Per layer, regression rows are sampled at ``cp_nb_points_per_layer`` output positions per
image over ``cp_nb_batches`` training batches; the kept input channels are chosen by LASSO
(ISTA with an exact-count search: it always lands on the target count, well inside PocketFlow's
+-2 %) or by L1 magnitude (``cp_lasso=false``); the kept weights are refitted by least squares.
How many channels each layer keeps comes from ``cp_prune_option`` (``compression.budget.strategy``:
an AMC-style DDPG search under the FLOPs budget ``cp_preserve_ratio``, uniform, or a ratio
list). With ``cp_list_group`` smaller than the number of layers, layers are pruned in groups
and the masked model trains again between groups (PocketFlow's retraining on the helper's
schedule, or with ``cp_finetune`` a short Adam fine-tune). Unlike PocketFlow, the pruned
channels are removed: the saved model is really smaller and faster.
"""
from __future__ import annotations

import logging

from compression.selection.criteria import select_channels
from compression.sparsity.masks import attach_masks, detach_masks, masks_of
from learners.channel.config import ChannelConfig
from learners.channel.base import ChannelLearnerBase
from learners.channel.base import log_layer
from learners.registry import register_learner

log = logging.getLogger("pocketflow")


@register_learner("channel", config=ChannelConfig, prefix="cp")
class ChannelPrunedLearner(ChannelLearnerBase):

    @property
    def calibration_samples(self) -> int:
        return self.cfg.nb_batches * self.ctx.helper.cfg.batch_size

    def kept_counts(self, full, layers, chosen, report):
        cfg = self.cfg
        return self.plan(full, layers, chosen, report, uniform_ratio=cfg.uniform_preserve_ratio,
                         multiple=4 if cfg.quadruple else 1)

    @property
    def residual_criterion(self) -> str:
        return "lasso" if self.cfg.lasso else "l1"

    def select(self, full, pruned, chosen, counts, batches):
        return select_channels(full, pruned, chosen, counts, batches, self.cfg.selection_options(),
                               self.ctx.seed)

    def select_final(self, full, pruned, chosen, counts, batches, trained=()):
        size = self.cfg.list_group
        groups = [chosen[i:i + size] for i in range(0, len(chosen), size)]
        keep, stats = {}, []
        for index, group in enumerate(groups):
            group_keep, group_stats = select_channels(full, pruned, group, counts, batches,
                                                      self.cfg.selection_options(), self.ctx.seed,
                                                      on_layer=log_layer, trained=trained)
            keep.update(group_keep)
            stats += group_stats
            if index < len(groups) - 1:
                self._group_finetune(pruned, keep)
        return keep, stats

    def _group_finetune(self, pruned, keep) -> None:
        """Between groups, the masked model (pruned input channels held at zero) trains again
        in this process: ``cp_finetune`` (without ``cp_retrain``) a short Adam fine-tune,
        otherwise PocketFlow's retraining, momentum SGD on the helper's schedule."""
        cfg, helper = self.cfg, self.ctx.helper
        attach_masks(pruned, list(keep))
        for name, mask in masks_of(pruned).items():
            mask.mask.zero_()
            mask.mask[:, keep[name].to(mask.mask.device)] = 1.0
        pruned.train()
        if cfg.finetune and not cfg.retrain:
            steps = max(1, int(cfg.nb_iters_ft_ratio * helper.nb_iters_train(1)))
            batches = self.ctx.cached_batches(helper.build_dataset_train(),
                                              min(steps, helper.nb_iters_train(1)))
            log.info("group fine-tune: %d Adam steps at %.1e on %d pruned layers", steps,
                     cfg.lrn_rate_ft, len(keep))
            self.ctx.short_finetune(pruned, batches, cfg.lrn_rate_ft, steps)
        else:
            log.info("group retrain: %d steps on the helper's schedule, %d pruned layers "
                     "(--cp_finetune for a short Adam fine-tune)", helper.nb_iters_train(1),
                     len(keep))
            self.ctx.local_retrain(pruned)
        pruned.eval()
        detach_masks(pruned)
