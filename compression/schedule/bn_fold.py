"""Distiller's ``fold_batchnorm`` pruner argument: rank a conv's weights as folded with the
BatchNorm that directly follows it, ``w * gamma / sqrt(running_var + eps)`` per filter (the
weights inference frameworks compute with), so a filter a small gamma silences ranks low."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def folded_weight(model: nn.Module, layer: str, bn: str | None) -> torch.Tensor:
    weight = model.get_submodule(layer).weight.detach()
    if bn is None:
        return weight
    norm = model.get_submodule(bn)
    scale = (norm.weight if norm.affine else torch.ones_like(norm.running_var)) / torch.sqrt(
        norm.running_var + norm.eps)
    return weight * scale.view(-1, *([1] * (weight.dim() - 1)))
