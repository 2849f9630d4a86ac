"""The per-layer sparsity search as a DDPG environment (``learners.rl.search.SearchEnv``).

One step per maskable layer; the action is that layer's pruning ratio. The overall budget
(``total`` zeros) is enforced AMC-style: at each layer the ratio is clipped so that the
layers still to come can absorb what is left (lower bound) and the budget is never exceeded
(upper bound); the last layer closes it. The integer counts are then made exact by
``allocate``, so every roll-out removes exactly ``total`` weights.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from torch import nn

from compression.sparsity_allocation import MAX_LAYER_RATIO, allocate


def layer_features(layers: dict[str, nn.Module]) -> np.ndarray:
    """Static per-layer features in [0, 1]: position, log size, conv or linear, kernel area,
    fan-in and fan-out (each divided by its maximum over the layers)."""
    rows = []
    for index, module in enumerate(layers.values()):
        weight = module.weight
        kernel = weight[0, 0].numel() if weight.dim() > 2 else 1
        rows.append([index, math.log(weight.numel()), float(weight.dim() > 2), kernel,
                     weight.shape[1], weight.shape[0]])
    table = np.asarray(rows, dtype=np.float32)
    return table / np.maximum(table.max(axis=0), 1e-12)


class SparsityEnv:
    """Roll-outs choose ratios for ``sizes``; ``score(counts) -> accuracy`` gives the reward."""

    a_min, a_max = 0.0, MAX_LAYER_RATIO

    def __init__(self, features: np.ndarray, sizes: list[int], total: int,
                 score: Callable[[list[int]], float], reward_type: str = "single-obj") -> None:
        self.features = features
        self.sizes = sizes
        self.total = total
        self.score = score
        self.reward_type = reward_type
        self.caps = [MAX_LAYER_RATIO * n for n in sizes]
        self.nb_steps = len(sizes)
        self.state_dim = features.shape[1] + 3
        self.reset()

    def reset(self) -> None:
        self.zeros: list[float] = []

    def _placed(self) -> float:
        return float(sum(self.zeros))

    def observation(self, step: int) -> np.ndarray:
        left = self.total - self._placed()
        room = sum(self.caps[step:])
        previous = self.zeros[-1] / self.sizes[step - 1] if step else 0.0
        return np.concatenate([self.features[step], np.asarray(
            [self._placed() / max(self.total, 1), left / max(room, 1.0), previous],
            dtype=np.float32)])

    def bounds(self, step: int) -> tuple[float, float]:
        left = self.total - self._placed()
        room_after = sum(self.caps[step + 1:])
        size = self.sizes[step]
        low = max(0.0, (left - room_after) / size)
        high = min(MAX_LAYER_RATIO, max(left, 0.0) / size)
        return min(low, high), high

    def take(self, step: int, action: float) -> None:
        self.zeros.append(action * self.sizes[step])

    def finish(self) -> tuple[float, dict]:
        counts = allocate(self.zeros, self.sizes, self.total)
        accuracy = self.score(counts)
        sparsity = sum(counts) / sum(self.sizes)
        reward = accuracy if self.reward_type == "single-obj" else accuracy * math.log(1 + sparsity)
        return reward, {"counts": counts, "accuracy": accuracy}
