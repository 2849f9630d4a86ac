"""NetAdapt allocation: steps, the unit it shrinks, the budget held, measured settling."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from compression.budget.allocation import BudgetError
from compression.budget.netadapt import adapt, step_down, units_of


class LinearCost:
    """ratio = weighted mean of kept fractions (a stand-in for a FLOPs / latency model)."""
    unit_name = "cost"

    def __init__(self, widths: dict, weights: dict) -> None:
        self.widths, self.weights, self.total = widths, weights, 1.0

    def ratio(self, kept) -> float:
        return (sum(self.weights[n] * kept[n] / w for n, w in self.widths.items())
                / sum(self.weights.values()))

    def cost(self, kept) -> float:
        return self.ratio(kept)


def layers(widths: dict) -> list:
    return [SimpleNamespace(name=name, in_channels=c) for name, c in widths.items()]


def same(counts):
    return dict(counts)


@pytest.mark.parametrize("count, width, multiple, expected", [
    (64, 64, -16, 48), (48, 64, -16, 32), (17, 64, -16, 16), (16, 64, -16, 15), (6, 16, -16, 5),
    (64, 64, 8, 56), (12, 64, 8, 8), (8, 64, 8, 8), (5, 6, 8, 4), (10, 10, 1, 9)])
def test_step_down(count, width, multiple, expected):
    assert step_down(count, width, multiple) == expected


def test_units_are_whole_groups_then_single_layers():
    chosen = layers({"a": 8, "b": 8, "c": 8, "d": 8})
    group = SimpleNamespace(readers=["a", "c"])
    outside = SimpleNamespace(readers=["b", "x"])         # a reader not chosen: not a unit
    assert units_of(chosen, [group, outside]) == [["a", "c"], ["b"], ["d"]]


def test_shrinks_where_accuracy_is_cheapest_and_holds_the_budget():
    widths = {"a": 16, "b": 32, "c": 64}
    cost = LinearCost(widths, {"a": 1.0, "b": 1.0, "c": 1.0})
    sensitivity = {"a": 0.001, "b": 0.01, "c": 0.5}        # c costs accuracy, a almost none
    scored = []

    def score(counts):
        scored.append(counts)
        loss = sum(s * (1 - counts[n] / widths[n]) for n, s in sensitivity.items())
        return {"accuracy": 1.0 - loss, "loss": loss}

    counts, record = adapt(layers(widths), [], cost, same, score, 0.6, steps=4,
                           min_ratio=0.25, multiple=1)
    assert cost.ratio(counts) <= 0.6
    assert counts["c"] == 64                               # never shrunk
    assert counts["a"] == 4                                # shrunk to its floor first
    assert 0.6 - cost.ratio(counts) < 1 / 32 + 1e-9        # short of the budget by < one step
    assert [it["unit"] for it in record["iterations"]][0] == ["a"]
    assert all(it["proposals"] <= 3 for it in record["iterations"])
    assert len(scored) == sum(it["proposals"] for it in record["iterations"])


def test_groups_keep_one_count():
    widths = {"r1": 16, "r2": 16, "x": 16}
    cost = LinearCost(widths, {"r1": 1.0, "r2": 1.0, "x": 2.0})
    group = SimpleNamespace(readers=["r1", "r2"])

    def score(counts):
        assert counts["r1"] == counts["r2"]
        return {"accuracy": 1.0 - 0.01 * (16 - counts["x"]), "loss": 0.0}

    counts, _ = adapt(layers(widths), [group], cost, same, score, 0.6, steps=2, multiple=-16)
    assert counts == {"r1": 3, "r2": 3, "x": 16}       # (2 * 3 / 16 + 2) / 4 = 0.594


def test_measurements_above_the_budget_drive_more_steps():
    widths = {"a": 32, "b": 32}
    cost = LinearCost(widths, {"a": 1.0, "b": 1.0})
    measured = []

    def measure(counts):          # the runtime is 20 % slower than the model predicts
        measured.append(1.2 * cost.ratio(counts))
        return measured[-1]

    counts, record = adapt(layers(widths), [], cost, same,
                           lambda c: {"accuracy": 1.0, "loss": 0.0}, 0.6, steps=3,
                           measure=measure, tolerance=0.05)
    assert measured[-1] <= 0.6 * 1.05 and len(measured) >= 2
    assert measured[0] > 0.63 and record["measured"][-1]["measured"] == measured[-1]
    assert cost.ratio(counts) < 0.6 / 1.2 * 1.05 + 1e-9


def test_an_unreachable_budget_is_refused_with_the_floor():
    widths = {"a": 8}
    cost = LinearCost(widths, {"a": 1.0})
    with pytest.raises(BudgetError, match="minimum"):
        adapt(layers(widths), [], cost, same, lambda c: {"accuracy": 1.0, "loss": 0.0}, 0.2,
              min_ratio=0.5)
