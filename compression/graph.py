"""Channel dependency graph over a torch.fx trace, one node per channel.

Every channel (dim 1) of every tensor the model computes gets an id; ids that must be removed
together are merged (union-find), following the ops of the trace:

- a conv / linear (a *reader*, ``compression.layer_pruners``) reads the ids of its input and
  *writes* new ids, one per output channel;
- per-channel modules and functions (BN, depthwise conv, activations, pooling, 1x1 flatten,
  view/reshape that keep dim 1) pass the ids through; channelwise modules with parameters are
  the *followers* of the ids they see;
- ``add`` / ``sub`` / ``mul`` / ``div`` of tensors of equal width merge the ids position by
  position (a residual sum couples its members; a squeeze-and-excitation ``x * s`` couples the
  trunk with the gate's last layer);
- ``cat`` on dim 1 concatenates id lists; ``split`` / ``chunk`` / ``x[:, a:b]`` slice them
  (and fix the channels they split: the code cuts at fixed widths);
- the network input, the output, layers that mix channels (LayerNorm, grouped convs) and any
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
"""
from __future__ import annotations

import logging
import operator
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from compression.channel_picks import is_scatter
from compression.layer_pruners import pruner_for, registered_types

log = logging.getLogger("pocketflow")


class GraphError(RuntimeError):
    """The model cannot be analysed (e.g. torch.fx cannot trace it)."""


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
    graph: "ChannelGraph | None" = field(default=None, repr=False, compare=False)

    @property
    def shrinks_producer(self) -> bool:
        return self.mode == "chain" and self.producer is not None


def is_depthwise(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return _Tracer().trace_module(model)
    except Exception as exc:  # torch.fx raises many kinds of errors on dynamic code
        raise GraphError(
            f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Make forward() free of "
            "data-dependent Python control flow, or declare the prunable layers yourself as a "
            "list of compression.graph.PrunableLayer and pass it as `layers=`.") from exc


class _Tracer(fx.Tracer):
    """Every module with a registered pruner is a leaf (a user's Conv2d subclass included)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return pruner_for(m) is not None or super().is_leaf_module(m, qualname)

    def trace_module(self, model: nn.Module) -> fx.GraphModule:
        graph = self.trace(model)
        return fx.GraphModule(model, graph, type(model).__name__)


# -- the ops the graph understands -----------------------------------------------------------
PASSTHROUGH_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.softplus, F.sigmoid, F.tanh, torch.relu, torch.sigmoid,
    torch.tanh, torch.abs, torch.neg, torch.exp, torch.sqrt, torch.clamp, torch.clip,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.max_pool1d, F.max_pool2d, F.max_pool3d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.interpolate, F.upsample, F.pad, operator.neg, operator.pos}
PASSTHROUGH_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "abs", "neg", "exp", "sqrt",
    "clamp", "clamp_", "clip", "contiguous", "clone", "detach", "float", "half", "bfloat16",
    "to", "type_as", "pow", "__pow__"}
ELEMENTWISE_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv,
                         operator.iadd, operator.isub, operator.imul, operator.itruediv,
                         torch.add, torch.sub, torch.mul, torch.div, torch.maximum,
                         torch.minimum, torch.where, operator.pow}
ELEMENTWISE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_",
                       "__add__", "__radd__", "__mul__", "__rmul__", "maximum", "minimum"}
MUL_TARGETS = {operator.mul, operator.imul, torch.mul, "mul", "mul_", "__mul__", "__rmul__"}
RESHAPE_TARGETS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, "flatten",
                   "view", "reshape", "squeeze", "unsqueeze", "expand", "expand_as"}
REDUCE_TARGETS = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"}
SPLIT_TARGETS = {torch.split, torch.chunk, torch.tensor_split, "split", "chunk", "tensor_split"}
SHAPE_TARGETS = {"size", "dim", "numel", getattr}


def _meta_shape(value) -> tuple | None:
    meta = value.meta.get("tensor_meta") if isinstance(value, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _prod(dims: Sequence[int]) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def _nodes_in(value) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(value, found.append)
    return found


class ChannelGraph:
    """Channel ids merged by union-find, and who writes, follows and reads them."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed_ids: set[int] = set()
        self.input_ids: set[int] = set()
        self.writers: dict[str, list[int]] = {}        # module -> ids of its output channels
        self.followers: dict[str, list[int]] = {}      # channelwise module -> ids it sees
        self.readers: dict[str, list[int]] = {}        # module -> ids its input actually has
        self.columns: dict[str, list[int]] = {}        # module -> input position of each column
        self.gathered: set[str] = set()                # readers that are Gather modules
        self.calls: dict[str, int] = {}
        self.order: list[str] = []
        self.kinds: dict[str, str] = {}
        self.gate_readers: set[str] = set()
        self.mixed_ids: set[int] = set()               # outputs of layers that mix channels
        self.private: dict[str, list[str]] = {}        # reader -> channelwise modules only it reads
        self.scatters: dict[str, tuple[list[int], list[int]]] = {}  # Scatter module -> (ids of
        # its wide output, where its own channels lie in it)
        self.input_shape: tuple[int, ...] | None = None
        self.unhandled: dict[str, str] = {}

    # -- union-find ------------------------------------------------------------------------
    def fresh(self, n: int, fixed: bool = False) -> list[int]:
        ids = list(range(len(self.parent), len(self.parent) + n))
        self.parent.extend(ids)
        if fixed:
            self.fixed_ids.update(ids)
        return ids

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: Sequence[int], b: Sequence[int]) -> None:
        for x, y in zip(a, b):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def roots(self, ids: Sequence[int]) -> list[int]:
        return [self.find(i) for i in ids]

    # -- derived facts ---------------------------------------------------------------------
    def fixed_roots(self) -> set[int]:
        return {self.find(i) for i in self.fixed_ids}

    def read_ids(self, name: str) -> list[int]:
        """The ids a reader's weight columns read (its gathered input for a Gather module)."""
        ids = self.readers[name]
        return [ids[p] for p in self.columns[name]]

    def voters(self) -> dict[int, set[str]]:
        """root -> the readers (gate readers excepted) that read it."""
        voters: dict[int, set[str]] = {}
        for name in self.readers:
            if name in self.gate_readers:
                continue
            for root in self.roots(self.read_ids(name)):
                voters.setdefault(root, set()).add(name)
        return voters

    def survivors(self, keep: Mapping[str, torch.Tensor], keep_shared: bool = False) -> set[int]:
        """Roots that stay: fixed, kept by a reader (all its inputs when it is not in
        ``keep``), or read by no reader but a gate's; with ``keep_shared`` also every root
        several readers read (the architecture ``ChannelFlops.flops`` counts)."""
        alive = self.fixed_roots()
        voters = self.voters()
        alive.update(r for r in {self.find(i) for i in range(len(self.parent))}
                     if r not in voters or keep_shared and len(voters[r]) > 1)
        for name in self.readers:
            if name in self.gate_readers:
                continue
            ids = self.read_ids(name)
            index = keep.get(name)
            positions = range(len(ids)) if index is None else torch.as_tensor(index).tolist()
            alive.update(self.find(ids[p]) for p in positions)
        for ids in self.writers.values():        # a layer keeps at least one output channel
            if ids and not any(self.find(i) in alive for i in ids):
                alive.add(self.find(ids[0]))
        return alive

    def plan(self, keep: Mapping[str, torch.Tensor], keep_shared: bool = False) -> dict[str, dict]:
        """``module -> change`` for every module that changes when each reader in ``keep``
        keeps those input columns: ``out`` (kept output channels of a writer), ``channels`` (of
        a follower), ``in`` (kept weight columns of a reader) and ``gather`` (where they lie in
        the reader's new, narrower input; absent when it reads all of it)."""
        alive = self.survivors(keep, keep_shared)
        plan: dict[str, dict] = {}

        def alive_positions(ids: Sequence[int]) -> list[int]:
            return [p for p, i in enumerate(ids) if self.find(i) in alive]

        for name, ids in self.writers.items():
            out = alive_positions(ids)
            if len(out) < len(ids):
                plan.setdefault(name, {})["out"] = torch.tensor(out, dtype=torch.long)
        for name, ids in self.followers.items():
            channels = alive_positions(ids)
            if len(channels) < len(ids):
                plan.setdefault(name, {})["channels"] = torch.tensor(channels, dtype=torch.long)
        for name, ids in self.readers.items():
            columns = self.columns[name]
            index = keep.get(name)
            if name in self.gate_readers or index is None:
                kept = [c for c, p in enumerate(columns) if self.find(ids[p]) in alive]
            else:
                kept = sorted(torch.as_tensor(index).tolist())
            now = alive_positions(ids)                      # the reader's new input channels
            rank = {p: r for r, p in enumerate(now)}
            gather = [rank[columns[c]] for c in kept]
            was_gather = name in self.gathered
            change = {}
            if len(kept) < len(columns):
                change["in"] = torch.tensor(kept, dtype=torch.long)
            if was_gather and gather == columns and len(now) == len(ids):
                pass                                        # the same pick of the same input
            elif gather != list(range(len(now))):
                change["gather"] = torch.tensor(gather, dtype=torch.long)
            elif was_gather:
                change["gather"] = None                     # reads all that is left: plain
            if change:
                plan.setdefault(name, {}).update(change)
        for name, (wide, index) in self.scatters.items():
            now = alive_positions(wide)
            if len(now) == len(wide):
                continue
            rank = {p: r for r, p in enumerate(now)}
            placed = [rank[p] for p in index if p in rank]
            plan.setdefault(name, {})["scatter"] = (
                None if placed == list(range(len(now)))
                else (torch.tensor(placed, dtype=torch.long), len(now)))
        return plan

    def fractions(self, kept: Mapping[str, int]) -> dict[int, float]:
        """root -> expected fraction kept when each layer in ``kept`` keeps that many input
        channels: its share for channels one chosen reader alone reads, 1 otherwise (a
        channel several readers share may still survive through any of them)."""
        fixed = self.fixed_roots()
        out: dict[int, float] = {}
        for root, names in self.voters().items():
            if root in fixed or len(names) != 1:
                continue
            (name,) = names
            if name in kept:
                out[root] = kept[name] / len(self.columns[name])
        return out

    def expected(self, ids: Sequence[int], fractions: Mapping[int, float]) -> int:
        return round(sum(fractions.get(self.find(i), 1.0) for i in ids))


# -- building the graph from a trace ---------------------------------------------------------
class _Builder:
    def __init__(self, graph_module: fx.GraphModule) -> None:
        self.gm = graph_module
        self.modules = dict(graph_module.named_modules())
        self.g = ChannelGraph()
        self.layout: dict[fx.Node, object] = {}
        self.gates: set[tuple[fx.Node, fx.Node]] = set()    # (mul node, its broadcast operand)
        self.broadcast: set[fx.Node] = set()                # 1x1-per-channel tensors

    def ids(self, node) -> list[int] | None:
        value = self.layout.get(node) if isinstance(node, fx.Node) else None
        return value if isinstance(value, list) and (not value or isinstance(value[0], int)) else None

    def fix_args(self, node: fx.Node) -> None:
        for arg in _nodes_in((node.args, node.kwargs)):
            value = self.layout.get(arg)
            for ids in (value if isinstance(value, tuple) else (value,)):
                if isinstance(ids, list):
                    self.g.fixed_ids.update(ids)

    def fresh_for(self, node: fx.Node, fixed: bool = True):
        meta = node.meta.get("tensor_meta")
        if meta is None:
            return None
        if not hasattr(meta, "shape"):                   # a tuple of tensors
            return tuple(self.g.fresh(int(m.shape[1]), fixed) if hasattr(m, "shape") and len(m.shape) >= 2
                         else None for m in meta)
        shape = tuple(meta.shape)
        return self.g.fresh(int(shape[1]), fixed) if len(shape) >= 2 else None

    def unknown(self, node: fx.Node, why: str | None = None) -> object:
        self.fix_args(node)
        if why:
            self.g.unhandled.setdefault(str(node.target), why)
        return self.fresh_for(node)

    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            handler = getattr(self, f"op_{node.op}")
            self.layout[node] = handler(node)
        return self.g

    # -- node kinds ------------------------------------------------------------------------
    def op_placeholder(self, node: fx.Node):
        ids = self.fresh_for(node)
        if isinstance(ids, list):
            self.g.input_ids.update(ids)
        return ids

    def op_get_attr(self, node: fx.Node):
        return self.fresh_for(node)

    def op_output(self, node: fx.Node):
        self.fix_args(node)

    def op_call_module(self, node: fx.Node):
        module = self.modules[node.target]
        if isinstance(module, nn.Flatten):
            return self.reshape(node)
        pruner = pruner_for(module)
        if pruner is None:
            return self.unknown(node, f"{type(module).__name__} (no pruner registered; "
                                      f"registered: {', '.join(registered_types())})")
        source = node.args[0] if node.args else None
        ids = self.ids(source)
        if ids is None:
            return self.unknown(node)
        role = pruner.role(module)
        if role == "reader" and isinstance(module, nn.Linear) and len(_meta_shape(source)) != 2:
            role = "mixing"          # a linear layer on (N, ..., C) reads the last dim, not dim 1
        name = node.target
        first = name not in self.g.calls
        self.g.calls[name] = self.g.calls.get(name, 0) + 1
        if first:
            self.g.order.append(name)
        if role == "passthrough":
            return ids
        if role == "mixing":
            out = self.unknown(node)
            if isinstance(out, list):
                self.g.mixed_ids.update(out)
            return out
        if role == "channelwise":
            if first:
                self.g.followers[name] = ids
            else:                    # one module called twice: its channels are the same
                self.g.union(self.g.followers[name], ids)
            return self.scattered(name, module, ids)
        # a reader: its weight columns read the input (through the gather of a Gather module)
        if first:
            index = getattr(module, "in_index", None)
            self.g.readers[name] = ids
            self.g.columns[name] = index.tolist() if index is not None else list(range(len(ids)))
            if index is not None:
                self.g.gathered.add(name)
            self.g.kinds[name] = "linear" if isinstance(module, nn.Linear) else "conv"
            self.g.private[name] = self.private_path(source)
            self.g.writers[name] = self.g.fresh(pruner.channels(module)[1])
        else:
            self.g.union(self.g.readers[name], ids)
        return self.scattered(name, module, self.g.writers[name])

    def scattered(self, name: str, module: nn.Module, ids: list[int]) -> list[int]:
        """The ids of a ``Scatter*`` module's wide output: its own channels at ``out_index``,
        the zero channels between them (``compression.channel_picks``)."""
        if not is_scatter(module):
            return ids
        if name not in self.g.scatters:
            self.g.scatters[name] = (self.g.fresh(module.scatter_width), module.out_index.tolist())
        wide, index = self.g.scatters[name]
        self.g.union([wide[p] for p in index], ids)
        return wide

    def private_path(self, node) -> list[str]:
        """Channelwise modules on the single-user path that ends at a reader, nearest first."""
        found = []
        while isinstance(node, fx.Node) and len(node.users) == 1 and node.args:
            if node.op == "call_module":
                module = self.modules[node.target]
                pruner = pruner_for(module)
                role = pruner.role(module) if pruner is not None else None
                if role == "channelwise":
                    found.append(node.target)
                elif role != "passthrough":
                    break
            elif node.target not in PASSTHROUGH_FUNCTIONS and node.target not in PASSTHROUGH_METHODS:
                break
            node = node.args[0]
        return found

    def op_call_function(self, node: fx.Node):
        return self.call(node, node.target)

    def op_call_method(self, node: fx.Node):
        return self.call(node, node.target)

    def call(self, node: fx.Node, target):
        if target in SHAPE_TARGETS:
            return None
        if target is operator.getitem:
            return self.getitem(node)
        if node.meta.get("tensor_meta") is None:
            return None
        if target is torch.cat or target == "cat":
            return self.cat(node)
        if target in SPLIT_TARGETS:
            return self.split(node)
        if target in RESHAPE_TARGETS:
            return self.reshape(node)
        if target in REDUCE_TARGETS:
            return self.reduce(node)
        if target in ELEMENTWISE_FUNCTIONS or target in ELEMENTWISE_METHODS:
            return self.elementwise(node, target in MUL_TARGETS)
        if target in PASSTHROUGH_FUNCTIONS or target in PASSTHROUGH_METHODS:
            return self.elementwise(node, False)
        return self.unknown(node)

    def _dim(self, node: fx.Node, position: int, default: int, rank: int) -> int:
        dim = node.kwargs.get("dim", node.args[position] if len(node.args) > position else default)
        return dim + rank if isinstance(dim, int) and dim < 0 else dim

    def cat(self, node: fx.Node):
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        shape = _meta_shape(node)
        layouts = [self.ids(t) for t in tensors]
        if any(ids is None for ids in layouts) or len(shape) < 2:
            return self.unknown(node)
        dim = self._dim(node, 1, 0, len(shape))
        if dim == 1:
            return [i for ids in layouts for i in ids]
        for ids in layouts[1:]:
            self.g.union(layouts[0], ids)
        return layouts[0]

    def split(self, node: fx.Node):
        ids = self.ids(node.args[0])
        shape = _meta_shape(node.args[0])
        meta = node.meta.get("tensor_meta")
        if ids is None or hasattr(meta, "shape") or not isinstance(meta, (tuple, list)):
            return self.unknown(node)
        if self._dim(node, 2, 0, len(shape)) != 1:
            return tuple(ids for _ in meta)
        self.g.fixed_ids.update(ids)     # the code splits at fixed widths: they must stay
        parts, start = [], 0
        for m in meta:
            width = int(m.shape[1])
            parts.append(ids[start:start + width])
            start += width
        return tuple(parts)

    def getitem(self, node: fx.Node):
        source, index = node.args
        value = self.layout.get(source) if isinstance(source, fx.Node) else None
        if isinstance(value, tuple) and isinstance(index, int):
            return value[index]
        ids = self.ids(source)
        if ids is None or node.meta.get("tensor_meta") is None:
            return None if ids is None else self.unknown(node)
        if index == slice(None) or index is Ellipsis:
            return ids
        if isinstance(index, tuple) and index and index[0] == slice(None) and all(
                isinstance(i, slice) and not any(isinstance(v, fx.Node) for v in (i.start, i.stop, i.step))
                for i in index):
            if len(index) > 1 and index[1] != slice(None):
                self.g.fixed_ids.update(ids)             # a slice at fixed channel indices
                return ids[index[1]]
            return ids
        return self.unknown(node)

    def reshape(self, node: fx.Node):
        source = node.args[0] if node.args else node.kwargs.get("input")
        ids, before, after = self.ids(source), _meta_shape(source), _meta_shape(node)
        if ids is None or not before or not after or len(after) < 2 or after[:2] != before[:2]:
            return self.unknown(node)
        if node.target in ("expand", "expand_as") and (
                source in self.broadcast or _prod(before[2:]) == 1):
            self.broadcast.add(node)              # a per-channel value spread over the map
        return ids

    def reduce(self, node: fx.Node):
        source = node.args[0]
        shape = _meta_shape(source)
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if shape is None or dims is None:
            return self.unknown(node)
        dims = {d % len(shape) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
        if dims & {0, 1} or self.ids(source) is None:
            return self.unknown(node)
        return self.ids(source)

    def elementwise(self, node: fx.Node, is_mul: bool):
        out_shape = _meta_shape(node)
        if out_shape is None or len(out_shape) < 2:
            return self.unknown(node)
        full = None
        for operand in _nodes_in((node.args, node.kwargs)):
            shape, ids = _meta_shape(operand), self.ids(operand)
            if shape is None or _prod(shape) == 1:
                continue                                    # a scalar or a Python number
            if ids is None or len(shape) != len(out_shape):
                return self.unknown(node)                   # broadcast across dim 1 from the right
            if shape[1] == out_shape[1]:
                if full is None:
                    full = ids
                else:
                    self.g.union(full, ids)
                if is_mul and (operand in self.broadcast or _prod(shape[2:]) == 1
                               and _prod(out_shape[2:]) > 1):
                    self.gates.add((node, operand))
            else:
                self.g.fixed_ids.update(ids)                # one map broadcast over channels
        return full if full is not None else self.unknown(node)

    # -- readers whose result returns as a gate on their own channels ----------------------
    def mark_gate_readers(self, node_of: dict[str, fx.Node]) -> None:
        for name, ids in self.g.readers.items():
            if self.g.calls[name] == 1 and self._only_gates(node_of[name], set(self.g.roots(ids))):
                self.g.gate_readers.add(name)

    def _only_gates(self, start: fx.Node, roots: set[int]) -> bool:
        seen, stack, gated = {start}, [start], False
        while stack:
            node = stack.pop()
            for user in node.users:
                if (user, node) in self.gates:
                    ids = self.ids(user)
                    if ids is None or not roots & set(self.g.roots(ids)):
                        return False
                    gated = True
                    continue
                if user.op == "output":
                    return False
                if user not in seen:
                    seen.add(user)
                    stack.append(user)
        return gated


def shaped_graph(model: nn.Module, input_shape: Sequence[int]) -> fx.GraphModule:
    """The fx trace of ``model`` with ``tensor_meta`` from one zero input (eval mode)."""
    graph_module = trace(model)
    was_training = model.training
    graph_module.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        with torch.no_grad():
            ShapeProp(graph_module).propagate(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return graph_module


def build_graph(model: nn.Module, input_shape: Sequence[int]) -> tuple[ChannelGraph, fx.GraphModule]:
    graph_module = shaped_graph(model, input_shape)
    builder = _Builder(graph_module)
    graph = builder.run()
    graph.input_shape = tuple(input_shape)
    node_of = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            node_of.setdefault(node.target, node)
    builder.mark_gate_readers(node_of)
    return graph, graph_module


def analyse(model: nn.Module, input_shape: Sequence[int]) -> list[PrunableLayer]:
    """Every conv / linear layer whose input channels a learner may prune, in execution
    order, with its mode; all share the model's ``ChannelGraph`` (``layer.graph``)."""
    graph, _ = build_graph(model, input_shape)
    modules = dict(model.named_modules())
    if graph.unhandled:
        log.info("channel graph: kept whole around %s", "; ".join(
            f"{name}: {why}" for name, why in sorted(graph.unhandled.items())))
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
        producer, followers = None, []
        if chain:
            wanted = graph.roots(ids)
            producer = next((w for w in graph.order if w in graph.writers and w != name
                             and graph.roots(graph.writers[w]) == wanted), None)
            followers = sorted((f for f, f_ids in graph.followers.items()
                                if f_ids and set(graph.roots(f_ids)) <= roots),
                               key=lambda f: -position[f])
        layers.append(PrunableLayer(
            name, graph.kinds[name], len(ids), "chain" if chain else "gather", producer,
            followers, is_first=bool(set(graph.readers[name]) & graph.input_ids),
            private=[] if name in graph.gathered else graph.private[name], graph=graph))
    return layers


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
