"""Options of the ``channel`` learner (PocketFlow's ``cp_*`` flags; defaults noted where they
differ)."""
from __future__ import annotations

from dataclasses import dataclass

from learners.channel.options import ChannelOptions
from learners.search.config import DdpgConfig
from learners.channel.options import SearchStrategy
from utils.config import check, nested, option
from compression.selection.criteria import SelectionOptions
from learners.channel.options import RatioChannelOptions
from utils.config import check_ratio


@dataclass
class ChannelConfig(ChannelOptions):
    uniform_preserve_ratio: float = option(
        0.0, "uniform: fraction of channels kept per layer; 0 matches preserve_ratio's FLOPs "
        "(PocketFlow: 0.6, a channel fraction that ignores the budget)")
    lasso: bool = option(True, "LASSO (ISTA, exact count) selection; false: L1 magnitude")
    quadruple: bool = option(False, "kept counts are multiples of 4")
    nb_points_per_layer: int = option(10, "output positions sampled per image and layer")
    nb_batches: int = option(30, "training batches sampled for the final selection")
    list_group: int = option(1000, "layers pruned per group; between groups the masked model is "
                                   "trained again (finetune, retrain)")
    finetune: bool = option(False, "between groups: a short Adam fine-tune (lrn_rate_ft, "
                                   "nb_iters_ft_ratio) instead of PocketFlow's retraining on "
                                   "the helper's schedule")
    retrain: bool = option(False, "between groups: retrain on the helper's schedule even with "
                                  "finetune")
    lrn_rate_ft: float = option(1e-4, "Adam rate of the between-group fine-tune")
    nb_iters_ft_ratio: float = option(0.2, "between-group fine-tune length, as a fraction of the "
                                           "training iterations")
    skip_frst_layer: bool = option(True, "do not prune the layer that reads the image")
    skip_last_layer: bool = option(True, "do not prune the last layer (the classifier)")
    strategy: SearchStrategy = nested(SearchStrategy)
    ddpg: DdpgConfig = nested(DdpgConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.uniform_preserve_ratio <= 1, "uniform_preserve_ratio",
              f"must be in [0, 1], got {self.uniform_preserve_ratio}")
        for name in ("nb_points_per_layer", "nb_batches", "list_group"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")

    def selection_options(self) -> SelectionOptions:
        """PocketFlow's ``cp_lasso`` / ``cp_nb_points_per_layer`` as the selection's options."""
        return SelectionOptions("ista" if self.lasso else "l1", self.nb_points_per_layer)


@dataclass
class CprConfig(SelectionOptions, RatioChannelOptions):
    """chn-pruned-rmt's options: the ratio options and the selection's own
    (``SelectionOptions``: ``--cpr_selection``, ``--cpr_ista_lrn_rate``...), passed as they are."""

    nb_smpls: int = option(5000, "training samples used for channel selection")
    # on by default here (docs/speed.md#the-default-model): a stream pruned per reader leaves
    # gathers and scatters that cost more at batch 1 than the channels they save
    prune_residual: bool = option(True, "prune residual streams as groups: all readers of a "
                                        "stream keep the same channels, chosen once over all "
                                        "of them, so whole residual channels leave every "
                                        "member, shortcut and reader; false: each reader "
                                        "keeps its own (PocketFlow's per-layer selection)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.nb_smpls > 0, "nb_smpls", "must be positive")


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
    prune_ratio_type: str = option("uniform", "uniform: prune_ratio for every layer; list: "
                                              "one ratio per layer from prune_ratio_file",
                                   choices=("uniform", "list"))
    prune_ratio_file: str = option("", "list: the fraction of input channels REMOVED per layer "
                                       "(PocketFlow's comma-separated line, one per line, or "
                                       "'<layer> <ratio>')")
    lrn_rate_pgd_incr: float = option(1.4, "proximal step x this after a decrease of the loss")
    lrn_rate_pgd_decr: float = option(0.7, "proximal step x this otherwise")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ratio(self.prune_ratio, "prune_ratio")
        check(self.prune_ratio_type != "list" or bool(self.prune_ratio_file), "prune_ratio_file",
              "prune_ratio_type=list needs a file of per-layer ratios")
        check(self.lrn_rate_pgd_init > 0, "lrn_rate_pgd_init", "must be positive")
        check(self.lrn_rate_pgd_incr >= 1, "lrn_rate_pgd_incr", "must be >= 1")
        check(0 < self.lrn_rate_pgd_decr <= 1, "lrn_rate_pgd_decr", "must be in (0, 1]")
        check(self.lrn_rate_adam > 0, "lrn_rate_adam", "must be positive")
        for name in ("nb_iters_pgd", "nb_iters_layer", "nb_smpls", "nb_crops_per_smpl",
                     "channel_multiple"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")

    def selection_options(self) -> SelectionOptions:
        """PocketFlow's ``cpg_*`` flags as the selection's options: L2,1 proximal selection,
        then the masked Adam refit."""
        return SelectionOptions("group-prox", self.nb_crops_per_smpl, lstsq_solver="adam",
                                lstsq_lrn_rate=self.lrn_rate_adam,
                                lstsq_nb_iters=self.nb_iters_layer,
                                prox_lrn_rate=self.lrn_rate_pgd_init,
                                prox_nb_iters=self.nb_iters_pgd,
                                prox_lrn_rate_incr=self.lrn_rate_pgd_incr,
                                prox_lrn_rate_decr=self.lrn_rate_pgd_decr)


@dataclass
class DcpConfig(RatioChannelOptions):
    nb_stages: int = option(3, "auxiliary heads (at most the net's stage_names): the network is "
                               "split into nb_stages + 1 blocks")
    lrn_rate_adam: float = option(1e-3, "Adam rate of the block and layer fine-tuning")
    nb_iters_block: int = option(-1, "Adam steps per block on final + discrimination loss "
                                     "(-1: 2 epochs of this training set; PocketFlow's CIFAR-10 "
                                     "value, 10000, is 25.6 epochs: docs/learners.md)")
    nb_iters_layer: int = option(-1, "Adam steps per layer on reconstruction + discrimination "
                                     "loss, pruned channels held at zero (-1: PocketFlow's 500 "
                                     "CIFAR-10 steps in epochs = 1.28 epochs of this training set)")
    nb_batches: int = option(20, "cached training batches the selection cycles through")
    channels_per_pass: int = option(1, "input channels the greedy selection adds per gradient "
                                       "pass (1: the paper's one at a time; more: fewer passes, "
                                       "see docs/learners.md#dis-chn-pruned)")
    lstsq_init: bool = option(True, "start a layer's fine-tune from the closed-form "
                                    "least-squares refit of its kept channels (not in "
                                    "PocketFlow: it makes the layer fine-tune start at the "
                                    "reconstruction optimum instead of the old weights)")
    nb_crops_per_smpl: int = option(10, "output positions per sample of that refit")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.nb_stages >= 0, "nb_stages", "must be >= 0")
        check(self.lrn_rate_adam > 0, "lrn_rate_adam", "must be positive")
        check(self.nb_iters_block >= -1, "nb_iters_block", "must be >= 0, or -1 (auto)")
        check(self.nb_iters_layer >= -1, "nb_iters_layer", "must be >= 0, or -1 (auto)")
        check(self.nb_batches > 0, "nb_batches", "must be positive")
        check(self.channels_per_pass > 0, "channels_per_pass", "must be positive")
        check(self.nb_crops_per_smpl > 0, "nb_crops_per_smpl", "must be positive")

    def selection_options(self) -> SelectionOptions:
        """The LASSO selection of a search's roll-outs and the refits (``lstsq_init``)."""
        return SelectionOptions(nb_crops_per_smpl=self.nb_crops_per_smpl)
