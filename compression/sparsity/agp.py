"""Zhu & Gupta's automated gradual pruning (AGP) ramp: the one ramp of weight-sparse's mask
schedule and the schedule learner's ``AutomatedGradualPruner`` (Distiller)."""
from __future__ import annotations


def agp_fraction(step: int, beg: int, end: int, exponent: float) -> float:
    """Fraction of the final sparsity reached at ``step`` (Zhu & Gupta's cubic ramp):
    0 before ``beg``, 1 from ``end`` on, ``1 - (1 - t)^exponent`` in between."""
    if end <= beg:
        return 1.0 if step >= beg else 0.0
    progress = min(max((step - beg) / (end - beg), 0.0), 1.0)
    return 1.0 - (1.0 - progress) ** exponent


def agp_sparsity(initial: float, final: float, step: int, beg: int, end: int,
                 exponent: float = 3.0) -> float:
    """The sparsity of the ramp from ``initial`` at ``beg`` to ``final`` at ``end`` and after
    (Distiller's ``AutomatedGradualPruner``: steps are epochs); ``final`` when ``end <= beg``."""
    if end <= beg:
        return final
    return final + (initial - final) * (1.0 - agp_fraction(step, beg, end, exponent))
