"""Measured CPU latency of a channel-pruning strategy, for budgets counted in time, not FLOPs.

FLOPs and latency disagree on small or oddly sized layers (a 16x16 ResNet-20 at a quarter of
its FLOPs runs far from four times faster). ``ChannelLatency`` is a lookup table in the
NetAdapt manner: every conv / linear module whose channel counts a strategy can change is timed
alone, at the batch size and thread count of the budget, on a grid of (input, output) channel
counts (steps of ``multiple``, at most 9 per axis) and interpolated bilinearly in between;
everything the table does not cover (BN, activations, adds, gathers, framework overhead) is
one constant, the measured latency of the whole unpruned model minus the table's sum for it.
The table's savings are then rescaled once so that the smallest strategy allowed is predicted
at its measured ratio (``calibrate``). It has the cost interface of
``compression.budget.allocation`` (``cost``, ``ratio``, ``total``), so the same allocation and
DDPG environment work under a latency budget.

A table is a model, so the final strategy is settled on real measurements
(``settle_budget``): the thinned candidate and the unpruned model are timed in alternating
rounds in one run (``measured_ratio``), and the table's target is rescaled by the measured
error until the measured ratio is within the tolerance of the budget.
"""
from __future__ import annotations

import copy
import logging
import statistics
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from compression.budget.allocation import BudgetError
from compression.budget.flops import ChannelFlops
from compression.graph.layers import PrunableLayer
from compression.surgery.picks import GatherLinear, gather_class
from compression.surgery.thinning import thin
from utils.model_stats import measure_latency, probe_forward, time_forward

log = logging.getLogger("pocketflow")


@dataclass(frozen=True)
class _Template:
    """What a module's latency depends on, besides its channel counts."""
    kind: str                 # "conv" or "linear"
    in_shape: tuple           # one input without batch; channels at index 0 (conv) or -1 (linear)
    kernel: tuple = ()
    stride: tuple = ()
    padding: tuple = ()
    dilation: tuple = ()
    group_width: tuple = ()   # (inputs, outputs) per group of a depthwise / grouped conv
    bias: bool = True
    gather: bool = False      # thinned into a Gather* module that index_selects its inputs

    def build(self, c_in: int, c_out: int) -> tuple[nn.Module, tuple]:
        gather = self.gather and c_in < self._width()
        reads = self._width() if gather else c_in
        if self.kind == "linear":
            cls = GatherLinear if gather else nn.Linear
            return cls(c_in, c_out, bias=self.bias), (*self.in_shape[:-1], reads)
        base = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(self.in_shape) - 1]
        cls = gather_class(base) if gather else base
        groups = c_out // self.group_width[1] if self.group_width else 1
        module = cls(c_in, c_out, self.kernel, self.stride, self.padding, self.dilation,
                     groups=groups, bias=self.bias)
        return module, (reads, *self.in_shape[1:])

    def _width(self) -> int:
        return self.in_shape[-1] if self.kind == "linear" else self.in_shape[0]


def _grid(width: int, variable: bool, multiple: int) -> list[int]:
    if not variable:
        return [width]
    step = max(multiple, -(-width // 8))
    return sorted({min(width, k) for k in range(step, width + step, step)} | {1, width})


def _templates(model: nn.Module, names: set[str], gathered: set[str],
               input_shape: Sequence[int]) -> dict:
    found: dict[str, _Template] = {}

    def hook(name: str):
        def record(module: nn.Module, args, output) -> None:
            shape = tuple(args[0].shape[1:])
            if not isinstance(module, nn.Linear):
                width = ((module.in_channels // module.groups,
                          module.out_channels // module.groups) if module.groups > 1 else ())
                found[name] = _Template("conv", shape, module.kernel_size, module.stride,
                                        module.padding, module.dilation, width,
                                        module.bias is not None, name in gathered)
            else:
                found[name] = _Template("linear", shape, bias=module.bias is not None,
                                        gather=name in gathered)
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()
               if name in names]
    probe_forward(model, input_shape, handles)
    return found


class ChannelLatency:
    """Latency in ms of ``model`` at ``batch`` as a function of the kept input channels of the
    layers ``chosen`` (a cost model for ``compression.budget.allocation``)."""

    unit_name = "latency"

    def __init__(self, model: nn.Module, flops: ChannelFlops, chosen: Sequence[PrunableLayer],
                 input_shape: Sequence[int], batch: int = 1, threads: int | None = None,
                 multiple: int = 1, repeats: int = 20) -> None:
        self.flops = flops
        pruned = {layer.name for layer in chosen}
        timing = dict(batch_sizes=(batch,), nb_threads=threads, warmup=3, repeats=repeats)
        full_shapes = flops.shapes({})
        variable = flops.variable(pruned)
        gathered = {layer.name for layer in chosen if layer.mode == "gather"}
        templates = _templates(model, set(variable), gathered, input_shape)
        measured: dict[tuple, float] = {}   # (template, c_in, c_out) -> ms, shared by twins
        self.tables: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        with torch.no_grad():
            for name, (in_var, out_var) in variable.items():
                template = templates[name]
                c_in, c_out = full_shapes[name]
                ins, outs = _grid(c_in, in_var, multiple), _grid(c_out, out_var, multiple)
                table = np.zeros((len(ins), len(outs)))
                for i, a in enumerate(ins):
                    for j, b in enumerate(outs):
                        if template.group_width:        # whole groups: out follows in
                            groups = max(1, a // template.group_width[0])
                            a, b = (groups * w for w in template.group_width)
                        key = (template, a, b)
                        if key not in measured:
                            module, shape = template.build(a, b)
                            measured[key] = time_forward(module.eval(), shape, **timing)[f"bs{batch}"]
                        table[i, j] = measured[key]
                self.tables[name] = (np.asarray(ins, float), np.asarray(outs, float), table)
        self.total = measure_latency(model, input_shape, **timing)[f"bs{batch}"]
        self.rest = self.total - self._table_sum(full_shapes)
        self.savings_scale, self.shape = 1.0, "table"
        log.info("latency table: %d modules, %d timings, batch %d | unpruned %.3f ms, "
                 "%.3f ms outside the table", len(variable), len(measured), batch, self.total,
                 self.rest)

    def _table_sum(self, shapes: Mapping[str, tuple[int, int]]) -> float:
        total = 0.0
        for name, (ins, outs, table) in self.tables.items():
            c_in, c_out = shapes[name]
            row = np.array([np.interp(c_out, outs, table[i]) for i in range(len(ins))])
            total += float(np.interp(c_in, ins, row))
        return total

    def _savings(self, kept: Mapping[str, int]) -> float:
        """Fraction of the unpruned latency the strategy saves, before calibration: from the
        table, or (when the table saw no saving at all) proportional to the FLOPs saved."""
        if self.shape == "flops":
            return 1.0 - self.flops.ratio(kept)
        return 1.0 - (self.rest + self._table_sum(self.flops.shapes(kept))) / self.total

    def cost(self, kept: Mapping[str, int]) -> float:
        """Predicted ms of one forward pass when the layers in ``kept`` keep those counts: the
        saving against the unpruned model times ``savings_scale``."""
        return self.total * (1.0 - self.savings_scale * self._savings(kept))

    def calibrate(self, kept: Mapping[str, int], measured: float) -> None:
        """Rescale the savings so that the strategy ``kept`` is predicted at its ``measured``
        ratio (isolated layer timings miss what surrounds them: caches, memory traffic,
        framework overhead). When the table predicts no saving for it (tiny layers, where the
        gathers cost more than the convolutions save) but the measurement shows one, the
        savings follow the FLOPs instead. A strategy measured no faster than the unpruned model
        leaves nothing to save (scale 0: every budget below 1 is then refused)."""
        saving = self._savings(kept)
        if saving <= 1e-3 and measured < 1.0:
            log.warning("latency table: no saving predicted for a strategy measured at %.3f; "
                        "savings follow the FLOPs, scaled to the measurement", measured)
            self.shape = "flops"
            saving = self._savings(kept)
        self.savings_scale = max(0.0, (1.0 - measured) / saving) if saving > 1e-3 else 0.0
        log.info("latency table calibrated on a strategy measured at %.3f: savings x%.2f (%s)",
                 measured, self.savings_scale, self.shape)

    def ratio(self, kept: Mapping[str, int]) -> float:
        return self.cost(kept) / self.total


def spread(count: int, width: int) -> torch.Tensor:
    """``count`` of ``width`` input positions, evenly spaced: a reader of a concatenation keeps
    about the same share of every part of it, as ``ChannelFlops`` expects."""
    return torch.div(torch.arange(count) * width, count, rounding_mode="floor")


def thin_to_counts(model: nn.Module, layers: Sequence[PrunableLayer],
                   counts: Mapping[str, int], groups: Sequence = ()) -> nn.Module:
    """A thinned copy of ``model`` in which each layer keeps ``counts[layer]`` input channels,
    evenly spread over its input (``spread``): the architecture of a strategy, for timing.
    Which channels a reader of one producer keeps does not change the architecture; a reader
    of a concatenation keeps the same share of every part, so each producer that only it reads
    keeps that share (the final selection may pick otherwise: an estimate, as the strategy's
    FLOPs are). Channels several layers read stay, as ``ChannelFlops.flops`` counts them. The
    channels of each residual group in ``groups`` (``prune_residual``) leave the whole stream
    instead: its readers keep the same channels (their counts are the group's,
    ``compression.budget.strategy.at_group_counts``)."""
    width = {layer.name: layer.in_channels for layer in layers}
    keep = {name: spread(count, width[name]) for name, count in counts.items()}
    coupled = []
    for group in groups:
        if all(name in counts for name in group.readers):
            count = counts[group.readers[0]]
            keep.update(group.keep(spread(count, len(group.roots)).tolist()))
            coupled += group.roots
    thinned, _ = thin(copy.deepcopy(model), layers, keep, keep_shared=True, eliminate=False,
                      coupled=coupled)
    return thinned.eval()


def measured_ratio(full: nn.Module, candidate: nn.Module, input_shape: Sequence[int],
                   batch: int = 1, threads: int | None = None, rounds: int = 7,
                   repeats: int = 20) -> float:
    """Median over alternating rounds of (candidate ms / full ms), both timed in each round,
    so drifts of a noisy machine hit both sides alike."""
    timing = dict(batch_sizes=(batch,), nb_threads=threads, warmup=3, repeats=repeats)
    ratios = []
    for _ in range(rounds):
        a = measure_latency(full, input_shape, **timing)[f"bs{batch}"]
        b = measure_latency(candidate, input_shape, **timing)[f"bs{batch}"]
        ratios.append(b / a)
    return statistics.median(ratios)


def settle_budget(allocate: Callable[[float], dict], measure: Callable[[dict], float],
                  budget: float, tolerance: float = 0.05, max_rounds: int = 4) -> tuple[dict, list]:
    """Counts whose MEASURED ratio is within ``tolerance * budget`` of ``budget``:
    ``allocate(target)`` gives counts for a predicted ratio ``target``; after each measurement
    the target is rescaled by ``budget / measured``. Returns the counts that came closest and
    every trial ``{"target", "measured"}``; raises ``BudgetError`` when even the smallest
    strategy the table allows is measured above the budget."""
    target, trials, best = budget, [], None
    for _ in range(max_rounds):
        try:
            counts = allocate(target)
        except BudgetError as error:
            if not trials:
                raise
            raise BudgetError(
                f"a latency budget of {budget:.3f} cannot be met: the strategies measured so far "
                f"run at {[round(t['measured'], 3) for t in trials]} of the unpruned latency and "
                f"the lookup table allows no smaller one ({error})") from error
        ratio = measure(counts)
        trials.append({"target": target, "measured": ratio})
        log.info("latency budget %.3f: table target %.3f -> measured %.3f", budget, target, ratio)
        if best is None or abs(ratio - budget) < abs(best[1] - budget):
            best = (counts, ratio)
        if abs(ratio - budget) <= tolerance * budget:
            break
        target = min(1.0, target * budget / ratio)
    return best[0], trials
