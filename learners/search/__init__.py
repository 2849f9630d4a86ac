"""The DDPG strategy search every searching learner shares (per-layer sparsity, channels or
bit widths).

    best = run_search(env, DdpgConfig(), nb_rlouts=200, nb_rlouts_min=50)

A learner describes its problem as a ``PreferenceEnv`` (one step per layer, the action is the
layer's relative preference; a finished roll-out becomes a strategy that meets the budget)
and ``run_search`` plays roll-outs, feeds the agent and keeps the best. The environments live
with their learners: ``learners.channel.search_env``, ``learners.quant.search_env``,
``learners.weight_sparse.search_env``.

Modules: ``agent`` (DDPG, PocketFlow's layouts), ``networks``, ``noise``, ``replay_buffer``,
``config`` (``--ddpg_*``), ``preference_env`` (the one environment shape), ``search`` (the
roll-out loop, checkpointed and resumable).
"""
from __future__ import annotations

from learners.search.agent import DdpgAgent, Transition, observe_rollout
from learners.search.config import DdpgConfig

__all__ = ["DdpgAgent", "DdpgConfig", "Transition", "observe_rollout"]
