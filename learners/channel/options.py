"""Options of the channel learners: where they write and what they skip (``ChannelOptions``),
the ratio options of the learners whose PocketFlow flag is a pruning ratio
(``RatioChannelOptions``), and the two ways PocketFlow's flags name a strategy's protocol.

``compression.budget.options.StrategyOptions`` holds what every protocol shares. ``channel``
keeps ``cp_prune_option auto|uniform|list`` (``SearchStrategy``); ``chn-pruned-rmt`` and
``dis-chn-pruned``, whose PocketFlow flags are per-layer pruning ratios, follow
``weight-sparse``'s ``*_prune_ratio_prtl uniform|list|optimal`` (``RatioStrategy``: no budget
by default, PocketFlow's counts). Both are nested configs: their flags take the learner's
prefix (``--cpr_preserve_ratio``).
"""
from __future__ import annotations

from dataclasses import dataclass

from compression.budget.options import StrategyOptions
from compression.selection.criteria import SelectionOptions
from learners.config import OutputOptions
from learners.search.config import DdpgConfig
from utils.config import check, check_ratio, nested, option, split_names


@dataclass
class SearchStrategy(StrategyOptions):
    """``channel``'s ``prune_option``: the DDPG search by default, under a FLOPs budget."""

    prune_option: str = option("auto", "per-layer kept channels: auto (DDPG search under the "
                                       "budget preserve_ratio), uniform (the same fraction "
                                       "everywhere, matched to the budget), list "
                                       "(prune_list_file), netadapt (greedy: each step shrinks "
                                       "the unit that loses least accuracy)",
                               choices=("auto", "uniform", "list", "netadapt"))

    @property
    def protocol(self) -> str:
        return self.prune_option


@dataclass
class RatioStrategy(StrategyOptions):
    """``prune_ratio_prtl`` of the learners whose PocketFlow flag is a pruning ratio."""

    prune_ratio_prtl: str = option("uniform", "per-layer kept channels: optimal (DDPG search "
                                              "under the budget preserve_ratio), uniform (the "
                                              "same fraction everywhere, matched to the budget), "
                                              "list (prune_list_file), netadapt (greedy: each "
                                              "step shrinks the residual group or layer that "
                                              "loses least accuracy for the same saving)",
                                   choices=("optimal", "uniform", "list", "netadapt"))
    preserve_ratio: float = option(0.0, "fraction of the unpruned model's FLOPs (or, with "
                                        "budget_type=latency, of its measured CPU latency) kept "
                                        "by the uniform and optimal protocols; 0: uniform "
                                        "removes prune_ratio of every layer's inputs and "
                                        "optimal searches at that strategy's FLOPs")
    prune_list_file: str = option("./{prefix}_ratio.list", "list: fraction of input channels "
                                                           "KEPT per layer ('<ratio>' or "
                                                           "'<layer> <ratio>')")
    nb_rlouts: int = option(100, "optimal: roll-outs of the DDPG search")
    nb_rlouts_min: int = option(30, "optimal: roll-outs that fill the replay buffer first")
    UNSET_PRESERVE = "uniform at prune_ratio"

    @property
    def protocol(self) -> str:
        return {"optimal": "auto"}.get(self.prune_ratio_prtl, self.prune_ratio_prtl)


@dataclass
class ChannelOptions(OutputOptions):
    save_path_ws: str = option("./models_{prefix}_ws/model.ckpt",
                               "thinned model right after selection")
    skip_op_names: str = option("", "comma-separated substrings of layer names not to prune")
    warm_start: bool = option(False, "skip selection: start from save_path_ws", run_only=True)
    prune_residual: bool = option(False, "prune residual streams as groups: all readers of a "
                                         "stream keep the same channels, chosen once over all "
                                         "of them, so whole residual channels leave every "
                                         "member, shortcut and reader "
                                         "(compression.selection.residual_groups)")
    eliminate_dead: bool = option(True, "after thinning, remove the output channels only "
                                        "readers before a residual sum read from the sum's "
                                        "later members (a scatter places the rest; exact, "
                                        "fewer FLOPs; compression.surgery.dead_channels)")

    def __post_init__(self) -> None:
        """Subclasses validate their own options (calling this first)."""

    @property
    def skip_names(self) -> list[str]:
        return split_names(self.skip_op_names)

    def selection_options(self) -> SelectionOptions:
        """The options of this learner's layer selection and refits (defaults here; a learner
        whose flags name them translates its own)."""
        return SelectionOptions()


@dataclass
class RatioChannelOptions(ChannelOptions):
    """The channel learners whose PocketFlow flag is a pruning ratio (chn-pruned-rmt,
    dis-chn-pruned): the ratio, the skip rules, the count rounding, the per-layer protocols
    and the DDPG search."""

    prune_ratio: float = option(0.5, "fraction of each layer's input channels removed")
    skip_frst_layer: bool = option(True, "do not prune the layer that reads the input image")
    skip_last_layer: bool = option(False, "do not prune the last layer (the classifier)")
    channel_multiple: int = option(0, "round each kept-channel count to a multiple of this; -1: "
                                      "this CPU's SIMD block b (16 with AVX-512, else 8): counts "
                                      "up to b exact, larger ones multiples of b (the widths "
                                      "oneDNN runs in proportion to their FLOPs); 0: 8 under "
                                      "a latency budget, else 1 (PocketFlow's exact count)")
    strategy: RatioStrategy = nested(RatioStrategy)
    ddpg: DdpgConfig = nested(DdpgConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ratio(self.prune_ratio, "prune_ratio")
        check(self.channel_multiple >= -1, "channel_multiple",
              f"must be -1 (the CPU's SIMD block), 0 (automatic) or a positive multiple, got "
              f"{self.channel_multiple}")
