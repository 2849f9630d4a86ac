"""Channel dependency graph over a torch.fx trace.

For every conv/linear layer ``C`` whose INPUT channels may be pruned, find what else must
shrink with them. Walking back from ``C``'s input through per-channel operations (BN,
activations, pooling, dropout, depthwise convs, ``flatten`` of a 1x1 map) we reach the layer
``P`` that produced those channels:

- ``chain``: every node on the way (and ``P``) feeds only this path, so the pruned input
  channels of ``C`` are removed from ``P``'s outputs and from every BN / depthwise conv in
  between. Both sides really shrink.
- ``gather``: the channels are shared (a residual addition, a concatenation, several
  consumers, a graph input): ``C`` keeps only the selected channels by an index gather in
  front of its (smaller) weight, and the shared tensor stays whole.

A model that torch.fx cannot trace gets a ``GraphError`` saying how to declare the layers by
hand (``PrunableLayer`` lists can be built directly and passed to the thinning functions).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

# Modules and functions that act on each channel independently (channel index preserved).
CHANNELWISE_MODULES = (nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.ReLU6, nn.LeakyReLU,
                       nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.GELU,
                       nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                       nn.Dropout, nn.Dropout2d, nn.Identity)
CHANNELWISE_FUNCTIONS = {F.relu, F.relu6, torch.relu, F.hardswish, F.silu, torch.sigmoid,
                         F.gelu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.dropout}
CHANNELWISE_METHODS = {"relu", "relu_", "sigmoid", "contiguous"}


class GraphError(RuntimeError):
    """The model cannot be analysed (e.g. torch.fx cannot trace it)."""


@dataclass
class PrunableLayer:
    """A conv/linear layer whose input channels can be pruned, and what shrinks with them."""

    name: str                                   # qualified module name of the layer
    kind: str                                   # "conv" or "linear"
    in_channels: int
    mode: str                                   # "chain" or "gather"
    producer: str | None = None                 # conv/linear whose outputs are removed (chain)
    followers: list[str] = field(default_factory=list)  # BN / depthwise convs in between
    is_first: bool = False                      # reads the network input

    @property
    def shrinks_producer(self) -> bool:
        return self.mode == "chain" and self.producer is not None


def is_depthwise(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # torch.fx raises many kinds of errors on dynamic code
        raise GraphError(
            f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Make forward() free of "
            "data-dependent Python control flow, or declare the prunable layers yourself as a "
            "list of compression.graph.PrunableLayer and pass it as `layers=`.") from exc


def _channelwise(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        module = modules[node.target]
        return isinstance(module, CHANNELWISE_MODULES) or is_depthwise(module)
    if node.op == "call_function":
        if node.target in CHANNELWISE_FUNCTIONS:
            return True
        if node.target in (torch.flatten,) or node.target is operator.getitem:
            return False
    if node.op == "call_method":
        return node.target in CHANNELWISE_METHODS
    return False


def _is_flatten_of_1x1(node: fx.Node) -> bool:
    """``flatten(x, 1)`` of an (N, C, 1, 1) tensor keeps channel indices."""
    is_flatten = (node.op == "call_function" and node.target is torch.flatten) or \
                 (node.op == "call_method" and node.target == "flatten") or \
                 (node.op == "call_module" and isinstance(node.graph.owning_module.get_submodule(
                     node.target), nn.Flatten))
    if not is_flatten:
        return False
    meta = node.args[0].meta.get("tensor_meta") if node.args else None
    return meta is not None and len(meta.shape) == 4 and tuple(meta.shape[2:]) == (1, 1)


def analyse(model: nn.Module, input_shape: Sequence[int]) -> list[PrunableLayer]:
    """All conv (groups=1) and linear layers, in execution order, with their pruning mode."""
    graph_module = trace(model)
    was_training = model.training
    graph_module.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        ShapeProp(graph_module).propagate(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    modules = dict(graph_module.named_modules())
    usage: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            usage[node.target] = usage.get(node.target, 0) + 1
    layers = []
    for node in graph_module.graph.nodes:
        if node.op != "call_module":
            continue
        module = modules[node.target]
        is_conv = isinstance(module, nn.Conv2d) and module.groups == 1
        if not (is_conv or isinstance(module, nn.Linear)):
            continue
        if usage[node.target] > 1:
            continue  # a module called twice cannot be shrunk for one of its uses
        layers.append(_walk_back(node, module, modules, usage))
    return layers


def _walk_back(node: fx.Node, module: nn.Module, modules: dict, usage: dict) -> PrunableLayer:
    kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
    in_channels = module.in_channels if kind == "conv" else module.in_features
    layer = PrunableLayer(node.target, kind, in_channels, mode="gather")
    followers: list[str] = []
    current = node.args[0]
    exclusive = True
    while True:
        if not isinstance(current, fx.Node):
            return layer
        exclusive = exclusive and len(current.users) == 1
        if current.op == "placeholder":
            layer.is_first = True
            return layer
        if current.op == "call_module" and usage.get(current.target, 0) > 1:
            return layer
        if _channelwise(current, modules) or _is_flatten_of_1x1(current):
            if current.op == "call_module" and _has_channel_params(modules[current.target]):
                followers.append(current.target)
            current = current.args[0]
            continue
        if current.op == "call_module":
            producer = modules[current.target]
            if isinstance(producer, (nn.Conv2d, nn.Linear)) and exclusive:
                layer.mode, layer.producer, layer.followers = "chain", current.target, followers
        return layer


def _has_channel_params(module: nn.Module) -> bool:
    return isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)) or is_depthwise(module)
