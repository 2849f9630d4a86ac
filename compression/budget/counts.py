"""Kept-channel counts: PocketFlow's count for a pruning ratio, and rounding a count to a
multiple of channels (or to this CPU's SIMD blocks, ``compression.budget.simd``)."""
from __future__ import annotations

from typing import Mapping, Sequence

from compression.graph.layers import PrunableLayer


def round_to_multiple(count: int, in_channels: int, multiple: int) -> int:
    """The nearest multiple of ``multiple`` (at least one multiple, at most ``in_channels``);
    layers narrower than ``multiple`` keep ``count``. CPU kernels are much faster on channel
    counts that are multiples of 8, whatever the FLOPs say.

    A negative ``multiple`` ``-b`` is a SIMD block of ``b`` channels (``cpu_channel_block``):
    counts up to ``b`` are kept as they are and larger ones go to the nearest multiple of
    ``b``. oneDNN's convolutions cost in proportion to the channels up to one block and a
    whole block for any part of one above it (``docs/speed.md``)."""
    if multiple < 0:
        block = -multiple
        if count <= block or in_channels <= block:
            return count
        return min(in_channels, max(block, int(round(count / block)) * block))
    if multiple <= 1 or in_channels < multiple:
        return count
    return min(in_channels, max(multiple, int(round(count / multiple)) * multiple))


def nb_kept(in_channels: int, ratio: float) -> int:
    """PocketFlow's count: int(c_in * (1 - ratio)), at least one channel."""
    return max(1, int(in_channels * (1.0 - ratio)))


def counts_for_ratios(layers: Sequence[PrunableLayer], ratios: Mapping[str, float],
                      multiple: int = 1) -> dict[str, int]:
    """Kept input channels per layer for per-layer PRUNING ratios (PocketFlow's counts,
    rounded to ``multiple``)."""
    return {layer.name: round_to_multiple(nb_kept(layer.in_channels, ratios[layer.name]),
                                          layer.in_channels, multiple) for layer in layers}
