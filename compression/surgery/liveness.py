"""Liveness of channels over the fx trace: which channels of each tensor some later op reads.

From the output backwards: a conv / linear layer needs the input channels it reads, a
per-channel op passes its output's liveness to its input, a sum passes it to each member, a
concatenation splits it, a channel shuffle or a flatten maps it back to its source
(``compression.graph.channel_maps``), an in-place op (``x.mul_(a)``) passes the liveness of
what later reads the mutated tensor, and the output and every op without a rule need all.

``Liveness(gm).run()`` returns ``live[node]``; ``unknown`` names the ops without a rule and
``inexact`` the ops with a rule that could not be followed here (both needed every channel,
so a count of unread channels is a lower bound where either is not empty).
"""
from __future__ import annotations

import torch
from torch import fx, nn

from compression.graph.channel_maps import aligned, follow, source_grid
from compression.graph.ops import (channel_index, channel_role, is_inplace, keeps_channels,
                                   meta_shape, nodes_in, op_kind, op_name, prod)
from compression.surgery.picks import is_gather, is_scatter

Live = torch.Tensor        # bool, one entry per channel (dim 1) of a node's output
FOLLOWS = ("elementwise", "mul", "passthrough")


class Liveness:
    """``live[node]``: which channels of each node's output some later op needs."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.live: dict[fx.Node, object] = {}
        self.maps: dict[fx.Node, tuple[fx.Node, torch.Tensor]] = {}
        self.unknown: set[str] = set()
        self.inexact: set[str] = set()
        self.constants: set[fx.Node] = set()
        for node in gm.graph.nodes:      # computed from parameters alone (a layer scale's view)
            inputs = nodes_in((node.args, node.kwargs))
            if node.op == "get_attr" or node.op in ("call_function", "call_method") and inputs \
                    and all(i in self.constants for i in inputs):
                self.constants.add(node)

    def width(self, node) -> int | None:
        shape = meta_shape(node)
        return int(shape[1]) if shape is not None and len(shape) >= 2 else None

    def need(self, node, positions) -> None:
        """Mark ``positions`` (a bool tensor, True: all, or ``(index, bool tensor)`` for one
        element of a tuple-valued node) of ``node``'s output as needed."""
        if not isinstance(node, fx.Node) or node in self.constants:
            return                       # parameters and what is computed from them alone
        meta = node.meta.get("tensor_meta")
        if meta is not None and not hasattr(meta, "shape"):             # a tuple of tensors
            current = self.live.setdefault(node, [torch.zeros(int(m.shape[1]), dtype=torch.bool)
                                                  if hasattr(m, "shape") and len(m.shape) >= 2
                                                  else None for m in meta])
            items = enumerate(current) if positions is True else [positions]
            for i, part in items:
                if current[i] is not None:
                    current[i] |= True if positions is True else part
            return
        width = self.width(node)
        if width is None:
            self.live[node] = True
            return
        current = self.live.setdefault(node, torch.zeros(width, dtype=torch.bool))
        current |= positions if isinstance(positions, torch.Tensor) else bool(positions)

    def need_all(self, node: fx.Node, inexact: bool = False) -> None:
        if inexact:
            self.inexact.add(op_name(node.target))
        for arg in nodes_in((node.args, node.kwargs)):
            self.need(arg, True)

    def run(self) -> dict[fx.Node, object]:
        self.follow_maps()
        for node in reversed(list(self.gm.graph.nodes)):
            live = self.live.get(node)
            if is_inplace(node):
                self.inplace(node, live)
                continue
            if live is None and node.op != "output":
                continue                                  # nothing after it uses it
            getattr(self, f"op_{node.op}")(node, live)
        return self.live

    def follow_maps(self) -> None:
        """Forward: the channel map of every reshape / transpose / permute that moves channels
        off dim 1 (and of single-input per-channel ops on such a tensor)."""
        for node in self.gm.graph.nodes:
            kind = op_kind(node.target, node) if node.op in ("call_function", "call_method") else None
            if kind not in ("reshape", "passthrough") or not node.args:
                continue
            source = node.args[0]
            before, after = meta_shape(source), meta_shape(node)
            if before is None or after is None or len(before) < 2:
                continue
            if source in self.maps:
                origin, grid = self.maps[source]
            elif kind == "reshape" and not keeps_channels(node, reduce=False):
                origin, grid = source, source_grid(before)
            else:
                continue
            if kind == "passthrough":
                if after == before and not nodes_in((node.args[1:], node.kwargs)):
                    self.maps[node] = (origin, grid)
                continue
            moved = follow(node, grid, before, after)
            if moved is not None:
                self.maps[node] = (origin, moved)

    # -- transfer functions: what an op needs of its inputs given what is needed of it ----
    def op_placeholder(self, node, live) -> None:
        pass

    def op_get_attr(self, node, live) -> None:
        pass

    def op_output(self, node, live) -> None:
        self.need_all(node)

    def op_call_module(self, node, live) -> None:
        module = self.modules[node.target]
        role = "passthrough" if isinstance(module, nn.Flatten) else channel_role(module, node)
        if role is None:
            self.unknown.add(type(module).__name__)
        if node in self.maps:
            return self.remap(node, live)
        if role not in ("passthrough", "channelwise", "reader", "grouped") or not node.args \
                or not isinstance(live, torch.Tensor):
            return self.need_all(node)
        source = node.args[0]
        if role == "grouped":             # group g's outputs read group g's inputs only
            groups = live.reshape(module.groups, -1).any(dim=1)
            return self.need(source, groups.repeat_interleave(module.in_channels // module.groups))
        if role == "reader":
            own = live[module.out_index.cpu()] if is_scatter(module) else live
            if not bool(own.any()):
                return                    # nothing reads what it computes: nor what it reads
            if not is_gather(module):
                return self.need(source, True)
            needed = torch.zeros(self.width(source), dtype=torch.bool)
            needed[module.in_index.cpu()] = True
            return self.need(source, needed)
        if isinstance(module, nn.Flatten) and self.width(source) != len(live):
            return self.need_all(node, inexact=True)
        if is_scatter(module):
            live = live[module.out_index.cpu()]
        self.need(source, live)
        for arg in nodes_in((node.args[1:], node.kwargs)):
            self.need(arg, True)

    def op_call_function(self, node, live) -> None:
        self.call(node, node.target, live)

    def op_call_method(self, node, live) -> None:
        self.call(node, node.target, live)

    def call(self, node, target, live) -> None:
        kind = op_kind(target, node)
        if kind is None:
            if node.meta.get("tensor_meta") is not None:
                self.unknown.add(op_name(target))
            return self.need_all(node)
        if kind in ("shape", "constant"):
            return None
        if kind == "getitem":
            return self.getitem(node, live)
        if node in self.maps:
            return self.remap(node, live)
        if not isinstance(live, torch.Tensor) and kind != "split":
            return self.need_all(node)
        if kind in ("reshape", "reduce"):
            return self.same_channels(node, live, kind == "reduce")
        if kind in FOLLOWS:
            return self.elementwise(node, live)
        return getattr(self, kind)(node, live)

    def inplace(self, node, live) -> None:
        """``x.op_(...)``: what reads ``x`` after it reads what it wrote, so the op passes the
        liveness of its result and of ``x`` (gathered so far: the later readers) to its
        operands; an in-place op without a per-channel rule needs everything."""
        if op_kind(node.target) not in FOLLOWS or not node.args:
            if op_kind(node.target) is None:
                self.unknown.add(op_name(node.target))
            return self.need_all(node)
        live = _merged(live, self.live.get(node.args[0]))
        if live is None:
            return                           # nothing reads the result or the mutated tensor
        if not isinstance(live, torch.Tensor):
            return self.need_all(node)
        self.elementwise(node, live)

    def remap(self, node, live) -> None:
        """A tensor whose channels come from ``origin`` through a channel map."""
        origin, grid = self.maps[node]
        if not isinstance(live, torch.Tensor):
            return self.need(origin, True)
        channels = aligned(grid)
        if channels is None or len(channels) != len(live):
            if not bool(live.all()):       # some channels unread: which sources, not known here
                self.inexact.add(op_name(node.target))
            return self.need(origin, True)
        needed = torch.zeros(self.width(origin), dtype=torch.bool)
        needed[channels[live]] = True
        self.need(origin, needed)

    def same_channels(self, node, live, reduce: bool) -> None:
        if not keeps_channels(node, reduce):
            return self.need_all(node, inexact=True)
        self.need(node.args[0] if node.args else node.kwargs.get("input"), live)
        for arg in nodes_in((node.args[1:], node.kwargs)):
            self.need(arg, True)

    def elementwise(self, node, live) -> None:
        out_shape = meta_shape(node)
        for operand in nodes_in((node.args, node.kwargs)):
            shape = meta_shape(operand)
            if shape is None or prod(shape) == 1:
                self.need(operand, True)
            elif out_shape is not None and len(shape) == len(out_shape) >= 2 \
                    and shape[1] == out_shape[1]:
                self.need(operand, live)
            else:
                self.need(operand, True)                  # broadcast over channels

    def cat(self, node, live) -> None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        shape = meta_shape(node)
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        dim = dim + len(shape) if dim < 0 else dim
        if dim != 1:
            for t in tensors:
                self.need(t, live)
            return
        start = 0
        for t in tensors:
            width = self.width(t)
            self.need(t, live[start:start + width])
            start += width

    def split(self, node, live) -> None:
        source = node.args[0]
        shape = meta_shape(source)
        parts = live if isinstance(live, list) else None
        dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        if parts is None or shape is None or any(p is None for p in parts):
            return self.need(source, True)
        dim = dim + len(shape) if dim < 0 else dim
        if dim == 1:
            self.need(source, torch.cat(parts))
        else:
            merged = parts[0].clone()
            for p in parts[1:]:
                merged |= p
            self.need(source, merged)

    def getitem(self, node, live) -> None:
        source, index = node.args
        meta = source.meta.get("tensor_meta") if isinstance(source, fx.Node) else None
        if meta is not None and not hasattr(meta, "shape") and isinstance(index, int):
            return self.need(source, (index, live if isinstance(live, torch.Tensor) else True))
        width = self.width(source)
        if width is None or not isinstance(live, torch.Tensor):
            return self.need(source, True)
        channels = channel_index(index)
        if channels is None:
            self.inexact.add("getitem")
            return self.need(source, True)
        needed = torch.zeros(width, dtype=torch.bool)
        needed[torch.arange(width)[channels][live]] = True
        self.need(source, needed)


def _merged(a, b):
    """The union of two liveness values (None: nothing needed; True: everything)."""
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a | b
    return True
