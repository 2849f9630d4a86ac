"""Building the channel graph (``compression.graph.channel_graph.ChannelGraph``) from an fx trace,
op by op (the rules are listed in ``compression.graph``)."""
from __future__ import annotations

from typing import Sequence

from torch import fx, nn

from compression.graph.channel_graph import ChannelGraph
from compression.surgery.picks import is_scatter
from compression.graph.ops import (channel_index, channel_param, channel_role, keeps_channels,
                                   meta_shape, nodes_in, op_kind, op_name, prod, shaped_graph)
from compression.graph.pruners import pruner_for, registered_types


class _Builder:
    def __init__(self, graph_module: fx.GraphModule) -> None:
        self.gm = graph_module
        self.modules = dict(graph_module.named_modules())
        self.g = ChannelGraph()
        self.layout: dict[fx.Node, object] = {}
        self.gates: set[tuple[fx.Node, fx.Node]] = set()    # (mul node, its broadcast operand)
        self.broadcast: set[fx.Node] = set()                # 1x1-per-channel tensors
        self.last: dict[fx.Node, list[int]] = {}   # ids of the last dim of an (N, ..., C) tensor

    def ids(self, node) -> list[int] | None:
        value = self.layout.get(node) if isinstance(node, fx.Node) else None
        return value if isinstance(value, list) and (not value or isinstance(value[0], int)) else None

    def fix_args(self, node: fx.Node) -> None:
        for arg in nodes_in((node.args, node.kwargs)):
            self.g.fixed_ids.update(self.last.get(arg, ()))
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
            name = node.target if node.op == "call_module" else op_name(node.target)
            self.g.unhandled.setdefault(name, why)
        return self.fresh_for(node)
    constant = unknown          # zeros, ones...: fresh channels that read nothing

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
        if isinstance(module, nn.Linear) and len(meta_shape(source)) > 2:
            return self.last_dim_linear(node, module)
        role = channel_role(module, node)
        name = node.target
        first = name not in self.g.calls
        self.g.calls[name] = self.g.calls.get(name, 0) + 1
        if first:
            self.g.order.append(name)
        if role == "passthrough":
            if source in self.last:
                self.last[node] = self.last[source]
            return ids
        if role == "mixing":
            out = self.unknown(node)
            self.g.mixed_ids.update(out if isinstance(out, list) else ())
            return out
        if role == "grouped":
            return self.grouped(name, module, ids, first)
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

    def grouped(self, name: str, module: nn.Module, ids: list[int], first: bool) -> list[int]:
        """A grouped conv follows fresh output ids; group g's inputs and outputs are one root."""
        if first:
            self.g.followers[name] = self.g.fresh(module.out_channels)
            self.g.grouped.add(name)
        out, width_in = self.g.followers[name], len(ids) // module.groups
        width_out = module.out_channels // module.groups
        for k in range(module.groups):
            block = ids[k * width_in:(k + 1) * width_in] + out[k * width_out:(k + 1) * width_out]
            self.g.union(block[:1] * (len(block) - 1), block[1:])
        return out

    def last_dim_linear(self, node: fx.Node, module: nn.Linear):
        """A linear layer on (N, ..., C) reads and writes the last dim (channels-last code: the
        MLP of a ConvNeXt or transformer block): its features are ids of ``self.last``; its
        input features are fixed unless an earlier layer wrote them. Never gathered (a pick
        along dim 1 would pick the wrong dim): ``analyse`` prunes it only with its producer."""
        name = node.target
        ids = self.last.get(node.args[0]) or self.g.fresh(module.in_features, fixed=True)
        if name not in self.g.calls:
            self.g.order.append(name)
            self.g.readers[name], self.g.columns[name] = ids, list(range(len(ids)))
            self.g.kinds[name], self.g.private[name] = "linear", []
            self.g.writers[name] = self.g.fresh(module.out_features)
            self.g.last_dim.add(name)
        else:
            self.g.union(self.g.readers[name], ids)
        self.g.calls[name] = self.g.calls.get(name, 0) + 1
        self.last[node] = self.g.writers[name]
        return self.fresh_for(node)             # dim 1 of a channels-last tensor: not channels

    def scattered(self, name: str, module: nn.Module, ids: list[int]) -> list[int]:
        """The ids of a ``Scatter*`` module's wide output: its own channels at ``out_index``,
        the zero channels between them (``compression.surgery.picks``)."""
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
            elif op_kind(node.target, node) != "passthrough":
                break
            node = node.args[0]
        return found

    def op_call_function(self, node: fx.Node):
        return self.call(node, node.target)

    op_call_method = op_call_function

    def call(self, node: fx.Node, target):
        kind = op_kind(target, node)
        if kind == "shape":
            return None
        if kind == "getitem":
            return self.getitem(node)
        if node.meta.get("tensor_meta") is None:
            return None
        if kind in ("elementwise", "mul", "passthrough"):
            return self.elementwise(node, kind == "mul")
        if kind is None:
            return self.unknown(node, "no channel rule (compression.graph.ops.register_op)")
        return getattr(self, kind)(node)

    def _dim(self, node: fx.Node, position: int, default: int, rank: int) -> int:
        dim = node.kwargs.get("dim", node.args[position] if len(node.args) > position else default)
        return dim + rank if isinstance(dim, int) and dim < 0 else dim

    def cat(self, node: fx.Node):
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        shape = meta_shape(node)
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
        shape = meta_shape(node.args[0])
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
        channels = channel_index(index)
        if channels is None:
            return self.unknown(node)
        if channels != slice(None):
            self.g.fixed_ids.update(ids)                 # a slice at fixed channel indices
        return ids if channels == slice(None) else ids[channels]

    def reshape(self, node: fx.Node):
        source = node.args[0] if node.args else node.kwargs.get("input")
        ids, before = self.ids(source), meta_shape(source)
        if ids is None or not keeps_channels(node, reduce=False):
            return self.unknown(node)
        if node.target in ("expand", "expand_as") and (
                source in self.broadcast or prod(before[2:]) == 1):
            self.broadcast.add(node)              # a per-channel value spread over the map
        return ids

    def reduce(self, node: fx.Node):
        ids = self.ids(node.args[0])
        if ids is None or not keeps_channels(node, reduce=True):
            return self.unknown(node)
        return ids

    def elementwise(self, node: fx.Node, is_mul: bool):
        self.follow_last(node)
        out_shape = meta_shape(node)
        if out_shape is None or len(out_shape) < 2:
            return self.unknown(node)
        full, params = None, []
        for operand in nodes_in((node.args, node.kwargs)):
            shape, ids = meta_shape(operand), self.ids(operand)
            if shape is None or prod(shape) == 1:
                continue                                    # a scalar or a Python number
            param = channel_param(self.gm, operand, out_shape)
            if param is not None:
                params.append(param)                        # a layer scale: it shrinks along
                continue
            if ids is None or len(shape) != len(out_shape):
                return self.unknown(node)                   # broadcast across dim 1 from the right
            if shape[1] == out_shape[1]:
                if full is None:
                    full = ids
                else:
                    self.g.union(full, ids)
                if is_mul and (operand in self.broadcast or prod(shape[2:]) == 1
                               and prod(out_shape[2:]) > 1):
                    self.gates.add((node, operand))
            else:
                self.g.fixed_ids.update(ids)                # one map broadcast over channels
        if full is None:
            return self.unknown(node)
        for target, dim in params:
            if target in self.g.params:
                self.g.union(self.g.params[target][0], full)
            else:
                self.g.params[target] = (full, dim)
        return full

    def follow_last(self, node: fx.Node) -> None:
        """Last-dim features through a per-element op: one tensor operand passes them on;
        with several (a sum, a layer-scale product) they are kept whole."""
        tensors = [a for a in nodes_in((node.args, node.kwargs))
                   if meta_shape(a) is not None and prod(meta_shape(a)) > 1]
        if not any(a in self.last for a in tensors):
            return
        if len(tensors) == 1:
            self.last[node] = self.last[tensors[0]]
            return
        for a in tensors:
            self.g.fixed_ids.update(self.last.get(a, ()))

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
