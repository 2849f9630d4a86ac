"""How many weights each layer loses: per-layer ratio protocols and the AGP ramp.

Counts are integers and exact: ``uniform`` gives every layer ``round(p * n_i)`` zeros;
``heurist`` (PocketFlow) gives ``p_i = a * log(n_i)`` with ``a`` chosen so that the
parameter-weighted mean ratio is ``p``, and its integer counts sum to exactly
``round(p * sum(n))``; any other preference (an RL agent's ratios) is rescaled to the same
exact total by ``allocate``.
"""
from __future__ import annotations

import math
from typing import Sequence

MAX_LAYER_RATIO = 0.99  # never remove a whole layer


def nb_zeros_uniform(sizes: Sequence[int], ratio: float) -> list[int]:
    return [round(ratio * n) for n in sizes]


def allocate(weights: Sequence[float], sizes: Sequence[int], total: int,
             max_ratio: float = MAX_LAYER_RATIO) -> list[int]:
    """Integer zeros per layer, proportional to ``weights`` (counts, not ratios), each at most
    ``floor(max_ratio * n_i)``, summing to exactly ``total``.

    The proportional share is found by bisection on a common scale (capped layers pass their
    excess to the others; when all weighted layers are full, the rest goes to the zero-weight
    layers by size), then rounded by largest remainders.
    """
    caps = [math.floor(max_ratio * n) for n in sizes]
    if not 0 <= total <= sum(caps):
        raise ValueError(f"cannot place {total} zeros: the layers hold at most {sum(caps)} "
                         f"at {max_ratio:.0%} per layer")
    if any(w < 0 for w in weights):
        raise ValueError("allocation weights must be non-negative")
    weighted = [i for i, w in enumerate(weights) if w > 0 and caps[i] > 0]
    if sum(caps[i] for i in weighted) < total:  # weighted layers full: the rest by size
        shares = [float(caps[i]) if i in weighted else 0.0 for i in range(len(sizes))]
        rest = [i for i in range(len(sizes)) if i not in weighted]
        extra = _proportional([float(sizes[i]) for i in rest], [caps[i] for i in rest],
                              total - sum(shares))
        for i, share in zip(rest, extra):
            shares[i] = share
    else:
        shares = _proportional([float(w) for w in weights], caps, float(total))
    return _round_exact(shares, caps, total)


def _proportional(weights: list[float], caps: list[int], total: float) -> list[float]:
    """Real shares ``min(cap_i, s * w_i)`` with the scale ``s`` found so they sum to total."""
    def filled(scale: float) -> list[float]:
        return [min(float(c), scale * w) for w, c in zip(weights, caps)]

    high = 1.0
    while sum(filled(high)) < total:
        high *= 2.0
    low = 0.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if sum(filled(mid)) < total else (low, mid)
    return filled(high)


def _round_exact(shares: list[float], caps: list[int], total: int) -> list[int]:
    """Largest-remainder rounding of real shares to integers summing to ``total``."""
    counts = [min(c, math.floor(s)) for s, c in zip(shares, caps)]
    order = sorted(range(len(shares)), key=lambda i: shares[i] - counts[i], reverse=True)
    missing = total - sum(counts)
    while missing > 0:
        room = [i for i in order if counts[i] < caps[i]]
        for i in room[:missing]:
            counts[i] += 1
        missing = total - sum(counts)
    for i in order[::-1]:  # overshoot from float error (rare): take back
        while missing < 0 and counts[i] > 0:
            counts[i] -= 1
            missing += 1
    return counts


def nb_zeros_heurist(sizes: Sequence[int], ratio: float) -> list[int]:
    """PocketFlow's heuristic: bigger layers lose more, ``p_i ~ log(n_i)``, mean ``p``."""
    total = round(ratio * sum(sizes))
    return allocate([math.log(n) * n for n in sizes], sizes, total)
