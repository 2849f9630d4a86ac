"""FLOPs of a channel-pruning strategy without building the thinned model.

Every conv / linear module costs ``2 * unit * in * out / groups`` FLOPs (``unit``: output
positions times kernel area, measured once with forward hooks), the same count
``torch.utils.flop_counter`` gives; a grouped conv keeps whole groups, so each of its output
channels still reads ``in / groups`` inputs. A strategy ``{layer: kept input channels}`` changes the
input width of each pruned layer and, through the channel graph (``compression.graph``), the
widths of the layers that write, follow and read the channels it removes.

``flops(kept)`` takes counts, as a strategy search does at every step: a channel that one
chosen layer alone reads shrinks in proportion to that layer's count (exact for a layer that
alone reads one producer; for a layer reading a concatenation, the split of its kept channels
among the producers is only known after selection, so each is assumed to keep its share), and
a channel several layers share counts as kept (it survives when any of them keeps it, so
there the figure is an upper bound). A reader of a grouped conv's outputs counts the whole
groups its selection will keep (``ChannelFlops.at_blocks``). ``flops_of(keep)`` takes the kept
indices and equals ``count_flops(thin(model, layers, keep))`` exactly (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from compression.graph.layers import PrunableLayer, graph_of
from compression.selection.blocks import block_count
from compression.selection.residual_groups import group_count
from utils.model_stats import probe_forward

_COSTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
           nn.ConvTranspose3d, nn.Linear)


@dataclass
class _Cost:
    unit: int          # output positions x kernel area (1 for a linear layer on a 2-D input)
    in_channels: int
    out_channels: int
    groups: int

    @property
    def group_width(self) -> tuple[int, int]:
        """(inputs, outputs) per group."""
        return self.in_channels // self.groups, self.out_channels // self.groups


class ChannelFlops:
    """FLOPs of ``model`` (one input of ``input_shape``) as a function of kept input channels."""

    def __init__(self, model: nn.Module, layers: Sequence[PrunableLayer],
                 input_shape: Sequence[int], groups: Sequence = ()) -> None:
        self.layers = {layer.name: layer for layer in layers}
        self.graph = graph_of(layers)
        self.groups = list(groups)     # residual groups pruned as one (prune_residual)
        self.costs = _measure(model, input_shape)
        self.total = self.flops({})

    def shapes(self, kept: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """``module -> (input channels, output channels)`` of every conv / linear module when
        each layer in ``kept`` keeps that many input channels (others: all)."""
        g = self.graph
        kept = self.at_blocks(kept)
        fractions = self._fractions(kept)
        kept = {**kept, **self.group_counts(kept)}
        shapes = {}
        for name, cost in self.costs.items():
            if name in g.followers:                       # a depthwise or grouped conv
                channels = g.expected(g.followers[name], fractions)
                shapes[name] = _grouped_shape(cost, channels)
            elif name in g.readers:
                c_in = kept[name] if name in kept else g.expected(g.read_ids(name), fractions)
                shapes[name] = (c_in, g.expected(g.writers[name], fractions))
            else:
                shapes[name] = (cost.in_channels, cost.out_channels)
        return shapes

    def at_blocks(self, kept: Mapping[str, int]) -> dict[str, int]:
        """``kept`` with the count of every reader of whole blocks (the groups of a grouped
        conv: ``PrunableLayer.blocks``) at what its selection keeps (``block_count``)."""
        return {name: block_count(count, self.layers[name].blocks) if name in self.layers
                else count for name, count in kept.items()}

    def group_counts(self, kept: Mapping[str, int]) -> dict[str, int]:
        """reader -> its group's count (``group_count``), for the readers of the residual groups
        whose readers are all in ``kept``: the channels the learner keeps for each of them."""
        counts = {}
        for group in self.groups:
            if all(name in kept for name in group.readers):
                in_channels = {name: self.layers[name].in_channels for name in group.readers}
                counts.update(dict.fromkeys(group.readers,
                                            group_count(group, kept, in_channels)))
        return counts

    def _fractions(self, kept: Mapping[str, int]) -> dict[int, float]:
        """root -> expected fraction kept (``ChannelGraph.fractions``); the channels of a
        residual group keep the group's count, whichever of its readers are in ``kept``."""
        fractions = self.graph.fractions(kept)
        counts = self.group_counts(kept)
        for group in self.groups:
            if group.readers[0] in counts:
                fractions.update(dict.fromkeys(group.roots,
                                               counts[group.readers[0]] / len(group.roots)))
        return fractions

    def shapes_of(self, keep: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
        """The exact shapes after ``thin(model, layers, keep)``."""
        plan = self.graph.plan(keep)
        shapes = {}
        for name, cost in self.costs.items():
            change = plan.get(name, {})
            if "channels" in change:
                shapes[name] = _grouped_shape(cost, len(change["channels"]))
                continue
            c_in = len(change["in"]) if "in" in change else cost.in_channels
            shapes[name] = (c_in, len(change["out"]) if "out" in change else cost.out_channels)
        return shapes

    def _sum(self, shapes: Mapping[str, tuple[int, int]]) -> int:
        total = 0
        for name, (c_in, c_out) in shapes.items():
            cost = self.costs[name]
            reads = cost.group_width[0] if cost.groups > 1 else c_in   # inputs per output
            total += 2 * cost.unit * reads * c_out
        return total

    def flops(self, kept: Mapping[str, int]) -> int:
        """FLOPs when each layer in ``kept`` keeps that many input channels (others: all);
        channels several layers share count as kept (an upper bound)."""
        return self._sum(self.shapes(kept))

    def flops_of(self, keep: Mapping[str, torch.Tensor]) -> int:
        """Exact FLOPs of ``thin(model, layers, keep)``."""
        return self._sum(self.shapes_of(keep))

    def variable(self, pruned: set[str]) -> dict[str, tuple[bool, bool]]:
        """``module -> (input width varies, output width varies)`` for the modules whose
        shape the counts of the layers ``pruned`` change (what a latency table must cover)."""
        fractions = self.graph.fractions({name: 0 for name in pruned})
        g, out = self.graph, {}
        for name, cost in self.costs.items():
            if name in g.followers:
                varies = any(g.find(i) in fractions for i in g.followers[name])
                entry = (varies, varies)
            elif name in g.readers:
                entry = (name in pruned or any(g.find(i) in fractions for i in g.read_ids(name)),
                         any(g.find(i) in fractions for i in g.writers[name]))
            else:
                continue
            if any(entry):
                out[name] = entry
        return out

    cost = flops      # the budget interface of ``compression.budget.allocation``
    unit_name = "FLOPs"

    def ratio(self, kept: Mapping[str, int]) -> float:
        """FLOPs kept, as a fraction of the unpruned model's."""
        return self.flops(kept) / self.total


def _measure(model: nn.Module, input_shape: Sequence[int]) -> dict[str, _Cost]:
    costs: dict[str, _Cost] = {}

    def hook(name: str):
        def record(module: nn.Module, args, output) -> None:
            if isinstance(module, nn.Linear):
                unit = output[0].numel() // module.out_features  # positions of a batched input
                costs[name] = _Cost(unit, module.in_features, module.out_features, 1)
                return
            kernel = 1
            for k in module.kernel_size:
                kernel *= k
            unit = output[0, 0].numel() * kernel
            if module.transposed:                # each input position meets the whole kernel
                unit = args[0][0, 0].numel() * kernel
            costs[name] = _Cost(unit, module.in_channels, module.out_channels, module.groups)
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()
               if isinstance(module, _COSTED)]
    probe_forward(model, input_shape, handles)
    return costs


def _grouped_shape(cost: _Cost, out_channels: int) -> tuple[int, int]:
    """(in, out) of a depthwise or grouped conv keeping ``out_channels`` (whole groups)."""
    width_in, width_out = cost.group_width
    return max(1, round(out_channels / width_out)) * width_in, out_channels
