"""Zhu & Gupta's automated gradual pruning rate, and weight name -> layer name."""
from __future__ import annotations


def layer_of(weight_name: str) -> str:
    return weight_name[: -len(".weight")]


def agp_sparsity(initial: float, final: float, epoch: int, start: int, end: int) -> float:
    """Zhu & Gupta's cubic ramp: ``initial`` at ``start``, ``final`` at ``end`` and after."""
    if end <= start:
        return final
    progress = min(max(epoch - start, 0), end - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** 3
