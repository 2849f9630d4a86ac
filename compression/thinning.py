"""Physical thinning: turn per-layer input-channel selections into really smaller layers.

``thin(model, layers, keep)`` returns a new model in which, for every layer named in ``keep``:
- its weight keeps only the selected input channels;
- in ``chain`` mode the producer's output channels and every BN / depthwise conv in between
  shrink to the same channels;
- in ``gather`` mode the layer becomes a ``GatherConv2d`` / ``GatherLinear`` that picks the
  selected channels of its (shared) input with ``index_select``.
The new shapes are recorded as a ``{"type": "thin", ...}`` spec transform, so a saved model
rebuilds (``compression.artifacts.build_model``) without the code that pruned it.
``mask_inputs`` zeroes the same weights in place instead: the masked model computes exactly
what the thinned one computes, which is how thinning is tested.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn

from compression.graph import PrunableLayer
from utils.model_io import register_spec_transform


class _Gather:
    """The input-channel pick of ``GatherConv2d`` / ``GatherLinear``: ``index_select`` by
    default; after ``select_by_matrix(c_in)`` a product with a constant one-hot matrix instead
    (exact: each output is one input times 1), which backends run inside their conv/linear
    kernels where ``index_select`` would split the program (see ``gathers_as_matrices``)."""

    in_index: torch.Tensor
    selection: torch.Tensor | None

    def select_by_matrix(self, c_in: int) -> None:
        one_hot = torch.zeros(len(self.in_index), c_in, device=self.in_index.device)
        one_hot[torch.arange(len(self.in_index)), self.in_index] = 1.0
        if isinstance(self, nn.Conv2d):
            one_hot = one_hot[:, :, None, None]
        self.register_buffer("selection", one_hot.to(self.weight.dtype), persistent=False)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "selection", None) is None:
            return x.index_select(1, self.in_index)
        if x.dim() == 2:
            return nn.functional.linear(x, self.selection)
        return nn.functional.conv2d(x, self.selection)


class GatherConv2d(_Gather, nn.Conv2d):
    """A conv that first keeps the input channels listed in ``in_index``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("in_index", torch.arange(self.in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.gather(x))


class GatherLinear(_Gather, nn.Linear):
    """A linear layer that first keeps the input features listed in ``in_index``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("in_index", torch.arange(self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.gather(x))


def gathers_as_matrices(model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """A copy of ``model`` whose gathers pick channels by one-hot 1x1 conv / linear (same
    outputs, weights and state dict). For deployment: XNNPACK has no gather, so each
    ``index_select`` ran outside the delegate and cut the program in pieces (a thinned
    ResNet-20: 11 delegates); as matrices the whole net is one, ~25 % faster at batch 64 in
    int8, and onnxruntime avoids its slow Gather on NCHW tensors."""
    model = copy.deepcopy(model)
    gathers = {n: m for n, m in model.named_modules() if isinstance(m, _Gather)}
    if not gathers:
        return model
    widths: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            widths[name] = int(args[0].shape[1])
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in gathers.items()]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    for name, module in gathers.items():
        module.select_by_matrix(widths[name])
    return model


def _shape_of(module: nn.Module) -> dict:
    """The constructor arguments that define a module's shape (stored in the spec)."""
    if isinstance(module, nn.Conv2d):
        return {"class": type(module).__name__, "in_channels": module.in_channels,
                "out_channels": module.out_channels, "groups": module.groups}
    if isinstance(module, nn.Linear):
        return {"class": type(module).__name__, "in_features": module.in_features,
                "out_features": module.out_features}
    if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        return {"class": type(module).__name__, "num_features": module.num_features}
    raise TypeError(f"cannot thin a {type(module).__name__}")


def _rebuild(module: nn.Module, shape: dict) -> nn.Module:
    """A new module of the recorded class and shape, other hyper-parameters copied."""
    cls = shape["class"]
    if cls in ("Conv2d", "GatherConv2d"):
        new_cls = GatherConv2d if cls == "GatherConv2d" else nn.Conv2d
        new = new_cls(shape["in_channels"], shape["out_channels"], module.kernel_size,
                      module.stride, module.padding, module.dilation, shape["groups"],
                      bias=module.bias is not None, padding_mode=module.padding_mode)
    elif cls in ("Linear", "GatherLinear"):
        new_cls = GatherLinear if cls == "GatherLinear" else nn.Linear
        new = new_cls(shape["in_features"], shape["out_features"], bias=module.bias is not None)
    elif cls in ("BatchNorm2d", "BatchNorm1d"):
        new = type(module)(shape["num_features"], module.eps, module.momentum, module.affine,
                           module.track_running_stats)
    else:
        raise ValueError(f"unknown module class {cls!r} in a thinning spec")
    new.train(module.training)
    param = next(module.parameters(), None)
    return new.to(param.device) if param is not None else new


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


@register_spec_transform("thin")
def apply_thin_spec(model: nn.Module, entry: dict) -> nn.Module:
    """Rebuild the recorded modules with their thinned shapes (weights loaded afterwards)."""
    for name, shape in entry["modules"].items():
        _set_submodule(model, name, _rebuild(model.get_submodule(name), shape))
    return model


def _plan(layers: Sequence[PrunableLayer], keep: Mapping[str, torch.Tensor]) -> dict:
    """module name -> {"in": index, "out": index, "gather": bool} for every module that shrinks."""
    by_name = {layer.name: layer for layer in layers}
    plan: dict[str, dict] = {}
    for name, index in keep.items():
        layer = by_name[name]
        index = torch.as_tensor(index, dtype=torch.long).sort().values
        if len(index) == layer.in_channels:
            continue
        plan.setdefault(name, {})["in"] = index
        if layer.shrinks_producer:
            plan.setdefault(layer.producer, {})["out"] = index
            for follower in layer.followers:
                plan.setdefault(follower, {})["channels"] = index
        else:
            plan[name]["gather"] = True
    return plan


@torch.no_grad()
def _shrunk(module: nn.Module, change: dict) -> nn.Module:
    """A smaller copy of ``module`` following one plan entry."""
    if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        index = change["channels"]
        new = _rebuild(module, {"class": type(module).__name__, "num_features": len(index)})
        for key in ("weight", "bias", "running_mean", "running_var"):
            if getattr(module, key) is not None:
                getattr(new, key).copy_(getattr(module, key)[index])
        new.num_batches_tracked.copy_(module.num_batches_tracked)
        return new
    weight = module.weight
    bias = module.bias
    if "channels" in change:                      # depthwise conv between producer and layer
        index = change["channels"]
        shape = {**_shape_of(module), "in_channels": len(index), "out_channels": len(index),
                 "groups": len(index)}
        weight, bias = weight[index], bias[index] if bias is not None else None
        in_index = None
    else:
        in_index = change.get("in")
        if "out" in change:
            weight = weight[change["out"]]
            bias = bias[change["out"]] if bias is not None else None
        if in_index is not None:
            weight = weight[:, in_index]
        shape = _shape_of(module)
        is_conv = isinstance(module, nn.Conv2d)
        out_key, in_key = ("out_channels", "in_channels") if is_conv else ("out_features", "in_features")
        shape[out_key], shape[in_key] = weight.shape[0], weight.shape[1]
        if change.get("gather"):
            shape["class"] = "GatherConv2d" if is_conv else "GatherLinear"
    new = _rebuild(module, shape)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    if change.get("gather"):
        source = getattr(module, "in_index", None)
        new.in_index.copy_(in_index if source is None else source[in_index])
    return new


def thin(model: nn.Module, layers: Sequence[PrunableLayer],
         keep: Mapping[str, torch.Tensor], spec: dict | None = None) -> tuple[nn.Module, dict | None]:
    """A physically smaller copy of ``model`` keeping, for each layer in ``keep``, only the
    listed input channels; also returns ``spec`` with the thinning recorded (if given)."""
    plan = _plan(layers, keep)
    thinned = copy.deepcopy(model)
    for name, change in plan.items():
        _set_submodule(thinned, name, _shrunk(thinned.get_submodule(name), change))
    if spec is None:
        return thinned, None
    shapes = {name: _shape_of(thinned.get_submodule(name)) for name in plan}
    new_spec = copy.deepcopy(spec)
    new_spec.setdefault("transforms", []).append({"type": "thin", "modules": shapes})
    return thinned, new_spec


@torch.no_grad()
def mask_inputs(model: nn.Module, keep: Mapping[str, torch.Tensor]) -> None:
    """Zero, in place, the weights of every pruned input channel (the masked equivalent)."""
    for name, index in keep.items():
        module = model.get_submodule(name)
        mask = torch.zeros(module.weight.shape[1], dtype=torch.bool, device=module.weight.device)
        mask[torch.as_tensor(index, dtype=torch.long, device=mask.device)] = True
        module.weight[:, ~mask] = 0.0


def in_channels(model: nn.Module) -> dict[str, int]:
    """Input channels of every conv and linear layer."""
    return {name: module.weight.shape[1] for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))}


def kept_channels(before: dict[str, int], thinned: nn.Module) -> dict:
    """layer -> [kept input channels, original input channels] for every layer that shrank
    (``before``: ``in_channels`` of the model it was thinned from)."""
    return {name: [now, before[name]] for name, now in in_channels(thinned).items()
            if name in before and now != before[name]}
