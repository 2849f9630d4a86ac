"""Physical thinning: turn per-layer input-channel selections into really smaller layers.

``thin(model, layers, keep)`` returns a new model in which every reader in ``keep`` keeps
only the listed input channels, and every channel that no reader keeps any more is removed
from the layers that write it and from the BN / depthwise convs / other channelwise modules
in between (``compression.graph.ChannelGraph.plan``). A reader whose kept channels are not
all that survives of its input becomes a ``Gather*`` module that picks them with
``index_select``. Each module shrinks through its type's pruner
(``compression.graph.pruners``); the new shapes are recorded as a ``{"type": "thin", ...}``
spec transform, so a saved model rebuilds (``compression.artifacts.build_model``) without the
code that pruned it. ``mask_inputs`` zeroes the same weights in place instead: the masked
model computes exactly what the thinned one computes, which is how thinning is tested.
"""
from __future__ import annotations

import copy
from typing import Callable, Collection, Mapping, Sequence

import torch
from torch import nn

from compression.surgery.picks import (as_matrix_modules, input_widths, is_gather,
                                       is_scatter, set_gather,
                                       set_scatter, set_submodule)
from compression.surgery import dead_channels
from compression.graph.layers import PrunableLayer, graph_of
from compression.graph.pruners import pruner_for
from utils.model_io import register_spec_transform


def gathers_as_matrices(model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """A copy of ``model`` for deployment in which no layer picks channels with
    ``index_select`` / ``index_copy`` (same outputs): XNNPACK has no gather, so each
    ``index_select`` ran outside the delegate and cut the program in pieces (a thinned
    ResNet-20: 11 delegates), and onnxruntime's Gather on NCHW tensors is slow. Each gather
    becomes whichever of two exact forms is smaller:

    - *folded*: the plain layer over its whole input, zeros in the weight columns it did not
      pick (one kernel, never more weights than the unpruned layer);
    - *one-hot*: a constant one-hot 1x1 conv / linear picks the channels before the thinned
      weight (fewer weights where the kernel is large and the pick narrow);

    and each scatter (``compression.surgery.dead_channels``) a one-hot 1x1 product after the module
    (``compression.surgery.picks.as_matrix_modules``)."""
    return as_matrix_modules(model, input_shape, _folded)


def gathers_folded(model: nn.Module, input_shape: Sequence[int],
                   spec: dict | None = None) -> tuple[nn.Module, dict | None, list[str]]:
    """``(copy, spec, names)``: ``model`` with every gather (``index_select`` of the input
    channels a thinned layer kept) read as the plain layer over its whole input, zero weight
    columns where it picked none (same outputs; more FLOPs, no copy of the input), the
    ``spec`` with the new shapes recorded, and the layers folded. Conv (groups 1) and linear
    gathers only; on CPUs a narrow gather in front of a cheap layer can cost more than the
    columns it saves (``compression.surgery.passes.fold_gathers``)."""
    model = copy.deepcopy(model)
    gathers = {name: module for name, module in model.named_modules() if is_gather(module)
               and (isinstance(module, nn.Linear) or (
                   isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
                   and module.groups == 1))}
    if not gathers:
        return model, spec, []
    widths = input_widths(model, gathers, input_shape)
    for name, module in gathers.items():
        if name == "":
            model = _folded(module, widths[name])
        else:
            set_submodule(model, name, _folded(module, widths[name]))
    return model, _recorded(spec, model, list(gathers)), list(gathers)


def _recorded(spec: dict | None, model: nn.Module, names: Sequence[str],
              params: Collection[str] = ()) -> dict | None:
    """``spec`` with the shapes of modules (and parameters) ``names`` of ``model`` recorded as
    one more ``thin`` transform."""
    if spec is None:
        return None
    shapes = {name: _param_shape(model, name) if name in params
              else _shape_of(model.get_submodule(name)) for name in names}
    new_spec = copy.deepcopy(spec)
    new_spec.setdefault("transforms", []).append({"type": "thin", "modules": shapes})
    return new_spec


@torch.no_grad()
def _folded(module: nn.Module, width: int) -> nn.Module:
    """A plain copy of a gather module reading all ``width`` input channels (zero columns
    where it picked none)."""
    new = pruner_for(module).shrink(module, None, None)
    weight = module.weight.new_zeros(module.weight.shape[0], width, *module.weight.shape[2:])
    weight[:, module.in_index] = module.weight
    new._parameters["weight"] = nn.Parameter(weight, requires_grad=module.weight.requires_grad)
    setattr(new, "in_features" if isinstance(module, nn.Linear) else "in_channels", width)
    return set_gather(new, None)


def _pruner(module: nn.Module):
    pruner = pruner_for(module)
    if pruner is None:
        raise TypeError(f"cannot thin a {type(module).__name__}: no pruner registered for it "
                        "(compression.graph.pruners.register_pruner)")
    return pruner


def _shape_of(module: nn.Module) -> dict:
    """The sizes that define a module's shape (stored in the spec)."""
    shape = _pruner(module).shape(module)
    if is_scatter(module):
        shape.update(scatter_width=module.scatter_width, scattered=len(module.out_index))
    return shape


def _rebuild(module: nn.Module, shape: dict) -> nn.Module:
    """``module`` at a recorded shape (its tensors are placeholders for a state dict)."""
    resized = _pruner(module).resize(module, shape)
    picks = shape["class"].removeprefix("Scatter")
    if picks.startswith("Gather"):
        set_gather(resized, torch.arange(_pruner(resized).channels(resized)[0]))
    else:
        set_gather(resized, None)
    if shape["class"].startswith("Scatter"):
        return set_scatter(resized, torch.arange(shape["scattered"]), shape["scatter_width"])
    return set_scatter(resized, None)


@register_spec_transform("thin")
def apply_thin_spec(model: nn.Module, entry: dict) -> nn.Module:
    """Rebuild the recorded modules (and parameters outside modules) with their thinned
    shapes (weights loaded afterwards)."""
    for name, shape in entry["modules"].items():
        if shape.get("class") == "Parameter":
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            old = getattr(module, attr)
            module._parameters[attr] = nn.Parameter(
                old.new_empty([int(d) for d in shape["shape"]]), requires_grad=old.requires_grad)
        else:
            set_submodule(model, name, _rebuild(model.get_submodule(name), shape))
    return model


@torch.no_grad()
def _shrink_param(model: nn.Module, name: str, kept: torch.Tensor, dim: int) -> None:
    """A per-channel parameter outside a module (a layer scale) keeps ``kept`` along ``dim``."""
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    old = getattr(module, attr)
    module._parameters[attr] = nn.Parameter(old.index_select(dim, kept.to(old.device)).clone(),
                                            requires_grad=old.requires_grad)


def _param_shape(model: nn.Module, name: str) -> dict:
    return {"class": "Parameter", "shape": list(model.get_parameter(name).shape)}


@torch.no_grad()
def _shrunk(module: nn.Module, change: dict) -> nn.Module:
    """A smaller copy of ``module`` following one plan entry."""
    pruner = _pruner(module)
    if "channels" in change:
        new = pruner.shrink_channels(module, change["channels"])
    else:
        new = pruner.shrink(module, change.get("in"), change.get("out"))
    if "gather" in change:
        set_gather(new, change["gather"])
    if "scatter" in change:
        set_scatter(new, *(change["scatter"] or (None,)))
    return new


def thin(model: nn.Module, layers: Sequence[PrunableLayer],
         keep: Mapping[str, torch.Tensor], spec: dict | None = None,
         keep_shared: bool = False, eliminate: bool = True,
         stats: dict | None = None, coupled: Collection[int] = (),
         timer: Callable | None = None) -> tuple[nn.Module, dict | None]:
    """A physically smaller copy of ``model`` keeping, for each layer in ``keep``, only the
    listed input channels (and removing every channel no reader keeps; with ``keep_shared``
    only those one reader alone reads, and the ``coupled`` ones: channel ids of residual
    groups, whose readers keep the same channels); also returns ``spec`` with the thinning
    recorded (if given). With ``eliminate`` (and a graph that knows the input shape) no layer of the result
    computes a channel nothing reads afterwards (``compression.surgery.dead_channels``); ``stats``
    (a dict) receives what that pass did, or would have done (``dead_channels.report``).
    ``timer(name, before, after) -> {"kept", ..}`` (``compression.surgery.passes.PassTimer``)
    decides whether the pass is kept (its record goes to ``stats["timing"]``)."""
    graph = graph_of(layers)
    plan = graph.plan(keep, keep_shared, coupled)
    thinned = copy.deepcopy(model)
    for name, change in plan.items():
        if "param" in change:
            _shrink_param(thinned, name, change["param"], change["dim"])
        else:
            set_submodule(thinned, name, _shrunk(thinned.get_submodule(name), change))
    changed, before, not_worth = list(plan), thinned, {}
    if eliminate and graph.input_shape is not None:
        thinned, extra = dead_channels.eliminate(thinned, graph.input_shape, not_worth)
        if extra and timer is not None:
            timing = timer("dead_channels", before, thinned)
            if stats is not None:
                stats["timing"] = timing
            if not timing["kept"]:
                thinned, extra = before, []
        changed += [name for name in extra if name not in plan]
    if stats is not None and graph.input_shape is not None:
        stats.update(dead_channels.report(before, thinned, graph.input_shape, not_worth))
    return thinned, _recorded(spec, thinned, changed, graph.params)


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
