"""Distiller's ``fold_batchnorm`` pruner argument: rank a conv's weights as folded with the
BatchNorm that directly follows it, ``w * gamma / sqrt(running_var + eps)`` per filter (the
weights inference frameworks compute with), so a filter a small gamma silences ranks low."""
from __future__ import annotations

import torch
from torch import nn

from compression.fx_ops import trace


def following_bn(model: nn.Module) -> dict[str, str]:
    """conv/linear module -> the BatchNorm module whose only input is its output."""
    gm = trace(model)
    modules = dict(model.named_modules())
    out = {}
    norms = nn.modules.batchnorm._NormBase
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), norms):
            continue
        source = node.args[0] if node.args else None
        if getattr(source, "op", None) == "call_module" and len(source.users) == 1 and \
                isinstance(modules.get(source.target), (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            out[source.target] = node.target
    return out


@torch.no_grad()
def folded_weight(model: nn.Module, layer: str, bn: str | None) -> torch.Tensor:
    weight = model.get_submodule(layer).weight.detach()
    if bn is None:
        return weight
    norm = model.get_submodule(bn)
    scale = (norm.weight if norm.affine else torch.ones_like(norm.running_var)) / torch.sqrt(
        norm.running_var + norm.eps)
    return weight * scale.view(-1, *([1] * (weight.dim() - 1)))
