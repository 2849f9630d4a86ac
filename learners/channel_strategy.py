"""How many input channels each layer keeps: the protocols every channel learner can offer.

- ``uniform``: the same fraction of channels everywhere, matched to the budget (or a fixed
  fraction / fixed counts when the learner gives them);
- ``list``: per-layer fractions KEPT from a ratio file (``compression.ratio_list``);
- ``auto`` (``optimal`` in the ``*_prune_ratio_prtl`` flags): a DDPG search
  (``learners.rl.channel_env``) under the budget, run by rank 0 and broadcast. A roll-out's
  reward prunes a copy of the full model with the learner's ``select_rollout`` on a few
  cached batches, thins it, optionally fine-tunes it a few Adam steps, and evaluates it on
  batches of the held-out split of the training set. The ``nb_rerank`` best roll-outs and the
  uniform strategy are then re-scored with more calibration data and a longer fine-tune, and
  the best of them is kept (so the search never picks a strategy that does worse than uniform
  on that more faithful check).

The budget (``preserve_ratio``) is a fraction of the FLOPs (exact, ``ChannelFlops``) or of the
measured CPU latency at ``latency_batch`` (``budget="latency"``: a lookup table of per-module
timings guides the allocation, and the final strategy is settled on measurements of the
thinned model until it is within ``latency_tolerance`` of the budget; primary process only,
broadcast).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

from torch import nn

from compression.channel_allocation import allocate_channels, amc_min_ratio, count_at
from compression.channel_flops import ChannelFlops
from compression.channel_selection import round_to_multiple
from compression.channel_latency import (ChannelLatency, measured_ratio, settle_budget,
                                         thin_to_counts)
from compression.graph import PrunableLayer
from compression.ratio_list import read_ratio_list
from compression.residual_groups import residual_groups
from compression.thinning import thin
from learners.rl.channel_env import ChannelEnv

log = logging.getLogger("pocketflow")
PROTOCOLS = ("auto", "uniform", "list")
BUDGETS = ("flops", "latency")


@dataclass
class StrategySettings:
    protocol: str = "uniform"
    preserve_ratio: float = 0.5       # budget kept (uniform, auto): FLOPs or latency fraction
    budget: str = "flops"             # what the budget counts: flops | latency
    list_file: str = ""
    uniform_ratio: float = 0.0        # > 0: fraction of channels kept per layer (uniform)
    uniform_counts: dict = field(default_factory=dict)  # fixed counts of the uniform protocol
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
    nb_rerank: int = 3                # best roll-outs re-scored (with uniform) after the search
    rerank_ft_steps: int = 50         # Adam steps of a re-scored candidate
    latency_batch: int = 1
    latency_threads: int = 0          # 0: torch's current setting
    latency_tolerance: float = 0.05   # measured latency ratio within this fraction of the budget


def coupled_groups(learner, layers: list[PrunableLayer], chosen: list[PrunableLayer]) -> list:
    """The residual groups the learner prunes as one (``prune_residual``), else none: the
    FLOPs of a strategy count their channels at the group's count."""
    if not getattr(learner.cfg, "prune_residual", False):
        return []
    return residual_groups(layers, chosen)


def at_group_counts(counts: dict[str, int], flops: ChannelFlops,
                    multiple: int = 1) -> dict[str, int]:
    """``counts`` with every reader of a residual group of ``flops`` at the group's count
    (``ChannelFlops.group_counts``: what the learner keeps), rounded to ``multiple``
    (``round_to_multiple``): readers the allocation stepped up apart would otherwise give the
    stream a count between multiples. A group's readers read nothing but its channels."""
    grouped = {name: round_to_multiple(count, flops.layers[name].in_channels, multiple)
               for name, count in flops.group_counts(counts).items()}
    return {**counts, **grouped}


def plan_counts(learner, full: nn.Module, layers: list[PrunableLayer],
                chosen: list[PrunableLayer], s: StrategySettings, sections: dict) -> dict[str, int]:
    """``layer -> kept input channels`` for ``chosen`` (on every rank; collective for auto);
    the report's ``strategy`` (and ``search``) sections go into ``sections``."""
    if s.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {s.protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if s.budget not in BUDGETS:
        raise ValueError(f"unknown budget {s.budget!r}; valid: {', '.join(BUDGETS)}")
    flops = ChannelFlops(full, layers, learner.ctx.helper.input_shape,
                         coupled_groups(learner, layers, chosen))
    names = [layer.name for layer in chosen]
    strategy: dict = {"protocol": s.protocol, "budget": s.budget}
    if s.protocol == "list":
        kept = read_ratio_list(s.list_file, names)
        counts = {layer.name: count_at(kept[layer.name], layer.in_channels, s.multiple)
                  for layer in chosen}
    elif s.protocol == "uniform" and s.uniform_counts:
        counts = {name: s.uniform_counts[name] for name in names}
    elif s.protocol == "uniform" and s.uniform_ratio > 0:
        counts = {layer.name: count_at(s.uniform_ratio, layer.in_channels, s.multiple)
                  for layer in chosen}
    else:
        counts = _budgeted(learner, full, layers, chosen, flops, s, strategy)
    counts = at_group_counts(counts, flops)   # what the learner keeps
    if "search" in strategy:
        sections["search"] = strategy.pop("search")
    sections["strategy"] = {
        "budget_target": None, **strategy, "flops_ratio": flops.ratio(counts),
        "kept": {layer.name: [counts[layer.name], layer.in_channels] for layer in chosen}}
    log.info("strategy %s: FLOPs kept %.4f (%s budget %s) | kept channels %s", s.protocol,
             flops.ratio(counts), s.budget, sections["strategy"]["budget_target"],
             [counts[name] for name in names])
    return counts


def _budgeted(learner, full: nn.Module, layers: list[PrunableLayer], chosen: list[PrunableLayer],
              flops: ChannelFlops, s: StrategySettings, strategy: dict) -> dict[str, int]:
    """Counts of the uniform or searched strategy that meet the budget."""
    min_ratio = amc_min_ratio(s.preserve_ratio) if s.min_ratio is None else s.min_ratio
    names = [layer.name for layer in chosen]
    shape = learner.ctx.helper.input_shape
    strategy["budget_target"] = s.preserve_ratio
    cache: dict = {}

    def cost_model():
        """The FLOPs (every rank), or a latency table (built once, on the primary only)."""
        if s.budget == "flops":
            return flops
        if "latency" not in cache:
            table = ChannelLatency(full, flops, chosen, shape, s.latency_batch,
                                   s.latency_threads or None, s.multiple)
            smallest = {layer.name: count_at(min_ratio, layer.in_channels, s.multiple)
                        for layer in chosen}
            table.calibrate(smallest, measure(smallest))
            cache["latency"] = table
        return cache["latency"]

    def measure(counts: dict) -> float:
        """Measured ratio of the strategy's architecture; residual groups (prune_residual) at
        their group's count, as the learner will thin them."""
        counts = at_group_counts(counts, flops, s.multiple)
        return measured_ratio(full, thin_to_counts(full, layers, counts, flops.groups), shape,
                              s.latency_batch, s.latency_threads or None)

    def allocate(prefs, target: float) -> dict[str, int]:
        return allocate_channels(dict(zip(names, prefs)), chosen, cost_model(), target,
                                 min_ratio, s.multiple)

    prefs = [1.0] * len(chosen)
    if s.protocol == "auto":
        def make_env() -> ChannelEnv:
            return ChannelEnv(full, chosen, flops, s.preserve_ratio,
                              rollout_scorer(learner, full, layers, chosen, s), min_ratio,
                              s.multiple, s.reward_policy, s.noise_tolerance, cost_model())

        best, strategy["search"] = learner.ctx.search(make_env, learner.cfg.ddpg, s.nb_rlouts,
                                                      s.nb_rlouts_min, keep_top=max(1, s.nb_rerank))
        prefs = best["prefs"]
        if s.nb_rerank > 0:
            prefs = learner.ctx.on_primary(lambda: _rerank(
                learner, full, layers, chosen, s, [info["prefs"] for info in best["top"]],
                allocate, strategy))
    if s.budget == "flops":
        return allocate(prefs, s.preserve_ratio)

    def settle() -> dict:
        counts, trials = settle_budget(lambda target: allocate(prefs, target), measure,
                                       s.preserve_ratio, s.latency_tolerance)
        return {"counts": counts, "trials": trials,
                "table_ratio": cost_model().ratio(counts), "table_ms": cost_model().total}

    settled = learner.ctx.on_primary(settle)
    measured = min((t["measured"] for t in settled["trials"]),
                   key=lambda m: abs(m - s.preserve_ratio))
    within = abs(measured - s.preserve_ratio) <= s.latency_tolerance * s.preserve_ratio
    strategy["latency"] = {"measured_ratio": measured, "within_tolerance": within,
                           "batch": s.latency_batch, "trials": settled["trials"],
                           "table_ratio": settled["table_ratio"],
                           "unpruned_ms": settled["table_ms"]}
    if not within:
        log.warning("latency budget %.3f: the closest strategy measured %.3f (tolerance %.0f%%)",
                    s.preserve_ratio, measured, 100 * s.latency_tolerance)
    return at_group_counts(settled["counts"], flops, s.multiple)


def _rerank(learner, full, layers, chosen, s: StrategySettings, candidates: list, allocate,
            strategy: dict) -> list[float]:
    """The preferences among ``candidates`` (plus uniform) that score best with more
    calibration batches and ``rerank_ft_steps`` of fine-tuning (primary process only)."""
    uniform = [1.0] * len(chosen)
    unique = []
    for prefs in [uniform] + candidates:
        if prefs not in unique:
            unique.append(prefs)
    careful = copy.copy(s)
    careful.rl_nb_batches, careful.rl_ft_steps = 2 * s.rl_nb_batches, s.rerank_ft_steps
    score = rollout_scorer(learner, full, layers, chosen, careful)
    scored = []
    for prefs in unique:
        result = score(allocate(prefs, s.preserve_ratio))
        scored.append({"uniform": prefs == uniform, "accuracy": result["accuracy"],
                       "loss": result["loss"]})
        log.info("re-rank %d/%d%s: accuracy %.4f loss %.4f", len(scored), len(unique),
                 " (uniform)" if prefs == uniform else "", result["accuracy"], result["loss"])
    index = max(range(len(unique)), key=lambda i: (scored[i]["accuracy"], -scored[i]["loss"]))
    strategy["rerank"] = {"candidates": scored, "chosen": index}
    return unique[index]


def rollout_scorer(learner, full: nn.Module, layers: list[PrunableLayer],
                   chosen: list[PrunableLayer], s: StrategySettings):
    """``counts -> {"accuracy", "loss"}`` of the pruned, thinned (and briefly tuned) model."""
    ctx = learner.ctx
    train, val = ctx.search_batches(max(s.rl_nb_batches, s.rl_ft_steps), s.nb_iters_feval)
    calibration = [inputs for inputs, _ in train[:s.rl_nb_batches]]

    def score(counts: dict[str, int]) -> dict:
        pruned, keep, _ = learner.select_all(full, layers, chosen, counts, calibration,
                                             rollout=True)
        thinned, _ = thin(pruned, layers, keep)
        ctx.short_finetune(thinned, train, s.rl_lrn_rate, s.rl_ft_steps)
        return ctx.evaluate(thinned, loader=val, local=True)

    return score
