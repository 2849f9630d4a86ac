"""Physical thinning: turn per-layer input-channel selections into really smaller layers.

``thin(model, layers, keep)`` returns a new model in which every reader in ``keep`` keeps
only the listed input channels, and every channel that no reader keeps any more is removed
from the layers that write it and from the BN / depthwise convs / other channelwise modules
in between (``compression.graph.ChannelGraph.plan``). A reader whose kept channels are not
all that survives of its input becomes a ``Gather*`` module that picks them with
``index_select``. Each module shrinks through its type's pruner
(``compression.layer_pruners``); the new shapes are recorded as a ``{"type": "thin", ...}``
spec transform, so a saved model rebuilds (``compression.artifacts.build_model``) without the
code that pruned it. ``mask_inputs`` zeroes the same weights in place instead: the masked
model computes exactly what the thinned one computes, which is how thinning is tested.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn

from compression.graph import PrunableLayer, graph_of
from compression.layer_pruners import pruner_for
from utils.model_io import register_spec_transform


class _Gather:
    """The input-channel pick of a ``Gather*`` module: ``index_select`` by default; after
    ``select_by_matrix(c_in)`` a product with a constant one-hot matrix instead (exact: each
    output is one input times 1), which backends run inside their conv/linear kernels where
    ``index_select`` would split the program (see ``gathers_as_matrices``)."""

    in_index: torch.Tensor
    selection: torch.Tensor | None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        width = self.in_features if isinstance(self, nn.Linear) else self.in_channels
        self.register_buffer("in_index", torch.arange(width))

    def select_by_matrix(self, c_in: int) -> None:
        one_hot = torch.zeros(len(self.in_index), c_in, device=self.in_index.device)
        one_hot[torch.arange(len(self.in_index)), self.in_index] = 1.0
        one_hot = one_hot.reshape(*one_hot.shape, *[1] * (self.weight.dim() - 2))
        self.register_buffer("selection", one_hot.to(self.weight.dtype), persistent=False)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "selection", None) is None:
            return x.index_select(1, self.in_index)
        if x.dim() == 2:
            return nn.functional.linear(x, self.selection)
        conv = {3: nn.functional.conv1d, 4: nn.functional.conv2d, 5: nn.functional.conv3d}[x.dim()]
        return conv(x, self.selection)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return super().forward(self.gather(x), *args, **kwargs)


class GatherConv2d(_Gather, nn.Conv2d):
    """A conv that first keeps the input channels listed in ``in_index``."""


class GatherLinear(_Gather, nn.Linear):
    """A linear layer that first keeps the input features listed in ``in_index``."""


class GatherConv1d(_Gather, nn.Conv1d):
    """A 1-D conv that first keeps the input channels listed in ``in_index``."""


_GATHER_CLASSES: dict[type, type] = {nn.Conv2d: GatherConv2d, nn.Linear: GatherLinear,
                                     nn.Conv1d: GatherConv1d}


def gather_class(cls: type) -> type:
    """The ``Gather*`` variant of a reader class (made once for other classes, a user's
    subclass included)."""
    if issubclass(cls, _Gather):
        return cls
    if cls not in _GATHER_CLASSES:
        _GATHER_CLASSES[cls] = type(f"Gather{cls.__name__}", (_Gather, cls), {
            "__module__": __name__, "__doc__": f"{cls.__name__} that first keeps the input "
                                              "channels listed in ``in_index``."})
    return _GATHER_CLASSES[cls]


def plain_class(cls: type) -> type:
    """The reader class under a ``Gather*`` variant."""
    return cls.__mro__[2] if issubclass(cls, _Gather) else cls


def _with_gather(module: nn.Module, index: torch.Tensor | None) -> nn.Module:
    """``module`` picking its input channels ``index`` first (None: reading all of them)."""
    if index is None:
        if isinstance(module, _Gather):
            module.__class__ = plain_class(type(module))
            module._buffers.pop("in_index", None)
            module.__dict__.pop("selection", None)
            module._buffers.pop("selection", None)
        return module
    module.__class__ = gather_class(type(module))
    device = module.weight.device
    module._buffers["in_index"] = torch.as_tensor(index, dtype=torch.long, device=device).clone()
    return module


def gathers_as_matrices(model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """A copy of ``model`` for deployment in which no layer gathers with ``index_select``
    (same outputs): XNNPACK has no gather, so each ``index_select`` ran outside the delegate
    and cut the program in pieces (a thinned ResNet-20: 11 delegates), and onnxruntime's Gather
    on NCHW tensors is slow. Each gather becomes whichever of two exact forms is smaller:

    - *folded*: the plain layer over its whole input, zeros in the weight columns it did not
      pick (one kernel, never more weights than the unpruned layer);
    - *one-hot*: a constant one-hot 1x1 conv / linear picks the channels before the thinned
      weight (fewer weights where the kernel is large and the pick narrow).

    So every layer of the export is at most as large as the unpruned layer, and the export of a
    pruned model is never larger than the unpruned one's."""
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
        width, picked = widths[name], len(module.in_index)
        folded = module.weight.numel() // picked * width
        if folded <= module.weight.numel() + picked * width:
            _set_submodule(model, name, _folded(module, width))
        else:
            module.select_by_matrix(width)
    return model


@torch.no_grad()
def _folded(module: nn.Module, width: int) -> nn.Module:
    """A plain copy of a gather module reading all ``width`` input channels (zero columns
    where it picked none)."""
    new = pruner_for(module).shrink(module, None, None)
    weight = module.weight.new_zeros(module.weight.shape[0], width, *module.weight.shape[2:])
    weight[:, module.in_index] = module.weight
    new._parameters["weight"] = nn.Parameter(weight, requires_grad=module.weight.requires_grad)
    setattr(new, "in_features" if isinstance(module, nn.Linear) else "in_channels", width)
    return _with_gather(new, None)


def _pruner(module: nn.Module):
    pruner = pruner_for(module)
    if pruner is None:
        raise TypeError(f"cannot thin a {type(module).__name__}: no pruner registered for it "
                        "(compression.layer_pruners.register_pruner)")
    return pruner


def _shape_of(module: nn.Module) -> dict:
    """The sizes that define a module's shape (stored in the spec)."""
    return _pruner(module).shape(module)


def _rebuild(module: nn.Module, shape: dict) -> nn.Module:
    """``module`` at a recorded shape (its tensors are placeholders for a state dict)."""
    resized = _pruner(module).resize(module, shape)
    if shape["class"].startswith("Gather"):
        return _with_gather(resized, torch.arange(_pruner(resized).channels(resized)[0]))
    return _with_gather(resized, None)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


@register_spec_transform("thin")
def apply_thin_spec(model: nn.Module, entry: dict) -> nn.Module:
    """Rebuild the recorded modules with their thinned shapes (weights loaded afterwards)."""
    for name, shape in entry["modules"].items():
        _set_submodule(model, name, _rebuild(model.get_submodule(name), shape))
    return model


@torch.no_grad()
def _shrunk(module: nn.Module, change: dict) -> nn.Module:
    """A smaller copy of ``module`` following one plan entry."""
    pruner = _pruner(module)
    if "channels" in change:
        return pruner.shrink_channels(module, change["channels"])
    new = pruner.shrink(module, change.get("in"), change.get("out"))
    return _with_gather(new, change["gather"]) if "gather" in change else new


def thin(model: nn.Module, layers: Sequence[PrunableLayer],
         keep: Mapping[str, torch.Tensor], spec: dict | None = None,
         keep_shared: bool = False) -> tuple[nn.Module, dict | None]:
    """A physically smaller copy of ``model`` keeping, for each layer in ``keep``, only the
    listed input channels (and removing every channel no reader keeps; with ``keep_shared``
    only those one reader alone read); also returns ``spec`` with the thinning recorded (if
    given)."""
    plan = graph_of(layers).plan(keep, keep_shared)
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
def mask_inputs(model: nn.Module, keep: Mapping[str, torch.Tensor],
                layers: Sequence[PrunableLayer] | None = None) -> None:
    """Zero, in place, the weights of every pruned input channel (the masked equivalent); with
    the ``layers`` of a graph also the inputs that gate readers (an SE block's first layer)
    lose when the channels they read are removed."""
    columns = {name: torch.as_tensor(index, dtype=torch.long) for name, index in keep.items()}
    if layers is not None:
        for name, change in graph_of(layers).plan(keep).items():
            if name not in columns and "in" in change:
                columns[name] = change["in"]
    for name, index in columns.items():
        module = model.get_submodule(name)
        dim = 0 if getattr(module, "transposed", False) else 1
        mask = torch.zeros(module.weight.shape[dim], dtype=torch.bool, device=module.weight.device)
        mask[index.to(mask.device)] = True
        module.weight.index_fill_(dim, (~mask).nonzero().flatten(), 0.0)


def in_channels(model: nn.Module) -> dict[str, int]:
    """Input channels of every conv and linear layer."""
    readers = {}
    for name, module in model.named_modules():
        pruner = pruner_for(module)
        if pruner is not None and pruner.role(module) == "reader":
            readers[name] = pruner.channels(module)[0]
    return readers


def kept_channels(before: dict[str, int], thinned: nn.Module) -> dict:
    """layer -> [kept input channels, original input channels] for every layer that shrank
    (``before``: ``in_channels`` of the model it was thinned from)."""
    return {name: [now, before[name]] for name, now in in_channels(thinned).items()
            if name in before and now != before[name]}
