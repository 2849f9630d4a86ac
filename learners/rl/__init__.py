"""DDPG agent shared by the learners that search per-layer pruning ratios or bit widths."""
from __future__ import annotations

from learners.rl.agent import DdpgAgent, Transition, observe_rollout
from learners.rl.config import DdpgConfig

__all__ = ["DdpgAgent", "DdpgConfig", "Transition", "observe_rollout"]
