"""Per-layer bit widths as a DDPG environment (``learners.rl.search.SearchEnv``).

One step per quantized layer; the action is a bit width in [w_min, w_max]. The budget is
``equivalent_bits * sum(n_i)`` bits and is never exceeded: at each layer the width is capped so
that the layers still to come can get at least ``w_min`` bits, and raised so that they could
not leave budget unused even at ``w_max`` (PocketFlow's "duty"); the last layer takes what is
left (within [w_min, w_max]).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np


def budget_bounds(step: int, used: int, sizes: list[int], budget: float, w_min: int,
                  w_max: int) -> tuple[int, int]:
    """Smallest and largest integer width of layer ``step`` given ``used`` bits so far."""
    after = sum(sizes[step + 1:])
    size = sizes[step]
    high = min(w_max, math.floor((budget - used - after * w_min) / size))
    low = max(w_min, math.ceil((budget - used - after * w_max) / size))
    return min(low, high), max(high, w_min)


class BitsEnv:
    """Roll-outs choose bits for layers of ``sizes``; ``score(bits) -> accuracy``."""

    def __init__(self, features: np.ndarray, sizes: list[int], equivalent_bits: float,
                 w_min: int, w_max: int, score: Callable[[list[int]], float]) -> None:
        self.features, self.sizes, self.score = features, sizes, score
        self.budget = equivalent_bits * sum(sizes)
        self.w_min, self.w_max = w_min, w_max
        self.a_min, self.a_max = float(w_min), float(w_max)
        self.nb_steps = len(sizes)
        self.state_dim = features.shape[1] + 3
        self.reset()

    def reset(self) -> None:
        self.bits: list[int] = []

    def _used(self) -> int:
        return sum(b * n for b, n in zip(self.bits, self.sizes))

    def observation(self, step: int) -> np.ndarray:
        left = (self.budget - self._used()) / max(sum(self.sizes[step:]), 1)  # bits/weight left
        previous = self.bits[-1] if self.bits else 0
        return np.concatenate([self.features[step], np.asarray(
            [left / self.w_max, self._used() / self.budget, previous / self.w_max],
            dtype=np.float32)])

    def bounds(self, step: int) -> tuple[float, float]:
        low, high = budget_bounds(step, self._used(), self.sizes, self.budget, self.w_min,
                                  self.w_max)
        return float(low), float(high)

    def take(self, step: int, action: float) -> None:
        low, high = self.bounds(step)
        self.bits.append(int(min(max(round(action), low), high)))

    def finish(self) -> tuple[float, dict]:
        accuracy = self.score(list(self.bits))
        return accuracy, {"bits": list(self.bits), "accuracy": accuracy,
                          "equivalent_bits": self._used() / sum(self.sizes)}
