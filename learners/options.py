"""Options learners share: where they write (``OutputOptions``) and, for channel learners,
what to skip and whether to reuse a selection (``ChannelOptions``).

A ``{prefix}`` in a default is the learner's flag prefix: ``--cpr_save_path`` defaults to
``./models_cpr/model.ckpt`` (``utils.config`` formats it when the flags are defined, the runner
when a config is built in Python).
"""
from __future__ import annotations

from dataclasses import dataclass

from learners.rl.config import DdpgConfig
from learners.strategy_options import RatioStrategy
from utils.config import check, check_ratio, nested, option, split_names


@dataclass
class OutputOptions:
    save_path: str = option("./models_{prefix}/model.ckpt", "training checkpoint (resumable state)")
    save_path_eval: str = option("./models_{prefix}_eval/model.ckpt",
                                 "final model (report.json and the files derived from it beside "
                                 "it)")


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
                                         "(compression.residual_groups)")
    eliminate_dead: bool = option(True, "after thinning, remove the output channels only "
                                        "readers before a residual sum read from the sum's "
                                        "later members (a scatter places the rest; exact, "
                                        "fewer FLOPs; compression.dead_channels)")

    def __post_init__(self) -> None:
        """Subclasses validate their own options (calling this first)."""

    @property
    def skip_names(self) -> list[str]:
        return split_names(self.skip_op_names)


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
