"""The one environment shape of every DDPG strategy search (``learners.search.search.SearchEnv``):
one step per layer, the action is that layer's RELATIVE preference in [0, 1].

The state is the layer's static features (each column divided by its maximum) plus the budget
(as a feature in [0, 1]), the weighted mean of the preferences so far and the previous one. A
finished roll-out turns all preferences at once into a strategy that meets the budget
(``strategy``), so every action vector is valid and equal preferences (the first roll-out,
``baseline_actions``) are the uniform strategy; ``finish`` scores it. Subclasses: sparsity
(``learners.weight_sparse.search_env``), bit widths (``learners.quant.search_env``), channels
(``learners.channel.search_env``).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
from torch import nn


def normalised(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Feature rows as a float32 table, each column divided by its maximum."""
    table = np.asarray(rows, dtype=np.float32)
    return table / np.maximum(table.max(axis=0), 1e-12)


def layer_features(layers: dict[str, nn.Module]) -> np.ndarray:
    """Static per-layer features in [0, 1]: position, log size, conv or linear, kernel area,
    fan-in and fan-out (each divided by its maximum over the layers)."""
    rows = []
    for index, module in enumerate(layers.values()):
        weight = module.weight
        kernel = weight[0, 0].numel() if weight.dim() > 2 else 1
        rows.append([index, math.log(weight.numel()), float(weight.dim() > 2), kernel,
                     weight.shape[1], weight.shape[0]])
    return normalised(rows)


class PreferenceEnv(ABC):
    """``features``: (layers, k) static features; ``weights``: what the running mean of the
    preferences weighs each layer by (sizes, FLOPs shares); ``budget``: the budget as a state
    feature."""

    a_min, a_max = 0.0, 1.0

    def __init__(self, features: np.ndarray, weights: Sequence[float], budget: float) -> None:
        self.features = features
        self.weights = np.asarray(weights)
        self.budget_feature = float(budget)
        self.nb_steps = len(features)
        self.state_dim = features.shape[1] + 3
        self.reset()

    def reset(self) -> None:
        self.prefs: list[float] = []

    def observation(self, step: int) -> np.ndarray:
        done = float(self.weights[:step].sum())
        mean = float(np.dot(self.prefs, self.weights[:step]) / done) if done > 0 else 0.0
        previous = self.prefs[-1] if self.prefs else 0.0
        return np.concatenate([self.features[step], np.asarray(
            [self.budget_feature, mean, previous], dtype=np.float32)])

    def bounds(self, step: int) -> tuple[float, float]:
        return self.a_min, self.a_max

    def baseline_actions(self) -> list[float]:
        """Equal preferences: the uniform strategy, the first roll-out of every search."""
        return [1.0] * self.nb_steps

    def take(self, step: int, action: float) -> None:
        self.prefs.append(float(action))

    @abstractmethod
    def finish(self) -> tuple[float, dict]:
        """``(reward, info)`` of the strategy the preferences give."""
