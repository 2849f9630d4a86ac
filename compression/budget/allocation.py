"""Per-layer kept-channel counts that meet a FLOPs (or latency) budget, from relative preferences.

Layer i keeps ``clip(s * a_i, min_ratio, 1)`` of its input channels (rounded to
``multiple``), with the common scale ``s`` the largest for which the FLOPs stay within
``preserve * total``; layers are then topped up one step at a time, the most under-served
first, while the budget allows. So every preference vector gives a strategy whose FLOPs are at
most the budget and short of it by less than one channel step of some layer (within 2 % on
the registered nets; tested), and equal preferences give the uniform strategy (the same
fraction of channels kept everywhere). This is how the budget is enforced for a DDPG search
(``learners.channel.search_env``) and for the ``uniform`` protocol alike.
"""
from __future__ import annotations

import math
from typing import Mapping, Protocol, Sequence

from compression.budget.counts import round_to_multiple
from compression.graph.layers import PrunableLayer


class CostModel(Protocol):
    """What a budget is counted in: ``compression.budget.flops.ChannelFlops`` (exact FLOPs) or
    ``compression.budget.latency.ChannelLatency`` (measured latency lookup table)."""
    unit_name: str
    total: float

    def cost(self, kept: Mapping[str, int]) -> float: ...
    def ratio(self, kept: Mapping[str, int]) -> float: ...


class BudgetError(ValueError):
    """The FLOPs budget cannot be met with the layers allowed to shrink."""


def amc_min_ratio(preserve: float) -> float:
    """PocketFlow's lower bound of a layer's preserve ratio: 1.5 * log10(preserve + 1)."""
    return min(1.0, 1.5 * math.log10(preserve + 1.0))


def count_at(ratio: float, in_channels: int, multiple: int = 1) -> int:
    """Channels kept at ``ratio`` (nearest, at least 1; a multiple of ``multiple`` when the
    layer is at least that wide)."""
    return round_to_multiple(max(1, min(in_channels, int(round(ratio * in_channels)))),
                             in_channels, multiple)


def _step_up(count: int, in_channels: int, multiple: int) -> int:
    if multiple < 0:        # a SIMD block: single channels up to one block, blocks above
        step = -multiple if count >= -multiple and in_channels > -multiple else 1
    else:
        step = multiple if multiple > 1 and in_channels >= multiple else 1
    return min(in_channels, count + step)


def allocate_channels(prefs: Mapping[str, float], layers: Sequence[PrunableLayer],
                      cost: CostModel, preserve: float, min_ratio: float = 0.0,
                      multiple: int = 1) -> dict[str, int]:
    """``layer name -> kept input channels`` for the ``layers`` to prune, cost <= budget
    (``preserve`` times the unpruned model's cost)."""
    if not 0.0 < preserve <= 1.0:
        raise BudgetError(f"the {cost.unit_name} preserve ratio must be in (0, 1], got {preserve}")
    missing = [layer.name for layer in layers if layer.name not in prefs]
    if missing:
        raise ValueError(f"no preference for layers {missing}")
    budget = preserve * cost.total
    widths = {layer.name: layer.in_channels for layer in layers}
    a = {name: min(1.0, max(1e-6, float(prefs[name]))) for name in widths}

    def counts(scale: float) -> dict[str, int]:
        return {name: count_at(min(1.0, max(min_ratio, scale * a[name])), c, multiple)
                for name, c in widths.items()}

    floor = counts(0.0)
    if cost.cost(floor) > budget:
        raise BudgetError(
            f"a {cost.unit_name} budget of {preserve:.3f} cannot be met: with every prunable layer "
            f"at its minimum ({min_ratio:.3f} of its channels) the model keeps "
            f"{cost.ratio(floor):.3f} of its {cost.unit_name}; prune more layers (skip rules), lower the "
            "minimum ratio or raise the budget")
    high = 1.0 / min(a.values())
    if cost.cost(counts(high)) <= budget:
        return counts(high)
    low = 0.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if cost.cost(counts(mid)) <= budget else (low, mid)
    kept = counts(low)
    wanted = {name: min(1.0, max(min_ratio, high * a[name])) * c for name, c in widths.items()}
    for name in sorted(widths, key=lambda n: kept[n] - wanted[n]):  # most under-served first
        trial = {**kept, name: _step_up(kept[name], widths[name], multiple)}
        if trial[name] != kept[name] and cost.cost(trial) <= budget:
            kept = trial
    return kept
