"""chn-pruned-gpu: channel selection by L2,1 proximal gradient descent, then masked Adam,
then physical thinning and fine-tuning.

Per layer (in execution order, inputs from the network being pruned, targets from the full
one, as in chn-pruned-rmt): proximal gradient steps on the output-regression loss with a group
soft-threshold of the input-channel norms ramping to the ``cpg_prune_ratio`` percentile and an
adaptive step (x1.4 / x0.7) (``compression.group_prox``); the surviving channels' weights are
then refitted by Adam with the pruned channels masked out, ``cpg_nb_iters_layer`` steps at
``cpg_lrn_rate_adam``. PocketFlow ran this on the GPU with TensorFlow; here both phases run on
the layer's normal equations, so an iteration costs the same whatever the number of samples.
"""
from __future__ import annotations

from dataclasses import dataclass

from compression.channel_selection import (SelectionSettings, choose_layers, select_channels)
from learners.channel_base import ChannelLearnerBase
from learners.channel_pruning_rmt.learner import log_layer
from learners.registry import register_learner
from learners.options import ChannelOptions
from utils.config import check, check_ratio, option


@dataclass
class CpgConfig(ChannelOptions):
    prune_ratio: float = option(0.5, "fraction of each layer's input channels removed")
    skip_ht_layers: bool = option(True, "do not prune the first (head) and last (tail) layers")
    lrn_rate_pgd_init: float = option(
        1e-2, "initial proximal step on the layer's problem scaled by ||P'P||_F (PocketFlow's "
        "1e-10 was for the unscaled problem); x1.4 after a decrease, x0.7 otherwise")
    nb_iters_pgd: int = option(1000, "proximal gradient iterations per layer")
    lrn_rate_adam: float = option(1e-2, "Adam rate of the masked refit")
    nb_iters_layer: int = option(1000, "masked Adam iterations per layer")
    nb_smpls: int = option(5000, "training samples used for the layer regressions")
    nb_crops_per_smpl: int = option(10, "random output positions sampled per sample")
    channel_multiple: int = option(1, "round each kept-channel count to a multiple of this")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ratio(self.prune_ratio, "prune_ratio")
        check(self.lrn_rate_pgd_init > 0, "lrn_rate_pgd_init", "must be positive")
        check(self.lrn_rate_adam > 0, "lrn_rate_adam", "must be positive")
        for name in ("nb_iters_pgd", "nb_iters_layer", "nb_smpls", "nb_crops_per_smpl",
                     "channel_multiple"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")


@register_learner("chn-pruned-gpu", config=CpgConfig, prefix="cpg")
class ChannelPrunedGpuLearner(ChannelLearnerBase):

    @property
    def calibration_samples(self) -> int:
        return self.cfg.nb_smpls

    def choose(self, layers):
        cfg = self.cfg
        return choose_layers(layers, cfg.skip_ht_layers, cfg.skip_ht_layers,
                             cfg.skip_names)

    def selection_settings(self) -> SelectionSettings:
        return SelectionSettings(nb_crops=self.cfg.nb_crops_per_smpl, seed=self.ctx.seed)

    def select(self, full, pruned, chosen, counts, batches):
        cfg = self.cfg
        settings = SelectionSettings(
            method="group-prox", nb_crops=cfg.nb_crops_per_smpl, lstsq="adam",
            lstsq_lrn_rate=cfg.lrn_rate_adam, lstsq_nb_iters=cfg.nb_iters_layer,
            seed=self.ctx.seed, prox_lrn_rate=cfg.lrn_rate_pgd_init,
            prox_nb_iters=cfg.nb_iters_pgd)
        return select_channels(full, pruned, chosen, counts, batches, settings, on_layer=log_layer)
