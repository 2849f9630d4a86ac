"""chn-pruned-gpu: channel selection by L2,1 proximal gradient descent, then masked Adam,
then physical thinning and fine-tuning.

Per layer (in execution order, inputs from the network being pruned, targets from the full
one, as in chn-pruned-rmt): proximal gradient steps on the output-regression loss with a group
soft-threshold of the input-channel norms ramping to the ``cpg_prune_ratio`` percentile and an
adaptive step (x1.4 / x0.7) (``compression.selection.group_prox``); the surviving channels' weights are
then refitted by Adam with the pruned channels masked out, ``cpg_nb_iters_layer`` steps at
``cpg_lrn_rate_adam``. PocketFlow ran this on the GPU with TensorFlow; here both phases run on
the layer's normal equations, so an iteration costs the same whatever the number of samples.
"""
from __future__ import annotations


from compression.budget.ratio_list import read_ratio_list
from compression.budget.counts import counts_for_ratios
from compression.selection.criteria import select_channels
from compression.graph.layers import choose_layers
from learners.channel.base import ChannelLearnerBase
from learners.channel.base import log_layer
from learners.registry import register_learner
from learners.channel.config import CpgConfig


@register_learner("chn-pruned-gpu", config=CpgConfig, prefix="cpg")
class ChannelPrunedGpuLearner(ChannelLearnerBase):

    @property
    def calibration_samples(self) -> int:
        return self.cfg.nb_smpls

    def choose(self, layers):
        cfg = self.cfg
        return choose_layers(layers, cfg.skip_ht_layers, cfg.skip_ht_layers,
                             cfg.skip_names)

    def kept_counts(self, full, layers, chosen, sections):
        """``cpg_prune_ratio`` everywhere, or (``cpg_prune_ratio_type=list``) each layer's
        ratio from ``cpg_prune_ratio_file``, rounded to ``cpg_channel_multiple``."""
        cfg = self.cfg
        if cfg.prune_ratio_type == "uniform":
            return super().kept_counts(full, layers, chosen, sections)
        ratios = read_ratio_list(cfg.prune_ratio_file, [layer.name for layer in chosen])
        return counts_for_ratios(chosen, ratios, self.channel_multiple)

    def select(self, full, pruned, chosen, counts, batches):
        return select_channels(full, pruned, chosen, counts, batches, self.cfg.selection_options(),
                               self.ctx.seed, on_layer=log_layer)
