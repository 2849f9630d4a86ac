"""NetAdapt-style allocation (Yang et al., ECCV 2018): shrink, one step at a time, the unit
whose shrinking loses the least accuracy for the same saving, until the budget is met.

A *unit* is a residual group (its readers keep one count: ``prune_residual``) or a chosen layer
outside every group. Each iteration asks for an equal share of the way to the budget
(``(1 - budget) / steps`` of the unpruned cost); every unit proposes the fewest channels it
must give up for the cost model (FLOPs, or the measured per-module latency table of
``compression.budget.latency``) to predict that saving, each proposal is scored by the
caller's scorer (the learner's selection on a few batches, thinned, optionally tuned, then
evaluated on held-out batches), and the best-scoring proposal is kept. Where a narrow layer's
cost follows its channels and a wide layer's its FLOPs, the table makes the narrow one the
cheap place to take time from, which a FLOPs-driven allocation cannot see.

Under a latency budget the result is measured (the thinned architecture against the unpruned
model, alternating rounds); while the measurement is above the budget by more than the
tolerance, the table's target is lowered by the measured error and the iterations go on.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

from compression.budget.allocation import BudgetError, CostModel, count_at
from compression.graph.layers import PrunableLayer

log = logging.getLogger("pocketflow")
Counts = dict[str, int]


def step_down(count: int, in_channels: int, multiple: int) -> int:
    """The next smaller count a layer may keep: one channel, a ``multiple`` (aligned), or, for
    a SIMD block ``-b``, one channel up to one block and whole blocks above it."""
    if multiple < 0:
        block = -multiple
        if count <= block or in_channels <= block:
            return count - 1
        return max(block, ((count - 1) // block) * block)
    if multiple > 1 and in_channels >= multiple:
        return max(multiple, ((count - 1) // multiple) * multiple) if count > multiple else count
    return count - 1


def units_of(chosen: Sequence[PrunableLayer], groups: Sequence) -> list[list[str]]:
    """The readers each unit sets at once: every residual group whose readers are all chosen,
    then every other chosen layer alone."""
    names = {layer.name for layer in chosen}
    units = [list(group.readers) for group in groups if set(group.readers) <= names]
    grouped = {name for unit in units for name in unit}
    return units + [[layer.name] for layer in chosen if layer.name not in grouped]


def adapt(chosen: Sequence[PrunableLayer], groups: Sequence, cost: CostModel,
          harmonise: Callable[[Counts], Counts], score: Callable[[Counts], dict],
          budget: float, *, steps: int = 8, min_ratio: float = 0.0, multiple: int = 1,
          measure: Callable[[Counts], float] | None = None, tolerance: float = 0.05,
          max_iterations: int = 64) -> tuple[Counts, dict]:
    """``(counts, record)``: per-layer kept input channels whose cost ratio (predicted by
    ``cost``; with ``measure``, measured) is at most ``budget``. ``harmonise(counts)`` puts each
    group's readers at the group's count (what the learner keeps); ``score(counts)`` returns
    ``{"accuracy", "loss"}``. ``record["iterations"]`` lists every chosen step."""
    if not 0.0 < budget <= 1.0:
        raise BudgetError(f"the {cost.unit_name} budget must be in (0, 1], got {budget}")
    width = {layer.name: layer.in_channels for layer in chosen}
    floor = {name: count_at(min_ratio, c, multiple) for name, c in width.items()}
    counts: Counts = dict(width)
    units = units_of(chosen, groups)
    delta = max(1e-3, (1.0 - budget) / max(1, steps))
    target_budget, iterations, trials = budget, [], []

    def predicted(candidate: Counts) -> float:
        return cost.ratio(harmonise(candidate))

    current = predicted(counts)
    for _ in range(max_iterations):
        if current <= target_budget:
            if measure is None:
                break
            measured = measure(harmonise(counts))
            trials.append({"table_target": target_budget, "predicted": current,
                           "measured": measured})
            log.info("netadapt: %s predicted %.3f, measured %.3f (budget %.3f)",
                     cost.unit_name, current, measured, budget)
            if measured <= budget * (1.0 + tolerance):
                break
            target_budget = current * budget / measured
        goal = max(target_budget, current - delta)
        proposals = [p for unit in units
                     if (p := _proposal(counts, current, unit, width, floor, multiple, predicted,
                                        goal))]
        if not proposals:
            raise BudgetError(
                f"a {cost.unit_name} budget of {budget:.3f} cannot be met: every unit is at its "
                f"minimum ({min_ratio:.3f} of its channels) at {current:.3f}; prune more "
                "layers (skip rules), lower the minimum ratio or raise the budget")
        scored = []
        for unit, candidate, ratio in proposals:
            result = score(harmonise(candidate))
            scored.append((result["accuracy"], -result["loss"], unit, candidate, ratio))
        accuracy, neg_loss, unit, counts, current = max(scored, key=lambda s: (s[0], s[1]))
        iterations.append({"unit": unit, "count": counts[unit[0]], "predicted": current,
                           "accuracy": accuracy, "loss": -neg_loss, "proposals": len(scored)})
        log.info("netadapt step %d: %s -> %d channels, %s predicted %.3f, accuracy %.4f "
                 "(best of %d)", len(iterations), unit[0] if len(unit) == 1 else
                 f"group of {len(unit)}", counts[unit[0]], cost.unit_name, current, accuracy,
                 len(scored))
    else:
        log.warning("netadapt: stopped after %d iterations at %.3f", max_iterations, current)
    record = {"method": "netadapt", "steps": steps, "iterations": iterations}
    if trials:
        record["measured"] = trials
    return harmonise(counts), record


def _proposal(counts: Mapping[str, int], before: float, unit: list[str], width: Mapping[str, int],
              floor: Mapping[str, int], multiple: int, predicted: Callable[[Counts], float],
              goal: float) -> tuple[list[str], Counts, float] | None:
    """The largest smaller count of ``unit`` predicted at or below ``goal``; else the unit's
    floor when that saves anything and nothing else can (None when it cannot shrink);
    ``before``: the prediction for ``counts``, which every unit of an iteration shares."""
    name = unit[0]
    count = counts[name]
    candidate, ratio = dict(counts), before
    while True:
        smaller = step_down(count, width[name], multiple)
        if smaller < floor[name] or smaller < 1 or smaller == count:
            break
        count = smaller
        candidate = {**counts, **dict.fromkeys(unit, count)}
        ratio = predicted(candidate)
        if ratio <= goal:
            return unit, candidate, ratio
    if ratio < before - 1e-9:
        return unit, candidate, ratio
    return None
