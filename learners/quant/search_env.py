"""Per-layer bit widths as a DDPG environment (``learners.search.search.SearchEnv``).

One step per quantized layer; the action is that layer's RELATIVE preference for bits in
[0, 1]. A finished roll-out turns the preferences into integer widths with ``allocate_bits``:
layer i gets ``w_min + (w_max - w_min) * clip(s * a_i, 0, 1)`` bits with the common scale ``s``
chosen so that the budget ``equivalent_bits * sum(n_i)`` is spent, then rounded down and
topped up greedily (largest remainder first) without ever exceeding the budget. Equal
preferences give the uniform strategy (the search's baseline roll-out), and every action
vector is a valid strategy: a random one is a variation of uniform, not the AMC-style
sequential clipping that spared the first layers and forced the minimum onto the last ones.

The reward is ``learners.search.search.accuracy_reward``: held-out accuracy, loss as a tie-break.
A mixed strategy replaces the uniform one only when its held-out accuracy is higher by more
than ``min_gain`` (``beats_baseline``): a lower loss alone, on a small held-out split, is
noise as likely as a gain, and the uniform strategy is the safe default.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from learners.search.preference_env import PreferenceEnv
from learners.search.search import accuracy_reward


def gains_accuracy(info: dict, baseline: dict, min_gain: float = 0.0) -> bool:
    """Held-out accuracy higher than the baseline's by more than ``min_gain``."""
    return float(info["accuracy"]) > float(baseline["accuracy"]) + min_gain


def allocate_bits(prefs: list[float], sizes: list[int], budget: float, w_min: int,
                  w_max: int) -> list[int]:
    """Integer widths in [w_min, w_max] from preferences in [0, 1]: each layer gets the floor or
    the ceiling of its share; ``sum(b_i n_i) <= budget`` always, and what is left unused is less
    than the size of any layer still below its ceiling (so less than the largest layer)."""
    if len(prefs) != len(sizes):
        raise ValueError(f"{len(prefs)} preferences for {len(sizes)} layers")
    if budget < w_min * sum(sizes):
        raise ValueError(f"budget of {budget:.0f} bits is below w_min={w_min} bits per weight")
    a = np.clip(np.asarray(prefs, dtype=np.float64), 1e-6, 1.0)
    n = np.asarray(sizes, dtype=np.float64)
    span = w_max - w_min

    def spent(scale: float) -> np.ndarray:
        return w_min + span * np.clip(scale * a, 0.0, 1.0)

    low, high = 0.0, 1.0 / float(a.min())  # spent(high) = w_max everywhere
    if float(spent(high) @ n) <= budget:
        return [w_max] * len(sizes)
    for _ in range(100):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if float(spent(mid) @ n) <= budget else (low, mid)
    target = spent(low)
    bits = np.floor(target + 1e-9).astype(np.int64)
    used = float(bits @ n)
    for index in np.argsort(-(target - bits), kind="stable"):  # largest remainder first
        if bits[index] < w_max and used + n[index] <= budget:
            bits[index] += 1
            used += n[index]
    return [int(b) for b in bits]


class BitsEnv(PreferenceEnv):
    """Roll-outs choose bits for layers of ``sizes``; ``score(bits) -> {"accuracy", "loss"}``."""

    def __init__(self, features: np.ndarray, sizes: list[int], equivalent_bits: float,
                 w_min: int, w_max: int, score: Callable[[list[int]], dict],
                 min_gain: float = 0.0) -> None:
        self.sizes, self.score, self.min_gain = sizes, score, min_gain
        self.budget = equivalent_bits * sum(sizes)
        self.w_min, self.w_max = w_min, w_max
        super().__init__(features, sizes, (equivalent_bits - w_min) / max(w_max - w_min, 1))

    def beats_baseline(self, info: dict, baseline: dict) -> bool:
        return gains_accuracy(info, baseline, self.min_gain)

    def finish(self) -> tuple[float, dict]:
        bits = allocate_bits(self.prefs, self.sizes, self.budget, self.w_min, self.w_max)
        scores = self.score(bits)
        used = sum(b * n for b, n in zip(bits, self.sizes))
        reward = accuracy_reward(scores)
        return reward, {"bits": bits, "accuracy": scores["accuracy"], "loss": scores["loss"],
                        "equivalent_bits": used / sum(self.sizes)}
