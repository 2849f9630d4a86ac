"""Eager inference form of a model: BatchNorm folded into the convolution or linear layer it
follows (one kernel instead of two; the same outputs in eval mode).

``fold_batchnorm(model)`` works on any fx-traceable model (``compression.graph.ops.trace``: a
user's net with concatenations, grouped convs, squeeze-and-excitation...) and on thinned models
(a BN that places its channels into a wider tensor hands that placement to the conv). A BN is
folded when its only input is the output of a Conv1d/2d/3d or Linear layer that nothing else
reads; every other BN stays as it is (after a sum, a concatenation, a transposed conv, a BN
without running statistics). Deployment runtimes (onnxruntime, XNNPACK) fold BN themselves;
this is for models served by eager PyTorch.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from compression.surgery.picks import is_scatter, set_scatter
from compression.graph.ops import trace


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
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable BN folded into the layer before it
    and replaced by ``nn.Identity`` (module names kept; the folded layers gain a bias)."""
    model = copy.deepcopy(model).eval()
    for layer_name, bn_name in following_bn(model).items():
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        if bn.running_var is None or is_scatter(layer):
            continue
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
        if layer.bias is not None:
            shift = shift + layer.bias * scale
        layer.weight.mul_(scale.reshape(-1, *[1] * (layer.weight.dim() - 1)))
        layer.bias = nn.Parameter(shift.to(layer.weight.dtype), requires_grad=False)
        if is_scatter(bn):
            set_scatter(layer, bn.out_index, bn.scatter_width)
        parent, _, leaf = bn_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
    return model
