"""Budgets: how many input channels each layer keeps.

    from compression.budget import plan_counts
    counts, sections = plan_counts(full, layers, chosen, strategy_options, input_shape)

A strategy is a per-layer count. It comes from a fixed ratio (PocketFlow's count,
``counts_for_ratios``), a ratio file (``ratio_list``), or an allocation that meets a budget:
a fraction of the FLOPs (``ChannelFlops``, exact, without building the model) or of the
measured CPU latency (``ChannelLatency``, a per-module table settled on measurements of the
thinned model). The DDPG search and the roll-outs that score its strategies are the caller's
(``StrategyHooks``): nothing here sees a learner.

Modules:

- ``counts``: PocketFlow's count, rounding to channel multiples; ``simd``: this CPU's SIMD
  block and the widths that fall between blocks;
- ``flops``: ``ChannelFlops``; ``latency``: ``ChannelLatency``, ``thin_to_counts``,
  ``settle_budget``; ``allocation``: counts that meet a budget from per-layer preferences;
- ``ratio_list``: the per-layer ratio files;
- ``strategy``: ``plan_counts``, the protocols (uniform, list, auto) and the report's
  ``strategy`` section; ``options``: ``StrategyOptions``, the options it reads.
"""
from utils.lazy import lazy_exports

_EXPORTS = {
    "round_to_multiple": "counts", "nb_kept": "counts", "counts_for_ratios": "counts",
    "cpu_channel_block": "simd", "block_width_note": "simd",
    "ChannelFlops": "flops", "ChannelLatency": "latency", "thin_to_counts": "latency",
    "allocate_channels": "allocation", "BudgetError": "allocation", "CostModel": "allocation",
    "read_ratio_list": "ratio_list", "write_ratio_list": "ratio_list",
    "RatioListError": "ratio_list",
    "plan_counts": "strategy", "StrategyHooks": "strategy", "at_group_counts": "strategy",
    "StrategyOptions": "options",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
