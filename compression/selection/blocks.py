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
