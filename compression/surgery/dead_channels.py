"""Dead-channel elimination: no layer computes a channel that nothing reads afterwards.

The channel graph (``compression.graph``) removes a channel when no reader keeps it, along a
whole residual stream at once. What it cannot see is *when* a channel is read: a residual
stream ``x1 = x0 + f1(x0)``, ``x2 = x1 + f2(x1)`` keeps a channel that only ``f1`` reads, so
``f2``'s last layer still computes it, and nobody reads it after ``x2``. This pass finds such
channels by liveness over the fx trace of a (thinned) model, from the output backwards: a
channel of a tensor is *live* when an op after it needs it (a conv / linear needs the input
channels it reads, a per-channel op passes its output's liveness to its input, a sum passes it
to each member, a concatenation splits it, the output and any op the graph does not know need
every channel).

Every conv / linear layer (a *writer*) with dead output channels then computes only its live
ones: the writer and the per-channel modules on its private path (BN, depthwise convs,
activations) shrink, and the last of them becomes a ``Scatter*`` module
(``compression.surgery.picks``) that places the live channels at their positions of the
tensor the sum expects, zeros in the dead ones. Exact: the zeros lie only in channels no later
op reads. ``eliminate(model, input_shape)`` returns the new model and the modules it changed;
``unread_outputs`` counts the dead output channels per writer (0 everywhere after the pass).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import fx, nn

from compression.surgery.picks import is_gather, is_scatter, set_scatter, set_submodule
from compression.graph.ops import (channel_index, channel_role, keeps_channels, meta_shape,
                                   nodes_in, op_kind, prod, shaped_graph)
from compression.graph.pruners import pruner_for
from utils.model_stats import count_flops

Live = torch.Tensor        # bool, one entry per channel (dim 1) of a node's output


class _Liveness:
    """``live[node]``: which channels of each node's output some later op needs."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.live: dict[fx.Node, object] = {}

    def width(self, node) -> int | None:
        shape = meta_shape(node)
        return int(shape[1]) if shape is not None and len(shape) >= 2 else None

    def need(self, node, positions) -> None:
        """Mark ``positions`` (a bool tensor, True: all, or ``(index, bool tensor)`` for one
        element of a tuple-valued node) of ``node``'s output as needed."""
        if not isinstance(node, fx.Node):
            return
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

    def need_all(self, node: fx.Node) -> None:
        for arg in nodes_in((node.args, node.kwargs)):
            self.need(arg, True)

    def run(self) -> dict[fx.Node, object]:
        for node in reversed(list(self.gm.graph.nodes)):
            live = self.live.get(node)
            if node.op == "call_method" and node.target.endswith("_") \
                    and not node.target.startswith("__"):
                self.need_all(node)         # in place: what it writes is read as its input
                continue
            if live is None and node.op != "output":
                continue                                  # nothing after it uses it
            getattr(self, f"op_{node.op}")(node, live)
        return self.live

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
        if role not in ("passthrough", "channelwise", "reader") or not node.args \
                or not isinstance(live, torch.Tensor):
            return self.need_all(node)
        source = node.args[0]
        if role == "reader":
            if not is_gather(module):
                return self.need(source, True)
            needed = torch.zeros(self.width(source), dtype=torch.bool)
            needed[module.in_index.cpu()] = True
            return self.need(source, needed)
        if isinstance(module, nn.Flatten) and self.width(source) != len(live):
            return self.need_all(node)
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
        kind = op_kind(target)
        if kind == "shape":
            return None
        if kind == "getitem":
            return self.getitem(node, live)
        if not isinstance(live, torch.Tensor) and kind != "split":
            return self.need_all(node)
        if kind in ("reshape", "reduce"):
            return self.same_channels(node, live, kind == "reduce")
        if kind in ("elementwise", "mul", "passthrough"):
            return self.elementwise(node, live)
        if kind is None:
            return self.need_all(node)
        return getattr(self, kind)(node, live)

    def same_channels(self, node, live, reduce: bool) -> None:
        if not keeps_channels(node, reduce):
            return self.need_all(node)
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
            return self.need(source, True)
        needed = torch.zeros(width, dtype=torch.bool)
        needed[torch.arange(width)[channels][live]] = True
        self.need(source, needed)


def _single_calls(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """module -> its call node, for the modules called exactly once."""
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    return {name: nodes[0] for name, nodes in calls.items() if len(nodes) == 1}


def _writer_nodes(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """Conv / linear modules (readers in the graph's sense) called exactly once."""
    modules = dict(gm.named_modules())
    return {name: node for name, node in _single_calls(gm).items()
            if channel_role(modules[name], node) == "reader"}


def _live_outputs(module: nn.Module, live) -> torch.Tensor:
    """The live channels of what ``module`` itself computes (before its scatter)."""
    if not isinstance(live, torch.Tensor):
        live = torch.ones(len(module.out_index) if is_scatter(module) else 0, dtype=torch.bool)
    return live[module.out_index.cpu()] if is_scatter(module) else live


def unread_outputs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """``writer -> output channels nothing reads afterwards`` (writers with none left out)."""
    gm = shaped_graph(model, input_shape)
    live = _Liveness(gm).run()
    modules = dict(gm.named_modules())
    out = {}
    for name, node in _writer_nodes(gm).items():
        own = _live_outputs(modules[name], live.get(node, torch.zeros(0, dtype=torch.bool)))
        dead = int((~own).sum()) if node in live else _out_channels(modules[name])
        if dead:
            out[name] = dead
    return out


def _out_channels(module: nn.Module) -> int:
    return pruner_for(module).channels(module)[1]


def _private_chain(gm: fx.GraphModule, node: fx.Node, single: dict) -> list[str]:
    """Per-channel modules after ``node`` on a path of single users, nearest first (where the
    writer's scatter can move to, so they shrink too)."""
    modules, chain = dict(gm.named_modules()), []
    while len(node.users) == 1:
        (user,) = node.users
        if user.args[:1] != (node,):
            break
        if user.op == "call_module":
            module = modules[user.target]
            role = channel_role(module, user)
            if role == "channelwise" and user.target in single:
                chain.append(user.target)
                if is_scatter(module):
                    break
            elif role != "passthrough" or is_scatter(module):
                break
        elif op_kind(user.target) != "passthrough":
            break
        node = user
    # the scatter goes on the last per-channel module; later passthrough ops see the zeros
    return chain


@torch.no_grad()
def eliminate(model: nn.Module, input_shape: Sequence[int]) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` in which no conv / linear layer computes an output channel that no
    later op reads, and the names of the modules that changed (see the module docstring)."""
    gm = shaped_graph(model, input_shape)
    live = _Liveness(gm).run()
    modules, single = dict(model.named_modules()), _single_calls(gm)
    model, changed = copy.deepcopy(model), []
    for name, node in _writer_nodes(gm).items():
        writer = modules[name]
        chain = [] if is_scatter(writer) else _private_chain(gm, node, single)
        host = chain[-1] if chain else name
        host_live = live.get(single[host])
        if not isinstance(host_live, torch.Tensor):
            continue
        own = _live_outputs(modules[host], host_live).clone()
        if own.all():
            continue
        if not own.any():
            own[0] = True                                 # a layer keeps one channel
        keep = own.nonzero().flatten()
        pruner = pruner_for(writer)
        set_submodule(model, name, pruner.shrink(model.get_submodule(name), None, keep))
        for follower in chain:
            module = model.get_submodule(follower)
            set_submodule(model, follower, pruner_for(module).shrink_channels(module, keep))
        target = model.get_submodule(host)
        if is_scatter(modules[host]):
            set_scatter(target, modules[host].out_index[keep.to(modules[host].out_index.device)],
                        modules[host].scatter_width)
        else:
            set_scatter(target, keep, len(own))
        changed.extend([name, *chain])
    return model, changed


def report(before: nn.Module, after: nn.Module, input_shape: Sequence[int]) -> dict:
    """What ``eliminate`` did (``after`` is ``before`` when it did not run): output channels
    removed per writer, FLOPs before and after, and the unread output channels left (counted
    again on the result: 0 after the pass)."""
    unread_before = unread_outputs(before, input_shape)
    unread_after = unread_before if after is before else unread_outputs(after, input_shape)
    return {"removed": {} if after is before else unread_before,
            "flops_before": count_flops(before, input_shape),
            "flops_after": count_flops(after, input_shape),
            "unread_channels": sum(unread_after.values())}
