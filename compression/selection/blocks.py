"""Whole blocks of input columns: where several columns of a reader read one root of the channel
graph (the channels of one group of a grouped conv), they are kept or dropped together.

A selection criterion ranks single columns; ``whole_blocks`` turns its pick into whole blocks:
the blocks with the largest share of picked columns, as many as fit the requested count (at
least one). Keeping a part of a block would leave the rest computed and unread.
"""
from __future__ import annotations

from typing import Sequence

import torch


def whole_blocks(keep: torch.Tensor, blocks: Sequence[Sequence[int]], nb_keep: int) -> torch.Tensor:
    """The sorted columns of the blocks that best cover ``keep`` with about ``nb_keep`` columns
    (``keep`` itself when ``blocks`` is empty)."""
    if not blocks:
        return keep
    picked = set(torch.as_tensor(keep).tolist())
    ranked = sorted(range(len(blocks)), key=lambda b: (
        -sum(c in picked for c in blocks[b]) / len(blocks[b]), b))
    chosen: list[int] = []
    for b in ranked:
        size = len(blocks[b])
        if chosen and len(chosen) + size / 2 > nb_keep:
            continue                      # closer to the count without it; a smaller may fit
        chosen.extend(blocks[b])
    return torch.tensor(sorted(chosen), dtype=torch.long, device=torch.as_tensor(keep).device)


def block_count(nb_keep: int, blocks: Sequence[Sequence[int]]) -> int:
    """How many columns ``whole_blocks`` keeps for a request of ``nb_keep`` (``nb_keep`` when
    ``blocks`` is empty; exact for blocks of one width, a grouped conv's): what a FLOPs budget
    must count, since a reader of a grouped conv that asks for 3 of its 16 columns in groups of
    4 keeps a whole group of 4."""
    chosen = 0
    for block in blocks or ():
        if chosen and chosen + len(block) / 2 > nb_keep:
            continue
        chosen += len(block)
    return chosen if blocks else nb_keep
