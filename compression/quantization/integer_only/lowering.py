"""Float model -> a flat list of supported float ops (the graph the integer program quantizes).

``lower(model)`` traces the model (eval mode) with torch.fx (``GatherConv2d`` /
``GatherLinear`` kept whole) and returns ``FloatNode``s in execution order:

- ``conv2d`` / ``linear``: weight and bias (float32), with a following ``BatchNorm2d`` folded in
  (``w * g / sqrt(v + eps)``, ``(b - mean) * g / sqrt(v + eps) + beta``), ``in_index`` for the
  gather layers, and ``act`` = ``relu`` / ``relu6`` when the activation alone consumes it;
- ``add`` (two tensors; may carry a fused ``act`` too), ``avg_pool`` (``AvgPool2d`` /
  ``avg_pool2d``; ``AdaptiveAvgPool2d`` becomes a fixed-kernel pool once shapes are known),
  ``max_pool``, ``flatten`` and ``clamp`` (an activation that could not be fused).
Dropout and Identity vanish. Anything else raises ``UnsupportedOpError`` naming the fx node.
``run_float`` executes the list (calibration; observers see every node's output).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.utils import _pair

from compression.surgery.picks import scatters_as_products
from compression.surgery.picks import GatherConv2d, GatherLinear

ACTS = ("relu", "relu6")
WEIGHTED = ("conv2d", "linear")
_FUNCTION_MODULES = {F.max_pool2d: nn.MaxPool2d, F.avg_pool2d: nn.AvgPool2d,
                     F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d}
_ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}


class UnsupportedOpError(ValueError):
    """The model holds an operation the integer-only program cannot express."""


@dataclass
class FloatNode:
    name: str
    op: str
    inputs: list[str]
    attrs: dict = field(default_factory=dict)
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    in_index: torch.Tensor | None = None
    act: str | None = None


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (GatherConv2d, GatherLinear)) or super().is_leaf_module(m, qualname)


def _fail(node: fx.Node, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"integer-only program: node {node.name!r} ({node.op} "
                              f"{getattr(node.target, '__name__', node.target)}): {why}")


def _describe(node: fx.Node, modules: dict) -> tuple[str, object]:
    """``(kind, payload)`` of an fx node: kind among the ops above plus ``bn``, ``act``,
    ``identity``, ``input``, ``output``; payload is the module (or act name, or pool module)."""
    if node.op == "placeholder":
        return "input", None
    if node.op == "output":
        return "output", None
    if node.op == "call_module":
        m = modules[node.target]
        table = ((nn.Conv2d, "conv2d"), (nn.Linear, "linear"), (nn.BatchNorm2d, "bn"),
                 (nn.MaxPool2d, "max_pool"), (nn.AvgPool2d, "avg_pool"),
                 (nn.AdaptiveAvgPool2d, "avg_pool"), (nn.Flatten, "flatten"),
                 ((nn.Identity, nn.Dropout, nn.Dropout2d), "identity"))
        if type(m) is nn.ReLU or type(m) is nn.ReLU6:
            return "act", "relu" if type(m) is nn.ReLU else "relu6"
        for cls, kind in table:
            if isinstance(m, cls):
                return kind, m
        raise _fail(node, f"module type {type(m).__name__} is not supported")
    if node.op == "call_function":
        if node.target in (operator.add, torch.add, operator.iadd):
            return "add", None
        if node.target in _ACT_FUNCTIONS:
            return "act", _ACT_FUNCTIONS[node.target]
        if node.target is torch.flatten:
            return "flatten", None
        if node.target in _FUNCTION_MODULES:
            cls = _FUNCTION_MODULES[node.target]
            extra = node.args[1:]
            if any(isinstance(a, fx.Node) for a in (*extra, *node.kwargs.values())):
                raise _fail(node, "pooling arguments must be constants")
            try:
                return ("max_pool" if cls is nn.MaxPool2d else "avg_pool"), cls(*extra, **node.kwargs)
            except TypeError as exc:
                raise _fail(node, f"unsupported pooling arguments ({exc})") from None
        if node.target is F.dropout:
            training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
            if training is False:
                return "identity", None
            raise _fail(node, "F.dropout with training=True is random; pass training=self.training")
    if node.op == "call_method":
        if node.target in ("relu", "relu_"):
            return "act", "relu"
        if node.target in ("add", "add_"):
            return "add", None
        if node.target == "flatten":
            return "flatten", None
        if node.target == "contiguous":
            return "identity", None
    raise _fail(node, "operation not supported (supported: conv2d, linear, batch_norm after a conv, "
                      "relu/relu6, add, avg/adaptive-avg/max pooling, flatten, dropout, identity)")


def _conv_attrs(node: fx.Node, m: nn.Conv2d) -> dict:
    if m.padding_mode != "zeros":
        raise _fail(node, f"padding_mode {m.padding_mode!r} is not supported (zeros only)")
    padding = m.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif any(d * (k - 1) % 2 for d, k in zip(m.dilation, m.kernel_size)):
            raise _fail(node, "padding='same' with an even effective kernel is not supported")
        else:
            padding = tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
    return {"stride": list(m.stride), "padding": list(padding), "dilation": list(m.dilation),
            "groups": m.groups}


def _pool_attrs(node: fx.Node, m: nn.Module) -> dict:
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return {"output_size": list(_pair(m.output_size))}
    if m.ceil_mode:
        raise _fail(node, "ceil_mode=True pooling is not supported")
    kernel = list(_pair(m.kernel_size))
    attrs = {"kernel": kernel, "stride": list(_pair(m.stride or kernel)),
             "padding": list(_pair(m.padding))}
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            raise _fail(node, "max pooling that returns indices is not supported")
        attrs["dilation"] = list(_pair(m.dilation))
    else:
        if not m.count_include_pad and any(attrs["padding"]):
            raise _fail(node, "padded average pooling with count_include_pad=False is not supported")
        attrs["divisor"] = m.divisor_override
    return attrs


@torch.no_grad()
def _fold_bn(target: FloatNode, bn: nn.BatchNorm2d) -> None:
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedOpError("a BatchNorm2d without running statistics cannot be folded")
    gain = (bn.weight.detach().cpu().double() if bn.affine
            else torch.ones(bn.num_features, dtype=torch.float64))
    gain = gain / torch.sqrt(bn.running_var.cpu().double() + bn.eps)
    beta = bn.bias.detach().cpu().double() if bn.affine else torch.zeros_like(gain)
    bias = target.bias.double() if target.bias is not None else torch.zeros_like(gain)
    target.weight = (target.weight.double() * gain.view(-1, 1, 1, 1)).float()
    target.bias = ((bias - bn.running_mean.cpu().double()) * gain + beta).float()


def _flatten_attrs(node: fx.Node, m: nn.Module | None) -> dict:
    if m is not None:
        return {"start_dim": m.start_dim, "end_dim": m.end_dim}
    args = list(node.args[1:])
    start = node.kwargs.get("start_dim", args[0] if args else 0)
    end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
    if not (isinstance(start, int) and isinstance(end, int)):
        raise _fail(node, "flatten dimensions must be constants")
    if start == 0:
        raise _fail(node, "flatten must keep the batch dimension (start_dim >= 1)")
    return {"start_dim": start, "end_dim": end}


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # torch.fx raises many kinds of errors on dynamic code
        raise UnsupportedOpError(f"torch.fx cannot trace {type(model).__name__} "
                                 f"({type(exc).__name__}: {exc})") from exc
    return fx.GraphModule(model, graph)


def lower(model: nn.Module) -> tuple[list[FloatNode], str, str]:
    """``(nodes, input name, output name)`` of an eval-mode model (see the module docstring)."""
    if model.training:
        raise ValueError("lower the model in eval mode (call model.eval() first)")
    gm = trace(scatters_as_products(model))
    modules = dict(gm.named_modules())
    nodes: list[FloatNode] = []
    by_name: dict[str, FloatNode] = {}
    alias: dict[str, str] = {}          # fx node name -> name of the FloatNode producing it
    sole: dict[str, bool] = {}          # fx node name -> its value reaches no other consumer
    input_name = output_name = None

    def source(node: fx.Node, arg) -> str:
        if not isinstance(arg, fx.Node):
            raise _fail(node, f"argument {arg!r} is not a tensor produced by the graph")
        return alias[arg.name]

    def fresh(arg: fx.Node, kinds: tuple) -> FloatNode | None:
        """The FloatNode producing ``arg`` when only this consumer reads it and it is of kinds."""
        target = by_name.get(alias[arg.name])
        if (target is not None and target.op in kinds and target.act is None
                and sole.get(arg.name, False) and len(arg.users) == 1):
            return target
        return None

    def fuse(node: fx.Node) -> None:   # ``node`` now aliases its first argument's FloatNode
        alias[node.name] = alias[node.args[0].name]
        sole[node.name] = sole.get(node.args[0].name, False) and len(node.args[0].users) == 1

    for node in gm.graph.nodes:
        kind, payload = _describe(node, modules)
        if kind == "input":
            if input_name is not None:
                raise _fail(node, "only models with a single input are supported")
            input_name = alias[node.name] = node.name
            continue
        if kind == "output":
            if not isinstance(node.args[0], fx.Node):
                raise _fail(node, "the model must return a single tensor")
            output_name = source(node, node.args[0])
            continue
        if not node.args:
            raise _fail(node, "expected a tensor argument")
        first = source(node, node.args[0])
        if kind == "identity":
            fuse(node)
            continue
        if kind == "bn":
            target = fresh(node.args[0], ("conv2d",))
            if target is None:
                raise _fail(node, "BatchNorm2d is only supported right after a conv that feeds "
                                  "nothing else (it is folded into that conv)")
            _fold_bn(target, payload)
            fuse(node)
            continue
        if kind == "act":
            target = fresh(node.args[0], (*WEIGHTED, "add"))
            if target is not None:
                target.act = payload
                fuse(node)
                continue
            new = FloatNode(node.name, "clamp", [first], act=payload)
        elif kind in WEIGHTED:
            m = payload
            new = FloatNode(node.name, kind, [first], _conv_attrs(node, m) if kind == "conv2d" else {},
                            m.weight.detach().float().cpu().clone(),
                            None if m.bias is None else m.bias.detach().float().cpu().clone(),
                            getattr(m, "in_index", None))
            if new.in_index is not None:
                new.in_index = new.in_index.detach().to(torch.int64).cpu().clone()
        elif kind == "add":
            args = list(node.args) + list(node.kwargs.values())
            if len(args) != 2 or not all(isinstance(a, fx.Node) for a in args):
                raise _fail(node, "only the addition of two tensors is supported")
            new = FloatNode(node.name, "add", [source(node, a) for a in args])
        elif kind in ("max_pool", "avg_pool"):
            new = FloatNode(node.name, kind, [first], _pool_attrs(node, payload))
        else:  # flatten
            new = FloatNode(node.name, "flatten", [first], _flatten_attrs(node, payload))
        nodes.append(new)
        by_name[new.name] = new
        alias[node.name] = new.name
        sole[node.name] = True
    if input_name is None or output_name is None:
        raise UnsupportedOpError("the traced model has no input or no output")
    return nodes, input_name, output_name


def apply_act(y: torch.Tensor, act: str | None) -> torch.Tensor:
    if act == "relu":
        return y.clamp(min=0)
    if act == "relu6":
        return y.clamp(0, 6)
    return y


def float_op(node: FloatNode, xs: list[torch.Tensor]) -> torch.Tensor:
    """One float op (BN folded, activation fused)."""
    x, a = xs[0], node.attrs
    if node.op in WEIGHTED and node.in_index is not None:
        x = x.index_select(1, node.in_index)
    if node.op == "conv2d":
        y = F.conv2d(x, node.weight, node.bias, a["stride"], a["padding"], a["dilation"], a["groups"])
    elif node.op == "linear":
        y = F.linear(x, node.weight, node.bias)
    elif node.op == "add":
        y = xs[0] + xs[1]
    elif node.op == "avg_pool":
        if "output_size" in a:
            y = F.adaptive_avg_pool2d(x, a["output_size"])
        else:
            y = F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"], divisor_override=a["divisor"])
    elif node.op == "max_pool":
        y = F.max_pool2d(x, a["kernel"], a["stride"], a["padding"], a["dilation"])
    elif node.op == "flatten":
        y = torch.flatten(x, a["start_dim"], a["end_dim"])
    else:  # clamp
        y = x
    return apply_act(y, node.act)


@torch.no_grad()
def run_float(nodes: list[FloatNode], input_name: str, x: torch.Tensor,
              observe: Callable[[str, list[torch.Tensor], torch.Tensor], None] | None = None) -> dict:
    """Execute the float op list; ``observe(name, inputs, output)`` after each node (the input is
    observed as ``(input_name, [], x)``). Returns every node's output by name."""
    env = {input_name: x}
    if observe is not None:
        observe(input_name, [], x)
    for node in nodes:
        xs = [env[i] for i in node.inputs]
        env[node.name] = float_op(node, xs)
        if observe is not None:
            observe(node.name, xs, env[node.name])
    return env
