"""The per-layer sparsity search as a DDPG environment (``learners.rl.search.SearchEnv``).

One step per maskable layer; the action is that layer's RELATIVE pruning preference in
[0, 1]. A finished roll-out turns the preferences into exact integer counts with ``allocate``:
layer i gets the ratio ``s * a_i`` (capped at 99 %) with the common scale ``s`` chosen so that
exactly ``total`` weights are removed. Every action vector is thus a valid strategy that meets
the budget exactly, and a random one is a mild variation of uniform rather than the extreme
strategies that AMC-style sequential clipping produces (early layers spared, the budget
forced onto the last layers), which made PocketFlow-style exploration waste most roll-outs.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from torch import nn

from compression.sparsity_allocation import allocate


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

    a_min, a_max = 0.0, 1.0

    def __init__(self, features: np.ndarray, sizes: list[int], total: int,
                 score: Callable[[list[int]], float], reward_type: str = "single-obj") -> None:
        self.features = features
        self.sizes = sizes
        self.total = total
        self.score = score
        self.reward_type = reward_type
        self.nb_steps = len(sizes)
        self.state_dim = features.shape[1] + 3
        self.reset()

    def reset(self) -> None:
        self.prefs: list[float] = []

    def observation(self, step: int) -> np.ndarray:
        done = sum(self.sizes[:step])
        mean = (sum(a * n for a, n in zip(self.prefs, self.sizes)) / done) if done else 0.0
        previous = self.prefs[-1] if self.prefs else 0.0
        return np.concatenate([self.features[step], np.asarray(
            [self.total / sum(self.sizes), mean, previous], dtype=np.float32)])

    def bounds(self, step: int) -> tuple[float, float]:
        return self.a_min, self.a_max

    def baseline_actions(self) -> list[float]:
        """Equal preferences: the uniform strategy, the first roll-out of every search."""
        return [1.0] * self.nb_steps

    def take(self, step: int, action: float) -> None:
        self.prefs.append(float(action))

    def finish(self) -> tuple[float, dict]:
        counts = allocate([a * n for a, n in zip(self.prefs, self.sizes)], self.sizes, self.total)
        accuracy = self.score(counts)
        sparsity = sum(counts) / sum(self.sizes)
        reward = accuracy if self.reward_type == "single-obj" else accuracy * math.log(1 + sparsity)
        return reward, {"counts": counts, "accuracy": accuracy}
