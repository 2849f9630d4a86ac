"""Regularizers of a schedule: a loss term during their epochs, and Distiller's thresholds.

- ``L1Regularizer``: ``strength * sum |w|`` on any parameter, BatchNorm weights included
  (network slimming, Liu et al. 2017). With ``threshold_criteria`` every weight with
  ``|w| <= strength`` is set to zero after each optimizer step (Distiller's threshold). On a
  BatchNorm weight the channel's bias is zeroed with it: a channel with gamma = 0 and beta != 0
  is a constant, not an absent channel, and the thinning extension removes exactly the
  channels whose BatchNorm weight and bias are both zero.
- ``GroupLassoRegularizer``: ``strength * sum_g ||w_g||_2`` over the groups of a conv/linear
  weight: ``Filters``/``3D`` (output channels), ``Channels`` (input channels), ``Rows``/``Cols``
  of a 2-D weight, ``4D`` (the whole tensor). With ``threshold_criteria`` (``Max`` or
  ``Mean_Abs`` of a group's |w|) a group at or below ``strength`` is set to zero.
- ``GroupVarianceRegularizer``: ``strength / var(||w_c||_2)`` over the input channels of a conv
  weight (``Channels``, the only grouping Distiller's code accepts); the same thresholds.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


def parameter(model: nn.Module, name: str) -> torch.Tensor:
    """The (masked, when a mask is attached) tensor of parameter ``name``."""
    module, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module), attr)


def _storage(model: nn.Module, name: str) -> torch.Tensor:
    """The tensor the optimizer updates (the original of a parametrized weight)."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr)


def _groups(weight: torch.Tensor, structure: str) -> torch.Tensor:
    """One row per group."""
    if structure in ("3D", "Filters", "Rows"):
        return weight.flatten(1)
    if structure in ("Channels", "Cols"):
        return weight.transpose(0, 1).flatten(1)
    return weight.reshape(1, -1)


def _l1(model: nn.Module, params: dict) -> torch.Tensor:
    return sum(strength * parameter(model, w).abs().sum() for w, strength in params["reg_regims"].items())


def _group_lasso(model: nn.Module, params: dict) -> torch.Tensor:
    total = 0.0
    for w, (strength, structure) in params["reg_regims"].items():
        total = total + strength * _groups(parameter(model, w), structure).norm(dim=1).sum()
    return total


def _group_variance(model: nn.Module, params: dict) -> torch.Tensor:
    """Distiller's ``strength / var(channels_l2)``: the L2 norms of the input channels spread
    apart, so the weak ones can be thresholded (group_regularizer.py:190-202, EPSILON 1e-8)."""
    total = 0.0
    for w, (strength, _) in params["reg_regims"].items():
        weight = parameter(model, w)
        norms = (weight.transpose(0, 1).flatten(1).pow(2).sum(dim=1) + 1e-8).sqrt()
        total = total + strength / norms.var()
    return total


REGULARIZERS = {"L1Regularizer": _l1, "GroupLassoRegularizer": _group_lasso,
                "GroupVarianceRegularizer": _group_variance}


@torch.no_grad()
def _l1_threshold(model: nn.Module, params: dict) -> None:
    for name, strength in params["reg_regims"].items():
        weight = _storage(model, name)
        small = weight.abs() <= strength
        weight[small] = 0.0
        module = model.get_submodule(name.rpartition(".")[0])
        if isinstance(module, nn.modules.batchnorm._NormBase) and name.endswith(".weight") \
                and module.bias is not None:
            module.bias[small] = 0.0


@torch.no_grad()
def _group_threshold(model: nn.Module, params: dict) -> None:
    criterion = params["threshold_criteria"]
    for name, (strength, structure) in params["reg_regims"].items():
        weight = _storage(model, name)
        groups = _groups(weight, structure).abs()
        value = groups.amax(dim=1) if criterion == "Max" else groups.mean(dim=1)
        small = value <= strength
        if structure in ("3D", "Filters", "Rows"):
            weight[small] = 0.0
        elif structure in ("Channels", "Cols"):
            weight[:, small] = 0.0
        elif bool(small[0]):
            weight.zero_()


THRESHOLDS = {"L1Regularizer": _l1_threshold, "GroupLassoRegularizer": _group_threshold,
              "GroupVarianceRegularizer": _group_threshold}      # Distiller's: inherited


def threshold(model: nn.Module, cls: str, params: dict) -> None:
    """Distiller's ``threshold_criteria``: zero what the regularizer drove below its strength."""
    if params.get("threshold_criteria"):
        THRESHOLDS[cls](model, params)
