"""Channel dependency graph over a torch.fx trace, one node per channel.

Every channel (dim 1) of every tensor the model computes gets an id; ids that must be removed
together are merged (union-find), following the ops of the trace:

- a conv / linear (a *reader*, ``compression.graph.pruners``) reads the ids of its input and
  *writes* new ids, one per output channel;
- per-channel modules and functions (BN, depthwise conv, activations, pooling, 1x1 flatten,
  view/reshape that keep dim 1) pass the ids through; channelwise modules with parameters are
  the *followers* of the ids they see;
- a grouped conv writes new ids and merges each group's input and output ids into one: a
  group stays or goes whole (a reader of its outputs keeps whole groups, ``blocks``);
- ``add`` / ``sub`` / ``mul`` / ``div`` of tensors of equal width merge the ids position by
  position (a residual sum couples its members; a squeeze-and-excitation ``x * s`` couples the
  trunk with the gate's last layer);
- ``cat`` on dim 1 concatenates id lists; ``split`` / ``chunk`` / ``x[:, a:b]`` slice them
  (and fix the channels they split: the code cuts at fixed widths);
- the network input, the output, layers that mix channels (LayerNorm over C) and any
  op the graph does not understand *fix* the ids they touch: those channels are never removed.

Pruning picks, for each chosen reader, the input channels it keeps (``keep``). A channel id
survives when it is fixed or some reader keeps it; ``plan(keep)`` then shrinks every writer and
follower to its surviving channels, and each reader gathers its kept channels out of what
survives (no gather when it keeps all of them). So a layer that alone reads a producer
(through BN, depthwise convs, a concatenation) shrinks that producer, channels that no reader
keeps disappear from every producer (also along a residual stream), and shared channels stay
whole for the readers that still need them. Readers whose result only returns as the
multiplier of a broadcast product on their own input (an SE gate's first layer) follow the
channels that survive instead of keeping them alive.

``analyse`` lists the readers a learner may prune as ``PrunableLayer``s (``chain``: the layer
is the only reader of its input channels, so its producers shrink with it; ``gather``: they
are shared or fixed). A model that torch.fx cannot trace gets a ``GraphError``.

Files: the trace and the op tables are in ``compression.graph.ops``, ``ChannelGraph`` (ids,
survivors, the plan) in ``compression.graph.channel_graph``, the op-by-op builder in
``compression.graph.builder``; this module gives the learners' view (``analyse``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from torch import fx, nn

from compression.graph.channel_graph import ChannelGraph
from compression.graph.ops import GraphError, shaped_graph, trace  # noqa: F401
from compression.graph.builder import build_graph
import warnings

log = logging.getLogger("pocketflow")
_LOGGED: set[tuple[str, str]] = set()     # (op or module, why): each is logged once a process


@dataclass
class PrunableLayer:
    """A conv/linear layer whose input channels can be pruned, and what shrinks with them."""

    name: str                                   # qualified module name of the layer
    kind: str                                   # "conv" or "linear"
    in_channels: int
    mode: str                                   # "chain" or "gather"
    producer: str | None = None                 # the layer writing its inputs (chain, one writer)
    followers: list[str] = field(default_factory=list)  # BN / depthwise convs in between
    is_first: bool = False                      # reads the network input
    private: list[str] = field(default_factory=list)    # channelwise modules on its input
    # path that nothing else reads (a pre-activation BN), nearest first
    blocks: list[list[int]] = field(default_factory=list)  # input columns kept or dropped
    # together (the channels of one group of a grouped conv); empty: each on its own
    writes_output: bool = False                 # its outputs are the network's (a classifier)
    graph: "ChannelGraph | None" = field(default=None, repr=False, compare=False)

    @property
    def shrinks_producer(self) -> bool:
        return self.mode == "chain" and self.producer is not None


def is_depthwise(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def analyse(model: nn.Module, input_shape: Sequence[int]) -> list[PrunableLayer]:
    """Every conv / linear layer whose input channels a learner may prune, in execution
    order, with its mode; all share the model's ``ChannelGraph`` (``layer.graph``)."""
    graph, graph_module = build_graph(model, input_shape)
    heads = _heads(graph_module, set(graph.readers))
    modules = dict(model.named_modules())
    new = sorted(set(graph.unhandled.items()) - _LOGGED)
    if new:
        _LOGGED.update(new)
        log.info("channel graph: kept whole around %s", "; ".join(
            f"{name}: {why}" for name, why in new))
    voters, fixed = graph.voters(), graph.fixed_roots()
    written = {graph.find(i) for ids in graph.writers.values() for i in ids}
    kept_whole = {graph.find(i) for i in graph.mixed_ids} | (written & fixed)
    position = {name: i for i, name in enumerate(graph.order)}
    layers = []
    for name in graph.order:
        if name not in graph.readers or graph.calls[name] > 1 or name in graph.gate_readers \
                or getattr(modules[name], "transposed", False):
            continue                  # a transposed conv shrinks as a producer, not by selection
        ids = graph.read_ids(name)
        roots = set(graph.roots(ids))
        if roots and roots <= kept_whole:
            # its inputs are computed whole whatever it keeps (the outputs of a grouped conv or
            # a norm across channels, a tensor the code splits at fixed widths): pruning it
            # would leave channels computed and unread
            log.info("channel graph: %s keeps its inputs (its producer must keep all its "
                     "channels: a grouped conv, a norm across channels or a split)", name)
            continue
        chain = bool(roots) and all(r not in fixed and voters.get(r) == {name} for r in roots)
        if name in graph.last_dim and not chain:
            continue                  # channels-last: only its producer can drop what it skips
        producer, followers = None, []
        if chain:
            wanted = graph.roots(ids)
            producer = next((w for w in graph.order if w in graph.writers and w != name
                             and graph.roots(graph.writers[w]) == wanted), None)
            followers = sorted((f for f, f_ids in graph.followers.items()
                                if f_ids and set(graph.roots(f_ids)) <= roots),
                               key=lambda f: -position[f])
            if graph.grouped & set(followers):
                producer = None           # its filters are not this layer's columns
        layers.append(PrunableLayer(
            name, graph.kinds[name], len(ids), "chain" if chain else "gather", producer,
            followers, is_first=bool(set(graph.readers[name]) & graph.input_ids),
            private=[] if name in graph.gathered else graph.private[name],
            blocks=_blocks(graph, ids), graph=graph,
            writes_output=name in heads))
    return layers


def _heads(graph_module: fx.GraphModule, readers: set[str]) -> set[str]:
    """The readers after which no reader runs on any path (the layers writing the network's
    output: a classifier, also through ``log_softmax`` or a scale; each head of several)."""
    below: dict[fx.Node, bool] = {}      # node -> a reader runs after it
    for node in reversed(graph_module.graph.nodes):
        below[node] = any(below[user] or (user.op == "call_module" and user.target in readers)
                          for user in node.users)
    return {node.target for node in graph_module.graph.nodes
            if node.op == "call_module" and node.target in readers and not below[node]}


def _blocks(graph: ChannelGraph, ids: Sequence[int]) -> list[list[int]]:
    """The columns reading the same root, in order (every column once); empty when no two
    do (each column stays or goes on its own)."""
    by_root: dict[int, list[int]] = {}
    for column, i in enumerate(ids):
        by_root.setdefault(graph.find(i), []).append(column)
    blocks = list(by_root.values())
    return blocks if len(blocks) < len(ids) else []


def graph_of(layers: Sequence[PrunableLayer]) -> ChannelGraph:
    """The graph ``layers`` came from, or one built from hand-declared layers (each chain
    layer's producer and followers shrink with it; a gather layer's inputs stay whole)."""
    for layer in layers:
        if layer.graph is not None:
            return layer.graph
    graph = ChannelGraph()
    for layer in layers:
        ids = graph.fresh(layer.in_channels, fixed=layer.mode != "chain")
        graph.readers[layer.name], graph.columns[layer.name] = ids, list(range(len(ids)))
        graph.kinds[layer.name] = layer.kind
        graph.writers.setdefault(layer.name, [])
        graph.calls[layer.name] = 1
        if layer.shrinks_producer:
            graph.writers[layer.producer] = ids
            for follower in layer.followers:
                graph.followers[follower] = ids
    return graph


def choose_layers(layers: Sequence[PrunableLayer], skip_first: bool, skip_last: bool,
                  skip_names: Sequence[str]) -> list[PrunableLayer]:
    """The layers to prune after the skip rules; warns about skip names that match nothing."""
    unmatched = [s for s in skip_names if not any(s in layer.name for layer in layers)]
    if unmatched:
        warnings.warn(f"skip names {unmatched} match no prunable layer; layer names are: "
                      f"{', '.join(layer.name for layer in layers)}", stacklevel=2)
    chosen = []
    for i, layer in enumerate(layers):
        if (skip_first and layer.is_first) or (skip_last and i == len(layers) - 1):
            continue
        if any(s in layer.name for s in skip_names) or layer.in_channels < 2:
            continue
        chosen.append(layer)
    return chosen
