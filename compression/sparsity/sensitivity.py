"""Per-layer pruning sensitivity: prune ONE layer at a time and measure accuracy and loss.

For every analysed layer (default: every conv/linear of ``maskable_layers``; ``layer_filter``
keeps the layers whose name contains one of its substrings) and every ratio, that layer alone
is pruned and the model is evaluated by the ``evaluate(model) -> {"accuracy", "loss"}``
callable passed in (``make_evaluator`` builds one from a ModelHelper). Granularities:

- ``element``: the ``round(ratio * numel)`` weights of smallest ``|w|`` are zeroed (exact
  count, ties broken by position: ``magnitude_mask``);
- ``filter``: the ``int(ratio * c_out)`` output channels of smallest L1 norm are zeroed (their
  weight rows and bias entries; a following BatchNorm still adds its shift, as in a masked net);
- ``channel``: the ``int(ratio * c_in)`` input channels of smallest L1 norm are zeroed (weight
  columns, i.e. ``weight[:, i]``; the L1 criterion of the channel learners' ``l1`` selection).

A count never reaches the whole layer: at least one weight / filter / channel is kept. Each
trial zeroes the layer's weight (and bias) IN PLACE and restores the saved copy afterwards (no
per-trial copy of the model), so the model comes back bit-identical; the evaluation runs in
``eval()`` mode under ``no_grad`` and the training flag is restored.

Drops are in accuracy POINTS (percent): ``drop = 100 * (baseline accuracy - accuracy)``.
``suggest_ratios`` picks per layer the largest ratio such that it and every smaller analysed
ratio drop at most ``max_drop`` points (0 when none does); ``write_suggestion`` stores it
with ``compression.budget.ratio_list.write_ratio_list`` in the form its reader expects:

- ``channel``: the fraction of input channels KEPT, for exactly the layers the ``channel``
  learner prunes by default (``choose_layers(analyse(model, input_shape), True, True, [])``;
  layers not analysed keep 1.0): ``--learner=channel --cp_prune_option=list
  --cp_prune_list_file=<file>``. The kept fraction is exact, ``(c_in - pruned) / c_in``, so
  the learner's ``count_at`` rounds it back to the analysed count.
- ``element``: the fraction of weights PRUNED for every conv/linear layer (0 when not analysed).
- ``filter``: the fraction of filters pruned (informational; no learner reads it).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from compression.graph.layers import choose_layers
from compression.graph.layers import analyse
from compression.sparsity.masks import magnitude_mask, maskable_layers
from compression.budget.ratio_list import write_ratio_list
from utils.data_loading import make_eval_loader

GRANULARITIES = ("element", "filter", "channel")
Evaluate = Callable[[nn.Module], Mapping[str, float]]
_EPS = 1e-9  # drops are differences of float accuracies


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")


def check_ratios(ratios: Sequence[float]) -> list[float]:
    """The ratios as floats, sorted; refuses an empty list, duplicates and values outside [0, 1)."""
    if len(ratios) == 0:
        raise ValueError("the ratio list is empty; give at least one ratio in [0, 1)")
    values = [float(r) for r in ratios]
    bad = [r for r in values if not (math.isfinite(r) and 0.0 <= r < 1.0)]
    if bad:
        raise ValueError(f"ratios must be in [0, 1), got {', '.join(map(repr, bad))}")
    if len(set(values)) != len(values):
        raise ValueError(f"duplicate ratios in {values}")
    return sorted(values)


def nb_units(weight: torch.Tensor, granularity: str) -> int:
    """Weights, filters (output channels) or input channels of a layer's weight."""
    check_granularity(granularity)
    if granularity == "element":
        return weight.numel()
    return weight.shape[0] if granularity == "filter" else weight.shape[1]


def prune_count(granularity: str, ratio: float, total: int) -> int:
    """Units zeroed at ``ratio``: ``round(ratio * total)`` weights or ``int(ratio * total)``
    filters / channels, at most ``total - 1``."""
    check_granularity(granularity)
    count = round(ratio * total) if granularity == "element" else int(total * ratio)
    return max(0, min(count, total - 1))


@torch.no_grad()
def zero_smallest(module: nn.Module, granularity: str, ratio: float) -> tuple[int, int]:
    """Zero, in place, the smallest units of ``module``'s weight (and, for ``filter``, the
    matching bias entries); returns ``(units zeroed, units in the layer)``."""
    weight = module.weight
    total = nb_units(weight, granularity)
    count = prune_count(granularity, ratio, total)
    if count == 0:
        return 0, total
    if granularity == "element":
        weight.mul_(magnitude_mask(weight, count))
        return count, total
    dim = 0 if granularity == "filter" else 1
    other = [d for d in range(weight.dim()) if d != dim]
    norms = weight.detach().abs().sum(dim=other)
    index = torch.argsort(norms, stable=True)[:count]
    weight.index_fill_(dim, index, 0.0)
    if granularity == "filter" and getattr(module, "bias", None) is not None:
        module.bias.index_fill_(0, index, 0.0)
    return count, total


@dataclass
class SensitivityResult:
    """``layers[name][ratio] = {"accuracy", "loss", "pruned", "total"}``; accuracy is a fraction."""

    granularity: str
    ratios: list[float]
    baseline: dict[str, float]
    layers: dict[str, dict[float, dict]] = field(default_factory=dict)
    wall_s: float = 0.0

    def drop(self, layer: str, ratio: float) -> float:
        """Accuracy drop in points (percent) of ``layer`` pruned at ``ratio``."""
        return 100.0 * (self.baseline["accuracy"] - self.layers[layer][ratio]["accuracy"])

    def rows(self) -> list[dict]:
        """One dict per (layer, ratio): layer, ratio, accuracy, loss, drop (points), pruned, total."""
        return [{"layer": name, "ratio": ratio, **{k: trial[k] for k in ("accuracy", "loss")},
                 "drop": self.drop(name, ratio), "pruned": trial["pruned"], "total": trial["total"]}
                for name, trials in self.layers.items() for ratio, trial in trials.items()]


def select_layers(model: nn.Module, layer_filter: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Conv/linear layers, optionally those whose name contains one of ``layer_filter``."""
    layers = maskable_layers(model)
    if not layer_filter:
        if not layers:
            raise ValueError(f"{type(model).__name__} has no conv/linear layer to analyse")
        return layers
    unmatched = [s for s in layer_filter if not any(s in name for name in layers)]
    if unmatched:
        raise ValueError(f"layer filters {unmatched} match no conv/linear layer; the layers are: "
                         f"{', '.join(layers)}")
    return {name: m for name, m in layers.items() if any(s in name for s in layer_filter)}


def analyse_sensitivity(model: nn.Module, evaluate: Evaluate, ratios: Sequence[float],
                        granularity: str = "element", layer_filter: Sequence[str] | None = None,
                        progress: Callable[[str, float, dict], None] | None = None
                        ) -> SensitivityResult:
    """Evaluate ``model`` unpruned, then with each selected layer pruned alone at each ratio.

    ``progress(layer, ratio, trial)`` is called after every trial (e.g. for logging).
    """
    check_granularity(granularity)
    ratios = check_ratios(ratios)
    layers = select_layers(model, layer_filter)
    for name, module in layers.items():
        if not isinstance(module.weight, nn.Parameter):
            raise ValueError(f"{name}.weight is computed (a parametrization, e.g. a mask); "
                             "analyse a plain model (compression.sparsity.masks.detach_masks)")
    start = time.perf_counter()
    baseline = {k: float(v) for k, v in evaluate(model).items()}
    result = SensitivityResult(granularity, ratios, baseline)
    for name, module in layers.items():
        saved_weight = module.weight.detach().clone()
        bias = getattr(module, "bias", None)
        saved_bias = bias.detach().clone() if granularity == "filter" and bias is not None else None
        result.layers[name] = {}
        for ratio in ratios:
            try:
                pruned, total = zero_smallest(module, granularity, ratio)
                metrics = evaluate(model)
            finally:
                with torch.no_grad():
                    module.weight.copy_(saved_weight)
                    if saved_bias is not None:
                        bias.copy_(saved_bias)
            trial = {"accuracy": float(metrics["accuracy"]), "loss": float(metrics["loss"]),
                     "pruned": pruned, "total": total}
            result.layers[name][ratio] = trial
            if progress is not None:
                progress(name, ratio, trial)
    result.wall_s = time.perf_counter() - start
    return result


def suggest_ratios(result: SensitivityResult, max_drop: float) -> dict[str, float]:
    """Per analysed layer, the largest ratio that, with every smaller analysed ratio, drops at
    most ``max_drop`` accuracy points (0.0 when none does)."""
    if not (math.isfinite(max_drop) and max_drop >= 0):
        raise ValueError(f"max_drop must be a number of accuracy points >= 0, got {max_drop!r}")
    suggestion = {}
    for name, trials in result.layers.items():
        best = 0.0
        for ratio in sorted(trials):
            if result.drop(name, ratio) > max_drop + _EPS:
                break
            best = ratio
        suggestion[name] = best
    return suggestion


def suggestion_layers(model: nn.Module, granularity: str,
                      input_shape: Sequence[int] | None = None) -> list[str]:
    """The layers a suggestion file must name: the channel learner's default layers for
    ``channel`` (needs ``input_shape``), every conv/linear layer otherwise."""
    check_granularity(granularity)
    if granularity != "channel":
        return list(maskable_layers(model))
    if input_shape is None:
        raise ValueError("a channel suggestion needs the model's input_shape")
    return [layer.name for layer in choose_layers(analyse(model, input_shape), True, True, [])]


def suggestion_values(result: SensitivityResult, suggestion: Mapping[str, float],
                      names: Sequence[str]) -> dict[str, float]:
    """What the suggestion file stores for ``names`` (see the module docstring)."""
    values = {}
    for name in names:
        ratio = suggestion.get(name, 0.0)
        if result.granularity != "channel":
            values[name] = ratio
        elif name in result.layers and ratio > 0:
            total = result.layers[name][ratio]["total"]
            values[name] = (total - result.layers[name][ratio]["pruned"]) / total
        else:
            values[name] = 1.0
    return values


MEANINGS = {
    "channel": "fraction of input channels KEPT per layer (sensitivity suggestion; "
               "--learner=channel --cp_prune_option=list --cp_prune_list_file=<this file>)",
    "element": "fraction of weights PRUNED per conv/linear layer (sensitivity suggestion)",
    "filter": "fraction of filters (output channels) pruned per layer (sensitivity suggestion, "
              "informational)",
}


def write_suggestion(path: str, result: SensitivityResult, suggestion: Mapping[str, float],
                     names: Sequence[str], max_drop: float) -> dict[str, float]:
    """Write the suggestion for ``names`` (``suggestion_layers``) atomically; returns the values."""
    values = suggestion_values(result, suggestion, names)
    meaning = f"{MEANINGS[result.granularity]}; max accuracy drop {max_drop:g} points"
    write_ratio_list(path, values, meaning)
    return values


def make_evaluator(helper, split: str = "val", max_batches: int = 0,
                   device: str | torch.device = "cpu") -> Evaluate:
    """``evaluate(model) -> {"accuracy", "loss"}`` over the first ``max_batches`` batches
    (0: all) of the helper's ``val`` split (held-out TRAINING data) or ``eval`` set (the test
    set), weighted by samples as in ``AbstractLearner.run_evaluation``. The input batches are
    read once and kept in memory."""
    if split not in ("val", "eval"):
        raise ValueError(f"unknown split {split!r}; valid: val, eval")
    if max_batches < 0:
        raise ValueError(f"max_batches must be >= 0 (0: all), got {max_batches}")
    dataset = helper.build_dataset_val() if split == "val" else helper.build_dataset_eval()
    batches = []
    for inputs, labels in make_eval_loader(dataset, helper.cfg.batch_size_eval):
        batches.append((inputs.to(device), labels.to(device)))
        if max_batches and len(batches) >= max_batches:
            break
    if not batches:
        raise ValueError(f"the {split} split of {type(helper).__name__} is empty")

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        loss_sum = correct = count = 0.0
        try:
            for inputs, labels in batches:
                loss, metrics = helper.calc_loss(labels, helper.forward_eval(model, inputs))
                n = labels.numel()
                loss_sum += float(loss) * n
                correct += float(metrics["accuracy"]) * n
                count += n
        finally:
            model.train(was_training)
        return {"accuracy": correct / count, "loss": loss_sum / count}

    evaluate.nb_samples = sum(labels.numel() for _, labels in batches)
    return evaluate
