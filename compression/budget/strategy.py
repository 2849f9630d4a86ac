"""How many input channels each layer keeps: the protocols every channel learner can offer.

- ``uniform``: the same fraction of channels everywhere, matched to the budget (or a fixed
  fraction / fixed counts the caller gives);
- ``list``: per-layer fractions KEPT from a ratio file (``compression.budget.ratio_list``);
- ``auto`` (``optimal`` in the ``*_prune_ratio_prtl`` flags): a DDPG search under the budget.
  The search itself and the scoring of a strategy are the caller's (``StrategyHooks``): a
  learner runs the agent on rank 0 and scores a roll-out by pruning a copy of the full model
  with its own selection on a few cached batches, thinning it, optionally fine-tuning it a few
  Adam steps, and evaluating it on held-out batches. The ``nb_rerank`` best roll-outs and the
  uniform strategy are then re-scored with more calibration data and a longer fine-tune, and
  the best of them is kept (so the search never picks a strategy that does worse than uniform
  on that more faithful check).

The budget (``preserve_ratio``) is a fraction of the FLOPs (exact, ``ChannelFlops``) or of the
measured CPU latency at ``latency_batch`` (``budget_type="latency"``: a lookup table of
per-module timings guides the allocation, and the final strategy is settled on measurements of
the thinned model until it is within ``latency_tolerance`` of the budget; primary process
only, through ``StrategyHooks.on_primary``).

Residual groups (``groups``: readers that share a stream and keep the same channels) are
priced and reported at the group's count, as the learner keeps them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

from torch import nn

from compression.budget.allocation import (CostModel, allocate_channels, amc_min_ratio,
                                           count_at)
from compression.budget.counts import round_to_multiple
from compression.budget.flops import ChannelFlops
from compression.budget.netadapt import adapt
from compression.budget.latency import (ChannelLatency, measured_ratio, settle_budget,
                                        thin_to_counts)
from compression.budget.options import BUDGETS, PROTOCOLS, StrategyOptions
from compression.budget.ratio_list import read_ratio_list
from compression.graph.layers import PrunableLayer

log = logging.getLogger("pocketflow")
Scorer = Callable[[dict], dict]          # counts -> {"accuracy", "loss"}


@dataclass
class SearchProblem:
    """What a DDPG search over per-layer preferences is given (``StrategyHooks.search``):
    the layers, the budget and how it is counted, how counts are allocated from preferences,
    and how a strategy scores."""

    full: nn.Module
    chosen: list[PrunableLayer]
    flops: ChannelFlops
    preserve_ratio: float
    min_ratio: float
    multiple: int
    options: StrategyOptions            # reward_policy, noise_tolerance, nb_rlouts, ...
    keep_top: int                       # best roll-outs returned (for the re-rank)
    # built where the search runs (the primary process): the budget's cost model (FLOPs or a
    # latency table) and the roll-outs' scorer
    cost: Callable[[], CostModel]
    scorer: Callable[[], Scorer]


def _here(fn):
    return fn()


@dataclass
class StrategyHooks:
    """What a strategy needs from its caller. ``on_primary(fn)``: run ``fn`` on the primary
    process and give every process its result. ``search(problem) -> (best, record)``: the DDPG
    search (``best["prefs"]``, ``best["top"]``: the ``keep_top`` best roll-outs' infos;
    ``record``: the report's ``search`` section). ``scorer(nb_batches, ft_steps) -> score``:
    how a strategy's counts score, calibrated on ``nb_batches`` batches and fine-tuned
    ``ft_steps`` steps. The last two are needed by the ``auto`` protocol only."""

    on_primary: Callable = _here
    search: Callable[[SearchProblem], tuple[dict, dict]] | None = None
    scorer: Callable[[int, int], Scorer] | None = None


def at_group_counts(counts: dict[str, int], flops: ChannelFlops,
                    multiple: int = 1) -> dict[str, int]:
    """``counts`` with every reader of a residual group of ``flops`` at the group's count
    (``ChannelFlops.group_counts``: what the learner keeps), rounded to ``multiple``
    (``round_to_multiple``): readers the allocation stepped up apart would otherwise give the
    stream a count between multiples. A group's readers read nothing but its channels.
    Readers of whole blocks (a grouped conv's groups) get the count their selection keeps
    (``ChannelFlops.at_blocks``)."""
    counts = flops.at_blocks(counts)
    grouped = {name: round_to_multiple(count, flops.layers[name].in_channels, multiple)
               for name, count in flops.group_counts(counts).items()}
    return {**counts, **grouped}


@dataclass
class _Plan:
    """One strategy being planned: the model, its layers, the options and the fixed values."""

    full: nn.Module
    layers: list[PrunableLayer]
    chosen: list[PrunableLayer]
    opts: StrategyOptions
    input_shape: Sequence[int]
    flops: ChannelFlops
    multiple: int
    preserve: float
    hooks: StrategyHooks
    record: dict = field(default_factory=dict)
    _latency: ChannelLatency | None = None

    @property
    def min_ratio(self) -> float:
        return self.opts.min_preserve_ratio or amc_min_ratio(self.preserve)

    def cost_model(self) -> CostModel:
        """The FLOPs (every rank), or a latency table (built once, on the primary only)."""
        if self.opts.budget_type == "flops":
            return self.flops
        if self._latency is None:
            table = ChannelLatency(self.full, self.flops, self.chosen, self.input_shape,
                                   self.opts.latency_batch, self.opts.latency_threads or None,
                                   self.multiple)
            smallest = {layer.name: count_at(self.min_ratio, layer.in_channels, self.multiple)
                        for layer in self.chosen}
            table.calibrate(smallest, self.measure(smallest))
            self._latency = table
        return self._latency

    def measure(self, counts: dict) -> float:
        """Measured ratio of the strategy's architecture; residual groups at their group's
        count, as the learner will thin them."""
        counts = at_group_counts(counts, self.flops, self.multiple)
        return measured_ratio(self.full, thin_to_counts(self.full, self.layers, counts,
                                                        self.flops.groups),
                              self.input_shape, self.opts.latency_batch,
                              self.opts.latency_threads or None)

    def allocate(self, prefs: Sequence[float], target: float) -> dict[str, int]:
        return allocate_channels({layer.name: p for layer, p in zip(self.chosen, prefs)},
                                 self.chosen, self.cost_model(), target, self.min_ratio,
                                 self.multiple)

    def budgeted(self) -> dict[str, int]:
        """Counts of the uniform, searched or adapted strategy that meet the budget."""
        self.record["budget_target"] = self.preserve
        if self.opts.protocol == "netadapt":
            return self.hooks.on_primary(self.adapted)
        prefs = [1.0] * len(self.chosen)
        if self.opts.protocol == "auto":
            prefs = self.searched()
        if self.opts.budget_type == "flops":
            return self.allocate(prefs, self.preserve)
        return self.settled(prefs)

    def searched(self) -> list[float]:
        """The preferences of the DDPG search (re-ranked with the uniform ones)."""
        hooks, opts = self.hooks, self.opts
        if hooks.search is None or hooks.scorer is None:
            raise ValueError("the auto protocol needs StrategyHooks.search and .scorer")
        problem = SearchProblem(self.full, self.chosen, self.flops, self.preserve,
                                self.min_ratio, self.multiple, opts, max(1, opts.nb_rerank),
                                self.cost_model,
                                lambda: hooks.scorer(opts.rl_nb_batches, opts.rl_ft_steps))
        best, self.record["search"] = hooks.search(problem)
        if opts.nb_rerank <= 0:
            return best["prefs"]
        return hooks.on_primary(lambda: self.reranked([info["prefs"] for info in best["top"]]))

    def reranked(self, candidates: list) -> list[float]:
        """The preferences among ``candidates`` (plus uniform) that score best with twice the
        calibration batches and ``rerank_ft_steps`` of fine-tuning (primary process only)."""
        uniform = [1.0] * len(self.chosen)
        unique = []
        for prefs in [uniform] + candidates:
            if prefs not in unique:
                unique.append(prefs)
        score = self.hooks.scorer(2 * self.opts.rl_nb_batches, self.opts.rerank_ft_steps)
        scored = []
        for prefs in unique:
            result = score(self.allocate(prefs, self.preserve))
            scored.append({"uniform": prefs == uniform, "accuracy": result["accuracy"],
                           "loss": result["loss"]})
            log.info("re-rank %d/%d%s: accuracy %.4f loss %.4f", len(scored), len(unique),
                     " (uniform)" if prefs == uniform else "", result["accuracy"],
                     result["loss"])
        index = max(range(len(unique)), key=lambda i: (scored[i]["accuracy"], -scored[i]["loss"]))
        self.record["rerank"] = {"candidates": scored, "chosen": index}
        return unique[index]

    def adapted(self) -> dict[str, int]:
        """The NetAdapt allocation (``compression.budget.netadapt``), scored as a search's
        roll-outs are; under a latency budget settled on measurements (primary process)."""
        if self.hooks.scorer is None:
            raise ValueError("the netadapt protocol needs StrategyHooks.scorer")
        opts, latency = self.opts, self.opts.budget_type == "latency"
        counts, found = adapt(
            self.chosen, self.flops.groups, self.cost_model(),
            lambda counts: at_group_counts(counts, self.flops, self.multiple),
            self.hooks.scorer(opts.rl_nb_batches, opts.rl_ft_steps), self.preserve,
            steps=opts.netadapt_steps, min_ratio=self.min_ratio, multiple=self.multiple,
            measure=self.measure if latency else None, tolerance=opts.latency_tolerance)
        self.record["search"] = found
        if latency:
            trials = found.get("measured") or [{"measured": self.measure(counts)}]
            measured = trials[-1]["measured"]
            self.record["latency"] = {
                "measured_ratio": measured, "batch": opts.latency_batch,
                "within_tolerance": measured <= self.preserve * (1 + opts.latency_tolerance),
                "table_ratio": self.cost_model().ratio(counts),
                "unpruned_ms": self.cost_model().total}
        return counts

    def settled(self, prefs: list[float]) -> dict[str, int]:
        """Counts whose measured latency ratio is within tolerance of the budget."""
        opts = self.opts

        def settle() -> dict:
            counts, trials = settle_budget(lambda target: self.allocate(prefs, target),
                                           self.measure, self.preserve, opts.latency_tolerance)
            return {"counts": counts, "trials": trials,
                    "table_ratio": self.cost_model().ratio(counts),
                    "table_ms": self.cost_model().total}

        settled = self.hooks.on_primary(settle)
        measured = min((t["measured"] for t in settled["trials"]),
                       key=lambda m: abs(m - self.preserve))
        within = abs(measured - self.preserve) <= opts.latency_tolerance * self.preserve
        self.record["latency"] = {"measured_ratio": measured, "within_tolerance": within,
                                  "batch": opts.latency_batch, "trials": settled["trials"],
                                  "table_ratio": settled["table_ratio"],
                                  "unpruned_ms": settled["table_ms"]}
        if not within:
            log.warning("latency budget %.3f: the closest strategy measured %.3f (tolerance "
                        "%.0f%%)", self.preserve, measured, 100 * opts.latency_tolerance)
        return at_group_counts(settled["counts"], self.flops, self.multiple)


def plan_counts(full: nn.Module, layers: Sequence[PrunableLayer], chosen: Sequence[PrunableLayer],
                opts: StrategyOptions, input_shape: Sequence[int], *, multiple: int = 1,
                groups: Sequence = (), uniform_ratio: float = 0.0,
                uniform_counts: dict[str, int] | None = None, preserve_ratio: float | None = None,
                hooks: StrategyHooks | None = None) -> tuple[dict[str, int], dict]:
    """``(layer -> kept input channels for chosen, report sections)``; on every process
    (collective for ``auto``). The sections are ``strategy`` (and ``search`` for ``auto``).

    ``multiple``: kept counts rounded to it (``round_to_multiple``); ``groups``: residual
    groups kept at one count (``compression.selection.residual_groups``); ``uniform_ratio`` >
    0 or ``uniform_counts``: the fixed fraction or counts of the uniform protocol;
    ``preserve_ratio``: the budget when not the options' own."""
    if opts.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {opts.protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if opts.budget_type not in BUDGETS:
        raise ValueError(f"unknown budget {opts.budget_type!r}; valid: {', '.join(BUDGETS)}")
    layers, chosen = list(layers), list(chosen)
    flops = ChannelFlops(full, layers, input_shape, list(groups))
    preserve = opts.preserve_ratio if preserve_ratio is None else preserve_ratio
    plan = _Plan(full, layers, chosen, opts, input_shape, flops, multiple, preserve,
                 hooks or StrategyHooks(), {"protocol": opts.protocol, "budget": opts.budget_type})
    names = [layer.name for layer in chosen]
    if opts.protocol == "list":
        kept = read_ratio_list(opts.prune_list_file, names)
        counts = {layer.name: count_at(kept[layer.name], layer.in_channels, multiple)
                  for layer in chosen}
    elif opts.protocol == "uniform" and uniform_counts:
        counts = {name: uniform_counts[name] for name in names}
    elif opts.protocol == "uniform" and uniform_ratio > 0:
        counts = {layer.name: count_at(uniform_ratio, layer.in_channels, multiple)
                  for layer in chosen}
    else:
        counts = plan.budgeted()
    counts = at_group_counts(counts, flops)   # what the learner keeps
    record, sections = plan.record, {}
    if "search" in record:
        sections["search"] = record.pop("search")
    sections["strategy"] = {
        "budget_target": None, **record, "flops_ratio": flops.ratio(counts),
        "kept": {layer.name: [counts[layer.name], layer.in_channels] for layer in chosen}}
    log.info("strategy %s: FLOPs kept %.4f (%s budget %s) | kept channels %s", opts.protocol,
             flops.ratio(counts), opts.budget_type, sections["strategy"]["budget_target"],
             [counts[name] for name in names])
    return counts, sections
