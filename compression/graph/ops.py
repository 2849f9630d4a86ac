"""torch.fx for the channel passes: the trace (modules with a registered pruner are leaves),
its shapes, and the ops whose effect on channels (dim 1) the passes know.

Used by the channel graph (``compression.graph.builder``), dead-channel elimination
(``compression.surgery.dead_channels``) and the model drawing (``tools.model_draw``).
"""
from __future__ import annotations

import operator
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from compression.graph.pruners import pruner_for


class GraphError(RuntimeError):
    """The model cannot be analysed (e.g. torch.fx cannot trace it)."""


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
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_, F.selu, F.celu,
    F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.hardtanh_, F.softplus,
    F.sigmoid, F.tanh, torch.relu, torch.relu_, torch.sigmoid, torch.sigmoid_, torch.tanh,
    torch.tanh_, torch.abs, torch.neg, torch.exp, torch.sqrt, torch.rsqrt, torch.erf,
    torch.square, torch.sign, torch.clamp, torch.clamp_, torch.clip, torch.clamp_min,
    torch.clamp_max, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.max_pool1d,
    F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, F.interpolate, F.upsample, F.pad, operator.neg, operator.pos}
PASSTHROUGH_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "abs", "abs_", "neg", "neg_",
    "exp", "exp_", "sqrt", "sqrt_", "rsqrt", "erf", "square", "sign", "clamp", "clamp_", "clip",
    "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "contiguous", "clone",
    "detach", "float", "half", "bfloat16", "to", "type_as", "pow", "pow_", "__pow__"}
ELEMENTWISE_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv,
                         operator.iadd, operator.isub, operator.imul, operator.itruediv,
                         torch.add, torch.sub, torch.mul, torch.div, torch.maximum,
                         torch.minimum, torch.where, operator.pow}
ELEMENTWISE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_",
                       "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
                       "__truediv__", "__rtruediv__", "maximum", "minimum"}
MUL_TARGETS = {operator.mul, operator.imul, torch.mul, "mul", "mul_", "__mul__", "__rmul__"}
RESHAPE_TARGETS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, "flatten",
                   "view", "reshape", "squeeze", "unsqueeze", "expand", "expand_as",
                   torch.transpose, torch.permute, torch.movedim, torch.swapaxes, "transpose",
                   "permute", "movedim", "swapaxes", "swapdims"}
REDUCE_TARGETS = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"}
SPLIT_TARGETS = {torch.split, torch.chunk, torch.tensor_split, "split", "chunk", "tensor_split"}
PAD_MODULES = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
               nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
               nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d,
               nn.CircularPad2d, nn.CircularPad3d)
SHAPE_TARGETS = {"size", "dim", "numel", getattr}
CONSTANT_TARGETS = {torch.zeros, torch.ones, torch.full, torch.empty, torch.zeros_like,
                    torch.ones_like, torch.full_like, torch.empty_like, torch.arange, torch.eye,
                    "new_zeros", "new_ones", "new_full", "new_empty", "zero_"}
CAT_TARGETS = {torch.cat, "cat"}

# The one rule per functional op and tensor method, read by every channel pass (the graph
# builder, dead-channel liveness): what the op does to channels (dim 1).
#   shape        returns a size, no tensor
#   constant     creates a tensor from sizes alone (zeros, ones, full...): it reads no channel
#   getitem      x[index] (a slice of channels, or an element of a tuple)
#   cat / split  concatenates / cuts tensors (along dim 1 or another dim)
#   reshape      view / flatten / squeeze / transpose / permute: where dims 0 and 1 are kept
#                (checked on the shapes) the channels pass; otherwise the graph keeps them
#                whole and liveness follows each element (``compression.graph.channel_maps``:
#                a channel shuffle, a flatten before a linear layer)
#   reduce       mean / sum / amax over other dims than 0 and 1
#   elementwise  channel i of the output from channel i of each full-width operand
#   mul          elementwise, and a broadcast operand may be a gate (squeeze-and-excitation)
#   passthrough  one tensor in, the same channels out
# Any other op is unknown: the graph fixes the channels it touches, liveness needs them all.
OP_KINDS: dict = {}
for _kind, _targets in (("passthrough", PASSTHROUGH_FUNCTIONS | PASSTHROUGH_METHODS),
                        ("elementwise", ELEMENTWISE_FUNCTIONS | ELEMENTWISE_METHODS),
                        ("mul", MUL_TARGETS), ("reduce", REDUCE_TARGETS),
                        ("reshape", RESHAPE_TARGETS), ("split", SPLIT_TARGETS),
                        ("cat", CAT_TARGETS), ("getitem", {operator.getitem}),
                        ("shape", SHAPE_TARGETS),         # later rows take precedence
                        ("constant", CONSTANT_TARGETS)):
    OP_KINDS.update(dict.fromkeys(_targets, _kind))
OP_RULES = ("shape", "constant", "getitem", "cat", "split", "reshape", "reduce", "elementwise",
            "mul", "passthrough")


def op_kind(target, node: fx.Node | None = None) -> str | None:
    """The rule of a call_function / call_method target (``OP_KINDS``), or None: an op the
    channel passes do not know. With its ``node``: an ``F.pad`` that pads dim 1 (or 0) is not
    a passthrough (it adds channels), so it is unknown too."""
    try:
        kind = OP_KINDS.get(target)
    except TypeError:            # an unhashable target
        return None
    if node is not None and target is F.pad and len(node.args) > 1 \
            and pads_channels(node.args[1], meta_shape(node.args[0])):
        return None
    return kind


def pads_channels(pad, shape: tuple | None) -> bool:
    """Whether a pad list (``F.pad``'s, last dim first) pads dim 1 or 0 of a ``shape`` input."""
    if shape is None or not isinstance(pad, (tuple, list)):
        return True                  # cannot tell: do not follow it as a passthrough
    pairs = [tuple(pad[i:i + 2]) for i in range(0, len(pad), 2)]
    return any(pair != (0, 0) for pair in pairs[max(0, len(shape) - 2):])


def is_inplace(node: fx.Node) -> bool:
    """An op that writes into its first operand (``x.mul_(a)``, ``F.relu(x, inplace=True)``,
    ``torch.relu_(x)``): later readers of that operand read what it wrote."""
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    return node.op in ("call_method", "call_function") and (
        (name.endswith("_") and not name.startswith("__")) or node.kwargs.get("inplace") is True)


def unknown_ops(graph_module: fx.GraphModule) -> list[str]:
    """The ops of a trace no channel pass has a rule for: functions and tensor methods
    missing from ``OP_KINDS``, modules without a registered pruner (sorted names). Where one
    lies on a path, the passes keep its channels whole and need all of them."""
    modules = dict(graph_module.named_modules())
    found = set()
    for node in graph_module.graph.nodes:
        if node.meta.get("tensor_meta") is None:
            continue                                 # arithmetic on sizes, not on tensors
        if node.op in ("call_function", "call_method") and op_kind(node.target, node) is None:
            found.add(op_name(node.target))
        elif node.op == "call_module" and not isinstance(modules[node.target], nn.Flatten) \
                and pruner_for(modules[node.target]) is None:
            found.add(type(modules[node.target]).__name__)
    return sorted(found)


def op_name(target) -> str:
    """``torch.nn.functional.relu`` -> ``"relu"``-like short names for logs and reports;
    a method name as it is (``"view"``)."""
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or repr(target)
    return f"{module.replace('torch.nn.functional', 'F')}.{name}" if module else name


def register_op(target, kind: str) -> None:
    """Declare what a function or tensor method (by name) does to channels, one of
    ``OP_RULES``: every channel pass then follows it."""
    if kind not in OP_RULES:
        raise ValueError(f"unknown op rule {kind!r}; valid: {', '.join(OP_RULES)}")
    OP_KINDS[target] = kind


def meta_shape(value) -> tuple | None:
    meta = value.meta.get("tensor_meta") if isinstance(value, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def prod(dims: Sequence[int]) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def nodes_in(value) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(value, found.append)
    return found


def channel_role(module: nn.Module, node: fx.Node) -> str | None:
    """The registered pruner's role of ``module`` at call ``node`` (None: no pruner); a linear
    layer on an (N, ..., C) input reads the last dim, not dim 1, so it mixes channels."""
    pruner = pruner_for(module)
    if pruner is None:
        return None
    role = pruner.role(module)
    if role == "reader" and isinstance(module, nn.Linear) and len(meta_shape(node.args[0])) != 2:
        return "mixing"
    if role == "passthrough" and isinstance(module, PAD_MODULES) and node.args \
            and pads_channels(module.padding, meta_shape(node.args[0])):
        return "mixing"              # a pad module over dim 1: other channels out than in
    return role


def channel_index(index) -> slice | None:
    """What ``x[index]`` does to dim 1 of an (N, C, ...) tensor: ``slice(None)`` (every channel
    passes), a slice of channels, or None (an index the passes do not follow)."""
    if index == slice(None) or index is Ellipsis:
        return slice(None)
    if isinstance(index, tuple) and index and index[0] == slice(None) and all(
            isinstance(i, slice) and not any(isinstance(v, fx.Node)
                                             for v in (i.start, i.stop, i.step))
            for i in index):
        return index[1] if len(index) > 1 else slice(None)
    return None


def keeps_channels(node: fx.Node, reduce: bool) -> bool:
    """A reshape keeping dims 0 and 1, or a reduction over other dims only (``reduce``)."""
    source = node.args[0] if node.args else node.kwargs.get("input")
    before, after = meta_shape(source), meta_shape(node)
    if before is None:
        return False
    if reduce:
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        return dims is not None and not {
            d % len(before) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))
        } & {0, 1}
    return bool(before) and after is not None and len(after) >= 2 and after[:2] == before[:2]


def channel_param(gm: fx.GraphModule, operand: fx.Node, out_shape: tuple) -> tuple[str, int] | None:
    """``(target, dim)`` when ``operand`` is a parameter outside any module (a layer scale),
    viewed so that its one non-1 dim ``dim`` meets dim 1 of the output (``gamma.view(1,
    -1, 1, 1)``, ``gamma[:, None, None]``): per channel, like a BN's weight."""
    node, shape = operand, meta_shape(operand)
    if shape is None or len(shape) > len(out_shape):
        return None
    at = 1 - (len(out_shape) - len(shape))             # the operand's dim under dim 1
    if at < 0 or shape[at] != out_shape[1] or prod(shape) != out_shape[1]:
        return None
    while node.op != "get_attr":
        index = node.args[1] if node.target is operator.getitem and len(node.args) > 1 else ()
        if node.op not in ("call_method", "call_function") or not node.args \
                or op_kind(node.target) not in ("reshape", "getitem", "passthrough") \
                or any(isinstance(i, (slice,)) and i != slice(None) for i in (
                    index if isinstance(index, tuple) else (index,))):
            return None
        node = node.args[0]
        if not isinstance(node, fx.Node):
            return None
    try:
        param = gm.get_parameter(node.target)
    except AttributeError:                          # a buffer or a plain tensor attribute
        return None
    dims = [d for d, size in enumerate(param.shape) if size != 1]
    return (node.target, dims[0]) if len(dims) == 1 and param.shape[dims[0]] == out_shape[1] \
        else None


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
