"""Per-layer-type pruners: what a module does to channels, and how it shrinks.

Channel pruning needs three facts about every module a tensor passes through, given by one
small ``LayerPruner`` class per layer type (as in Torch-Pruning):

- its **role** for the channel dimension (dim 1):

  ========== ============================================================================
  reader     reads input channels through a weight and writes new ones (conv, linear):
             its input columns and its output filters can be removed
  channelwise acts on each channel alone with per-channel parameters (BN, depthwise conv,
             PReLU with one slope per channel): shrinks with the channels it sees
  passthrough acts on each channel alone without parameters (activations, pooling, dropout)
  grouped    a grouped conv (groups > 1, not depthwise): output group g reads input group g
             only, so a whole group (its inputs and outputs) stays or goes together
  mixing     combines channels without a weight we can cut (LayerNorm, GroupNorm over
             several channels, grouped transposed convs): its channels are kept whole
  ========== ============================================================================

- how to **shrink** it (``shrink(module, in_index, out_index)``: a copy keeping those input /
  output channels, or ``shrink_channels(module, index)`` for a channelwise module and, with
  the output channels of whole groups, a grouped one);
- its **shape** for the saved spec (``shape`` / ``resize``), so a thinned model rebuilds.

A user adds a layer type with one class::

    @register_pruner(MyNorm)
    class MyNormPruner(ChannelwisePruner):
        params = ("weight", "bias")            # per-channel tensors, sliced on dim 0
        size_attrs = ("num_channels",)         # attributes that hold the channel count

A module type that no pruner covers keeps its channels whole (exact, never wrong), and the
dependency graph names it with this registry in its log line.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import nn

_PRUNERS: list[tuple[tuple[type, ...], "LayerPruner"]] = []


def register_pruner(*types: type) -> Callable[[type], type]:
    """Class decorator: the pruner for modules of ``types`` (and their subclasses). Later
    registrations win, so a user's pruner overrides a built-in one."""
    def decorate(cls: type) -> type:
        _PRUNERS.insert(0, (types, cls()))
        return cls
    return decorate


def pruner_for(module: nn.Module) -> "LayerPruner | None":
    """The registered pruner of ``module``'s type, or None."""
    for types, pruner in _PRUNERS:
        if isinstance(module, types):
            return pruner
    return None


def registered_types() -> list[str]:
    return sorted({t.__name__ for types, _ in _PRUNERS for t in types})


def _copy(module: nn.Module) -> nn.Module:
    """A shallow copy with its own parameter, buffer and attribute dicts (the class, hooks and
    hyper-parameters kept: a user's subclass stays a subclass)."""
    new = copy.copy(module)
    new.__dict__ = module.__dict__.copy()
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    return new


def _take(tensor: torch.Tensor | None, dim: int, index: torch.Tensor | None) -> torch.Tensor | None:
    if tensor is None or index is None:
        return tensor
    return tensor.detach().index_select(dim, index.to(tensor.device)).clone()


def _sized(tensor: torch.Tensor | None, dim: int, size: int) -> torch.Tensor | None:
    """``tensor`` cut or zero-padded to ``size`` along ``dim`` (a placeholder's shape)."""
    if tensor is None:
        return None
    if size <= tensor.shape[dim]:
        return _take(tensor, dim, torch.arange(size))
    shape = list(tensor.shape)
    shape[dim] = size - tensor.shape[dim]
    return torch.cat([tensor.detach(), tensor.detach().new_zeros(shape)], dim)


def _set(module: nn.Module, key: str, value: torch.Tensor | None) -> None:
    if value is None:
        return
    if key in module._parameters:
        module._parameters[key] = nn.Parameter(value, requires_grad=module._parameters[key].requires_grad)
    else:
        module._buffers[key] = value


class LayerPruner:
    """Base class; ``role(module)`` is one of reader / channelwise / passthrough / mixing."""

    kind = "passthrough"

    def role(self, module: nn.Module) -> str:
        return self.kind

    def shape(self, module: nn.Module) -> dict:
        """Constructor-level sizes stored in a thinning spec (``class`` included)."""
        return {"class": type(module).__name__}

    def resize(self, module: nn.Module, shape: dict) -> nn.Module:
        """``module`` (built from the unthinned spec) at the recorded ``shape``; the values of
        its tensors are placeholders that the saved state dict overwrites."""
        return module


class ReaderPruner(LayerPruner):
    """Modules with a weight of shape (out, in, ...) or, transposed, (in, out, ...)."""

    kind = "reader"
    in_attr, out_attr = "in_channels", "out_channels"
    transposed = False

    def channels(self, module: nn.Module) -> tuple[int, int]:
        return getattr(module, self.in_attr), getattr(module, self.out_attr)

    def shrink(self, module: nn.Module, in_index: torch.Tensor | None,
               out_index: torch.Tensor | None) -> nn.Module:
        new = _copy(module)
        in_dim, out_dim = (0, 1) if self.transposed else (1, 0)
        _set(new, "weight", _take(_take(module.weight, in_dim, in_index), out_dim, out_index))
        _set(new, "bias", _take(module.bias, 0, out_index))
        c_in, c_out = self.channels(module)
        setattr(new, self.in_attr, c_in if in_index is None else len(in_index))
        setattr(new, self.out_attr, c_out if out_index is None else len(out_index))
        return new

    def shape(self, module: nn.Module) -> dict:
        c_in, c_out = self.channels(module)
        shape = {"class": type(module).__name__, self.in_attr: c_in, self.out_attr: c_out}
        if hasattr(module, "groups"):
            shape["groups"] = module.groups
        return shape

    def resize(self, module: nn.Module, shape: dict) -> nn.Module:
        """Placeholders at the recorded widths, narrower or (a folded gather reading its whole
        input again: ``compression.surgery.thinning.gathers_folded``) wider than ``module``."""
        new = _copy(module)
        c_in, c_out = shape[self.in_attr], shape[self.out_attr]
        in_dim, out_dim = (0, 1) if self.transposed else (1, 0)
        _set(new, "weight", _sized(_sized(module.weight, in_dim, c_in), out_dim, c_out))
        _set(new, "bias", _sized(module.bias, 0, c_out))
        setattr(new, self.in_attr, c_in)
        setattr(new, self.out_attr, c_out)
        return new


class ChannelwisePruner(LayerPruner):
    """Per-channel parameters ``params`` (dim 0) and the count attributes ``size_attrs``."""

    kind = "channelwise"
    params: Sequence[str] = ("weight", "bias")
    size_attrs: Sequence[str] = ()

    def shrink_channels(self, module: nn.Module, index: torch.Tensor) -> nn.Module:
        new = _copy(module)
        for key in self.params:
            _set(new, key, _take(getattr(module, key, None), 0, index))
        for attr in self.size_attrs:
            setattr(new, attr, len(index))
        return new

    def shape(self, module: nn.Module) -> dict:
        return {"class": type(module).__name__,
                **{attr: getattr(module, attr) for attr in self.size_attrs}}

    def resize(self, module: nn.Module, shape: dict) -> nn.Module:
        return self.shrink_channels(module, torch.arange(shape[self.size_attrs[0]]))


class MixingPruner(LayerPruner):
    kind = "mixing"


# -- built-in layer types --------------------------------------------------------------------
@register_pruner(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvPruner(ReaderPruner):
    """groups=1: a reader; depthwise (groups = in = out): channelwise; other grouped convs are
    pruned by whole groups (``shrink_channels`` with the output channels of the groups kept)."""

    def role(self, module: nn.Module) -> str:
        if module.groups == 1:
            return "reader"
        if module.groups == module.in_channels == module.out_channels:
            return "channelwise"
        return "grouped"

    def shrink_channels(self, module: nn.Module, index: torch.Tensor) -> nn.Module:
        """Keep output channels ``index``, which must be whole groups, and those groups' inputs
        (a depthwise conv: one channel per group)."""
        width_in = module.in_channels // module.groups
        width_out = module.out_channels // module.groups
        groups = sorted({int(i) // width_out for i in index.tolist()})
        if len(index) != len(groups) * width_out:
            raise ValueError(f"a grouped conv keeps whole groups of {width_out} output "
                             f"channels; {len(index)} channels are not")
        new = _copy(module)
        _set(new, "weight", _take(module.weight, 0, index))
        _set(new, "bias", _take(module.bias, 0, index))
        new.groups = len(groups)
        new.in_channels, new.out_channels = len(groups) * width_in, len(index)
        return new

    def resize(self, module: nn.Module, shape: dict) -> nn.Module:
        if self.role(module) in ("channelwise", "grouped"):
            return self.shrink_channels(module, torch.arange(shape["out_channels"]))
        return super().resize(module, shape)


@register_pruner(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTransposePruner(ReaderPruner):
    transposed = True

    def role(self, module: nn.Module) -> str:
        return "reader" if module.groups == 1 else "mixing"


@register_pruner(nn.Linear)
class LinearPruner(ReaderPruner):
    in_attr, out_attr = "in_features", "out_features"


@register_pruner(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
class BatchNormPruner(ChannelwisePruner):
    params = ("weight", "bias", "running_mean", "running_var")
    size_attrs = ("num_features",)


@register_pruner(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
class InstanceNormPruner(BatchNormPruner):
    pass


@register_pruner(nn.GroupNorm)
class GroupNormPruner(ChannelwisePruner):
    """One group per channel is channelwise; wider groups share statistics across channels, so
    removing one would change the others: kept whole."""

    size_attrs = ("num_channels", "num_groups")

    def role(self, module: nn.Module) -> str:
        return "channelwise" if module.num_groups == module.num_channels else "mixing"


@register_pruner(nn.PReLU)
class PReLUPruner(ChannelwisePruner):
    params = ("weight",)
    size_attrs = ("num_parameters",)

    def role(self, module: nn.Module) -> str:
        return "channelwise" if module.num_parameters > 1 else "passthrough"


@register_pruner(nn.LayerNorm, nn.Softmax, nn.Softmax2d, nn.LogSoftmax, nn.PixelShuffle,
                 nn.PixelUnshuffle, nn.ChannelShuffle, nn.LocalResponseNorm, nn.CrossMapLRN2d)
class ChannelMixingPruner(MixingPruner):
    """Statistics or values across channels: kept whole."""


@register_pruner(nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                 nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
                 nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.LogSigmoid,
                 nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
                 nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                 nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Upsample,
                 nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad1d, nn.ZeroPad2d,
                 nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
                 nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d)
class PassthroughPruner(LayerPruner):
    """Each channel on its own, no parameters: the channels pass through unchanged."""
