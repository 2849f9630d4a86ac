"""Layer-wise regression of a masked model onto the full one (PocketFlow's short "rg" step).

Each masked layer sees the input the FULL model gives it and its raw weight is fitted with
Adam so that ``layer(x)`` (masked) matches the full layer's output; the mask keeps the pruned
weights at zero. Cheap and local: used to score candidate sparsity strategies quickly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compression.sparsity.masks import raw_weight


@torch.no_grad()
def capture_io(model: nn.Module, names: list[str], inputs: torch.Tensor) -> dict:
    """name -> (input, output) of each named module for one forward pass of ``model``."""
    seen, hooks = {}, []
    for name in names:
        def hook(module, args, output, name=name):
            seen[name] = (args[0].detach(), output.detach())
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(inputs)
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    return seen


def layerwise_regression(full: nn.Module, masked: nn.Module, names: list[str],
                         inputs: torch.Tensor, lrn_rate: float, nb_iters: int) -> dict[str, float]:
    """Fit each named masked layer to the full model's output; returns the relative squared
    error per layer after fitting."""
    if nb_iters <= 0:
        return {}
    targets = capture_io(full, names, inputs)
    errors = {}
    for name in names:
        layer = masked.get_submodule(name)
        x, y = targets[name]
        weight = raw_weight(masked, name)
        optimizer = torch.optim.Adam([weight], lr=lrn_rate)
        with torch.enable_grad():
            for _ in range(nb_iters):
                loss = F.mse_loss(layer(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            errors[name] = float(F.mse_loss(layer(x), y) / y.pow(2).mean().clamp_min(1e-12))
    masked.zero_grad(set_to_none=True)
    return errors
