"""How many input channels each layer keeps: the protocols every channel learner can offer.

- ``uniform``: the same fraction of channels everywhere, matched to the FLOPs budget (or a
  fixed fraction when ``uniform_ratio`` is set);
- ``list``: per-layer fractions KEPT from a ratio file (``compression.ratio_list``);
- ``auto``: a DDPG search (``learners.rl.channel_env``) under the FLOPs budget, run by rank 0
  and broadcast. A roll-out's reward prunes a copy of the full model with the learner's own
  ``select`` on a few cached batches, thins it, optionally fine-tunes it a few Adam steps, and
  evaluates it on batches of the held-out split of the training set.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from torch import nn

from compression.channel_allocation import allocate_channels, amc_min_ratio, count_at
from compression.channel_flops import ChannelFlops
from compression.graph import PrunableLayer
from compression.ratio_list import read_ratio_list
from compression.thinning import thin
from learners.rl.channel_env import ChannelEnv

log = logging.getLogger("pocketflow")
PROTOCOLS = ("auto", "uniform", "list")


@dataclass
class StrategySettings:
    protocol: str = "uniform"
    preserve_ratio: float = 0.5       # FLOPs kept (uniform, auto)
    list_file: str = ""
    uniform_ratio: float = 0.0        # > 0: fraction of channels kept per layer (uniform)
    multiple: int = 1                 # kept counts rounded to a multiple of this
    min_ratio: float | None = None    # None: AMC's 1.5 * log10(preserve_ratio + 1)
    reward_policy: str = "accuracy"
    noise_tolerance: float = 0.15
    nb_rlouts: int = 200
    nb_rlouts_min: int = 50
    rl_nb_batches: int = 4            # calibration batches of a roll-out's selection
    rl_ft_steps: int = 0              # Adam steps on the thinned candidate before evaluation
    rl_lrn_rate: float = 1e-3
    nb_iters_feval: int = 10          # held-out batches of a roll-out's evaluation


def plan_counts(learner, full: nn.Module, layers: list[PrunableLayer],
                chosen: list[PrunableLayer], s: StrategySettings, report: dict) -> dict[str, int]:
    """``layer -> kept input channels`` for ``chosen`` (on every rank; collective for auto)."""
    if s.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {s.protocol!r}; valid: {', '.join(PROTOCOLS)}")
    flops = ChannelFlops(full, layers, learner.helper.input_shape)
    min_ratio = amc_min_ratio(s.preserve_ratio) if s.min_ratio is None else s.min_ratio
    names = [layer.name for layer in chosen]
    if s.protocol == "list":
        kept = read_ratio_list(s.list_file, names)
        counts = {layer.name: count_at(kept[layer.name], layer.in_channels, s.multiple)
                  for layer in chosen}
    elif s.protocol == "uniform" and s.uniform_ratio > 0:
        counts = {layer.name: count_at(s.uniform_ratio, layer.in_channels, s.multiple)
                  for layer in chosen}
    elif s.protocol == "uniform":
        counts = allocate_channels(dict.fromkeys(names, 1.0), chosen, flops, s.preserve_ratio,
                                   min_ratio, s.multiple)
    else:
        def make_env() -> ChannelEnv:
            return ChannelEnv(full, chosen, flops, s.preserve_ratio,
                              rollout_scorer(learner, full, layers, chosen, s), min_ratio,
                              s.multiple, s.reward_policy, s.noise_tolerance)

        best = learner.search_on_primary(make_env, s.nb_rlouts, s.nb_rlouts_min, report)
        counts = dict(zip(names, best["counts"]))
    report["strategy"] = {
        "protocol": s.protocol, "flops_ratio": flops.ratio(counts),
        "flops_ratio_target": s.preserve_ratio if s.protocol != "list" else None,
        "kept": {layer.name: [counts[layer.name], layer.in_channels] for layer in chosen}}
    log.info("strategy %s: FLOPs kept %.4f (target %s) | kept channels %s", s.protocol,
             flops.ratio(counts), report["strategy"]["flops_ratio_target"],
             [counts[name] for name in names])
    return counts


def rollout_scorer(learner, full: nn.Module, layers: list[PrunableLayer],
                   chosen: list[PrunableLayer], s: StrategySettings):
    """``counts -> {"accuracy", "loss"}`` of the pruned, thinned (and briefly tuned) model."""
    train, val = learner.search_batches(max(s.rl_nb_batches, s.rl_ft_steps), s.nb_iters_feval)
    calibration = [inputs for inputs, _ in train[:s.rl_nb_batches]]

    def score(counts: dict[str, int]) -> dict:
        pruned = copy.deepcopy(full)
        keep, _ = learner.select(full, pruned, chosen, counts, calibration)
        thinned, _ = thin(pruned, layers, keep)
        learner.short_finetune(thinned, train, s.rl_lrn_rate, s.rl_ft_steps)
        return learner.run_evaluation(thinned, loader=val, local=True)

    return score
