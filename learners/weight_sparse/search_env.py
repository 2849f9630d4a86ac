"""The per-layer sparsity search as a DDPG environment (``learners.search.search.SearchEnv``).

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

from compression.sparsity.allocation import allocate
from learners.search.preference_env import PreferenceEnv


class SparsityEnv(PreferenceEnv):
    """Roll-outs choose ratios for ``sizes``; ``score(counts) -> accuracy`` gives the reward."""

    def __init__(self, features: np.ndarray, sizes: list[int], total: int,
                 score: Callable[[list[int]], float], reward_type: str = "single-obj") -> None:
        self.sizes, self.total, self.score, self.reward_type = sizes, total, score, reward_type
        super().__init__(features, sizes, total / sum(sizes))

    def finish(self) -> tuple[float, dict]:
        counts = allocate([a * n for a, n in zip(self.prefs, self.sizes)], self.sizes, self.total)
        accuracy = self.score(counts)
        sparsity = sum(counts) / sum(self.sizes)
        reward = accuracy if self.reward_type == "single-obj" else accuracy * math.log(1 + sparsity)
        return reward, {"counts": counts, "accuracy": accuracy}
