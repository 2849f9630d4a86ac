"""Per-layer channel counts under a FLOPs budget as a DDPG environment (``SearchEnv``).

The one environment every channel learner's search uses (``channel``; ``chn-pruned-rmt`` and
``dis-chn-pruned`` through ``compression.budget.strategy``). One step per prunable layer. The
state is AMC's (He et al. 2018): layer index, output and input channels, output height and
width, stride, kernel area, the layer's share of the FLOPs and the largest reduction allowed,
each divided by its maximum over the layers; plus the budget, the FLOPs-weighted mean of the
previous actions and the previous action. The action is the layer's relative preference for
keeping channels in [0, 1]; ``compression.budget.allocation.allocate_channels`` turns a
finished roll-out into integer counts whose FLOPs meet the budget (at most the budget, short
by less than one channel step). So every action vector is a valid strategy, and the first
roll-out (equal preferences) is the uniform strategy.

Reward (``reward_policy``): ``accuracy`` (held-out accuracy, loss as a tie-break) or ``flops``
(AMC's ``-max(noise_tolerance, 1 - accuracy) * log(FLOPs)``).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from torch import nn

from compression.budget.allocation import CostModel, allocate_channels
from compression.budget.flops import ChannelFlops
from compression.budget.options import REWARD_POLICIES
from compression.graph.layers import PrunableLayer
from learners.search.preference_env import PreferenceEnv, normalised
from learners.search.search import accuracy_reward


def amc_features(model: nn.Module, layers: Sequence[PrunableLayer], flops: ChannelFlops,
                 min_ratio: float) -> np.ndarray:
    """(layers, 9) static features in [0, 1] (each column divided by its maximum)."""
    rows = []
    for index, layer in enumerate(layers):
        module = model.get_submodule(layer.name)
        cost = flops.costs[layer.name]
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            side = math.sqrt(cost.unit / kernel)
            stride = module.stride[0]
        else:
            kernel, side, stride = 1, 1.0, 1
        share = 2 * cost.unit * cost.in_channels * cost.out_channels / cost.groups / flops.total
        rows.append([index, cost.out_channels, cost.in_channels, side, side, stride, kernel,
                     share, 1.0 - min_ratio])
    return normalised(rows)


class ChannelEnv(PreferenceEnv):
    """Roll-outs choose kept channels for ``layers``; ``score(counts) -> {"accuracy", "loss"}``.
    The budget is counted by ``cost`` (default: the FLOPs; or a ``ChannelLatency`` table)."""

    def __init__(self, model: nn.Module, layers: Sequence[PrunableLayer], flops: ChannelFlops,
                 preserve: float, score: Callable[[dict], dict], min_ratio: float = 0.0,
                 multiple: int = 1, reward_policy: str = "accuracy",
                 noise_tolerance: float = 0.15, cost: CostModel | None = None) -> None:
        if reward_policy not in REWARD_POLICIES:
            raise ValueError(f"unknown reward policy {reward_policy!r}; valid: "
                             f"{', '.join(REWARD_POLICIES)}")
        self.layers, self.flops, self.preserve, self.score = list(layers), flops, preserve, score
        self.cost = cost if cost is not None else flops
        self.min_ratio, self.multiple = min_ratio, multiple
        self.reward_policy, self.noise_tolerance = reward_policy, noise_tolerance
        features = amc_features(model, self.layers, flops, min_ratio)
        # FLOPs shares weigh the running mean of the actions
        super().__init__(features, features[:, 7], preserve)
        self.counts(self.baseline_actions())  # an impossible budget fails here

    def counts(self, prefs: Sequence[float]) -> dict[str, int]:
        return allocate_channels({layer.name: a for layer, a in zip(self.layers, prefs)},
                                 self.layers, self.cost, self.preserve, self.min_ratio,
                                 self.multiple)

    def finish(self) -> tuple[float, dict]:
        counts = self.counts(self.prefs)
        scores = self.score(counts)
        flops = self.flops.flops(counts)
        if self.reward_policy == "accuracy":
            reward = accuracy_reward(scores)
        else:
            reward = -max(self.noise_tolerance, 1.0 - scores["accuracy"]) * math.log(flops)
        return reward, {"counts": [counts[layer.name] for layer in self.layers],
                        "prefs": list(self.prefs), "accuracy": scores["accuracy"],
                        "loss": scores["loss"], "flops_ratio": flops / self.flops.total,
                        "budget_ratio": self.cost.ratio(counts)}
