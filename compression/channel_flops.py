"""Exact FLOPs of a channel-pruning strategy without building the thinned model.

Every conv / linear module costs ``2 * unit * in * out / groups`` FLOPs (``unit``: output
positions times kernel area, measured once with forward hooks), the same count
``torch.utils.flop_counter`` gives. A strategy ``{layer: kept input channels}`` changes
``in`` of each pruned layer, ``out`` of its producer in ``chain`` mode, and the channel count
of every depthwise conv in between; nothing else. ``ChannelFlops.flops(kept)`` therefore equals
``count_flops(thin(model, layers, keep))`` for any ``keep`` with those counts (tested), at the
cost of a few multiplications, which is what a strategy search needs at every step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from torch import nn

from compression.graph import PrunableLayer
from utils.model_stats import probe_forward


@dataclass
class _Cost:
    unit: int          # output positions x kernel area (1 for a linear layer on a 2-D input)
    in_channels: int
    out_channels: int
    groups: int
    depthwise: bool


class ChannelFlops:
    """FLOPs of ``model`` (one input of ``input_shape``) as a function of kept input channels."""

    def __init__(self, model: nn.Module, layers: Sequence[PrunableLayer],
                 input_shape: Sequence[int]) -> None:
        self.layers = {layer.name: layer for layer in layers}
        self.costs = _measure(model, input_shape)
        self.consumer_of: dict[str, str] = {}     # producer -> the chain layer that shrinks it
        self.channel_source: dict[str, str] = {}  # depthwise follower -> the chain layer
        for layer in layers:
            if layer.shrinks_producer:
                self.consumer_of[layer.producer] = layer.name
                for follower in layer.followers:
                    if follower in self.costs:
                        self.channel_source[follower] = layer.name
        self.total = self.flops({})

    def shapes(self, kept: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """``module -> (input channels, output channels)`` of every conv / linear module when
        each layer in ``kept`` keeps that many input channels (others: all); a depthwise conv
        whose channels follow a pruned layer has both equal to that layer's count."""
        shapes = {}
        for name, cost in self.costs.items():
            if cost.depthwise and name in self.channel_source:
                channels = kept.get(self.channel_source[name], cost.in_channels)
                shapes[name] = (channels, channels)
                continue
            shapes[name] = (kept.get(name, cost.in_channels),
                            kept.get(self.consumer_of.get(name, ""), cost.out_channels))
        return shapes

    def flops(self, kept: Mapping[str, int]) -> int:
        """FLOPs when each layer in ``kept`` keeps that many input channels (others: all)."""
        total = 0
        for name, (c_in, c_out) in self.shapes(kept).items():
            cost = self.costs[name]
            groups = c_in if cost.depthwise and name in self.channel_source else cost.groups
            total += 2 * cost.unit * c_in * c_out // groups
        return total

    cost = flops      # the budget interface of ``compression.channel_allocation``
    unit_name = "FLOPs"

    def ratio(self, kept: Mapping[str, int]) -> float:
        """FLOPs kept, as a fraction of the unpruned model's."""
        return self.flops(kept) / self.total


def _measure(model: nn.Module, input_shape: Sequence[int]) -> dict[str, _Cost]:
    costs: dict[str, _Cost] = {}

    def hook(name: str):
        def record(module: nn.Module, args, output) -> None:
            if isinstance(module, nn.Conv2d):
                kernel = module.kernel_size[0] * module.kernel_size[1]
                unit = output.shape[2] * output.shape[3] * kernel
                depthwise = module.groups > 1 and module.groups == module.in_channels \
                    == module.out_channels
                costs[name] = _Cost(unit, module.in_channels, module.out_channels, module.groups,
                                    depthwise)
            else:
                unit = output[0].numel() // module.out_features  # positions of a batched input
                costs[name] = _Cost(unit, module.in_features, module.out_features, 1, False)
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()
               if isinstance(module, (nn.Conv2d, nn.Linear))]
    probe_forward(model, input_shape, handles)
    return costs
