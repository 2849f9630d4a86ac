"""The roll-out loop every DDPG strategy search shares (per-layer ratios or bit widths).

A learner describes its problem as a ``SearchEnv``: one step per layer, a state vector, the
range an action may take at that step given the previous ones (how budgets are enforced,
AMC-style), and a reward for a finished roll-out. ``run_search`` asks the agent for an action
per layer, clips it into the allowed range, scores the roll-out, feeds the agent and keeps
the best strategy. An environment with ``baseline_actions()`` (e.g. equal preferences: the
uniform strategy) has its first roll-out play those actions instead of the agent's, so the
search never returns a strategy that scores worse than the baseline on its own reward, and the
agent's replay buffer starts with a known-good example. An environment with
``beats_baseline(info, baseline_info)`` also decides whether the best roll-out's advantage is
real: when it is not (e.g. the same held-out accuracy, a lower loss only), the search returns
the baseline (``result.kept_baseline``). With a checkpoint path the search
saves itself after every roll-out and an interrupted search resumes where it stopped.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from learners.search.agent import DdpgAgent, observe_rollout
from learners.search.config import DdpgConfig
from utils.checkpoint import save_file

log = logging.getLogger("pocketflow")

LOSS_TIE_BREAK = 0.01


def accuracy_reward(scores: dict) -> float:
    """Held-out accuracy with the cross-entropy as a tie-break: on small validation sets many
    strategies reach the same accuracy, and the loss still tells them apart."""
    return float(scores["accuracy"]) - LOSS_TIE_BREAK * float(scores["loss"])


class SearchEnv(Protocol):
    nb_steps: int       # decisions per roll-out (one per layer)
    state_dim: int
    a_min: float
    a_max: float

    def reset(self) -> None: ...
    def observation(self, step: int) -> np.ndarray: ...
    def bounds(self, step: int) -> tuple[float, float]: ...
    def take(self, step: int, action: float) -> None: ...
    def finish(self) -> tuple[float, dict]:
        """Reward of the finished roll-out and its strategy (plain, storable values)."""
    # optional: def baseline_actions(self) -> list[float]: the first roll-out's actions


@dataclass
class SearchResult:
    best_reward: float
    best: dict
    history: list = field(default_factory=list)  # [reward per roll-out]
    seconds_per_rollout: float = 0.0
    top: list = field(default_factory=list)      # [(reward, info)] of the best roll-outs, best first
    baseline: tuple | None = None                # (reward, info) of the baseline roll-out
    kept_baseline: bool = False                  # the best roll-out did not beat it for real


def _rollout(env: SearchEnv, agent: DdpgAgent,
             fixed: list[float] | None = None) -> tuple[list, list, float, dict]:
    env.reset()
    states, actions = [], []
    for step in range(env.nb_steps):
        state = env.observation(step)
        low, high = env.bounds(step)
        proposed = fixed[step] if fixed is not None else agent.act(state)[0]
        action = float(np.clip(proposed, low, high))
        env.take(step, action)
        states.append(state)
        actions.append(np.array([action], dtype=np.float32))
    reward, info = env.finish()
    return states, actions, reward, info


def run_search(env: SearchEnv, cfg: DdpgConfig, nb_rlouts: int, nb_rlouts_min: int, seed: int = 0,
               checkpoint_path: str | None = None, resumed: dict | None = None,
               meta: dict | None = None, keep_top: int = 1) -> SearchResult:
    """``nb_rlouts`` roll-outs; the replay buffer holds ``nb_rlouts_min`` roll-outs and the agent
    trains once it is full (the first roll-outs explore at the initial noise). ``keep_top``:
    how many of the best roll-outs ``result.top`` keeps (e.g. to re-rank them more carefully).

    After every roll-out the search state goes to ``checkpoint_path`` (with ``meta``);
    ``resumed``: such a state, already loaded and checked, to continue from."""
    agent = DdpgAgent(env.state_dim, 1, env.a_min, env.a_max, cfg,
                      buffer_size=env.nb_steps * nb_rlouts_min, nb_rlouts=nb_rlouts, seed=seed)
    result = SearchResult(best_reward=-float("inf"), best={})
    start_rollout = 0
    if resumed is not None:
        saved = resumed
        agent.load_state_dict(saved["agent"])
        result = SearchResult(saved["best_reward"], saved["best"], list(saved["history"]),
                              saved["seconds_per_rollout"], [tuple(t) for t in saved.get("top", [])],
                              tuple(saved["baseline"]) if saved.get("baseline") else None)
        start_rollout = int(saved["rollout"])
        log.info("search resumed at roll-out %d/%d from %s", start_rollout, nb_rlouts,
                 checkpoint_path)
    spent = result.seconds_per_rollout * start_rollout
    for index in range(start_rollout, nb_rlouts):
        began = time.perf_counter()
        baseline = getattr(env, "baseline_actions", None)
        fixed = baseline() if index == 0 and baseline is not None else None
        states, actions, reward, info = _rollout(env, agent, fixed)
        if fixed is not None:
            result.baseline = (reward, info)
        observe_rollout(agent, states, actions, reward)
        losses = agent.train()
        if reward > result.best_reward:
            result.best_reward, result.best = reward, info
        result.top = sorted(result.top + [(reward, info)], key=lambda t: -t[0])[:keep_top]
        result.history.append(reward)
        spent += time.perf_counter() - began
        result.seconds_per_rollout = spent / (index + 1)
        log.info("roll-out %d/%d | reward %.4f | best %.4f | %.1f s%s", index + 1, nb_rlouts,
                 reward, result.best_reward, time.perf_counter() - began,
                 f" | critic loss {losses['critic_loss']:.4f}" if losses else "")
        if checkpoint_path:
            save_file(checkpoint_path, "search", {
                "meta": meta or {}, "agent": agent.state_dict(), "rollout": index + 1,
                "best_reward": result.best_reward,
                "best": result.best, "history": result.history,
                "seconds_per_rollout": result.seconds_per_rollout,
                "top": [list(t) for t in result.top],
                "baseline": list(result.baseline) if result.baseline else None})
    return _guard_baseline(env, result)


def _guard_baseline(env: SearchEnv, result: SearchResult) -> SearchResult:
    """The baseline instead of a best roll-out whose advantage the environment deems noise."""
    beats = getattr(env, "beats_baseline", None)
    if beats is None or result.baseline is None or result.best is result.baseline[1]:
        return result
    if not beats(result.best, result.baseline[1]):
        log.info("best roll-out (reward %.4f) does not beat the baseline (reward %.4f) by the "
                 "required margin: keeping the baseline", result.best_reward, result.baseline[0])
        result.best_reward, result.best = result.baseline
        result.kept_baseline = True
    return result
