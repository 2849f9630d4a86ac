"""This CPU's SIMD block of float32 channels, and the pruned widths that fall between blocks
(oneDNN runs a partial block at the cost of a whole one; ``docs/speed.md``)."""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch

log = logging.getLogger("pocketflow")


def cpu_channel_block() -> int:
    """Channels per SIMD register of float32 on this CPU as ATen dispatches it: 16 with
    AVX-512, else 8 (AVX2, Arm)."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def off_block_widths(kept: Mapping[str, Sequence[int]], block: int) -> dict[str, int]:
    """``layer -> kept count`` of the pruned layers (``kept``: ``layer -> [kept, original]``,
    as ``compression.surgery.thinning.kept_channels`` gives) whose count is above one SIMD ``block``
    and not a multiple of it: oneDNN runs them at the cost of the next multiple."""
    return {name: counts[0] for name, counts in kept.items()
            if counts[0] > block and counts[0] % block}


def block_width_note(kept: Mapping[str, Sequence[int]], block: int) -> str | None:
    """The one-line note for a run whose pruned layers keep counts between SIMD blocks
    (``off_block_widths``), or None when every count is a whole block or within one."""
    off = off_block_widths(kept, block)
    if not off:
        return None
    named = ", ".join(f"{name}: {count}" for name, count in list(off.items())[:4])
    return (f"{len(off)} of {len(kept)} pruned layers keep a channel count above {block} that is "
            f"not a multiple of {block} ({named}{', ...' if len(off) > 4 else ''}): oneDNN runs "
            "them at the cost of the next multiple on this CPU; the channel learners' "
            "channel_multiple=-1 rounds counts to whole SIMD blocks (docs/speed.md)")


def note_block_widths(kept: Mapping[str, Sequence[int]], device: torch.device | str) -> None:
    """Log ``block_width_note`` for a thinned model run on a CPU (a GPU's good widths are
    another matter)."""
    note = block_width_note(kept, cpu_channel_block())
    if note and torch.device(device).type == "cpu":
        log.info(note)
