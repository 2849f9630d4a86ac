"""Weight masks as ``torch.nn.utils.parametrize`` parametrizations.

``attach_masks`` makes every conv/linear ``weight`` (never BN, never biases) compute as
``original * mask``: the mask is a buffer, so pruned weights stay exactly zero through any
optimizer step (momentum and weight decay only move ``original``, which the mask hides), the
masks travel in the model's ``state_dict`` (checkpoints resume with them) and
``detach_masks`` bakes them in, leaving a plain model whose pruned weights are zeros.

Masks are chosen by magnitude with an exact count of zeros (``magnitude_mask``), per layer or
globally across layers (``global_nb_zeros``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from training.trainer import Callback

MASKABLE = (nn.Conv2d, nn.Linear)


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask`` (mask: 0/1 tensor of the weight's shape and dtype)."""

    def __init__(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, dtype=dtype, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def maskable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> conv/linear module, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MASKABLE)}


def parametrize_weights(model: nn.Module, names: list[str] | None,
                        make: Callable[[str, nn.Module], nn.Module]) -> None:
    """Register ``make(name, module)`` as the parametrization of each named conv/linear
    layer's weight (None: all of them); refuses unknown layers and a second parametrization."""
    layers = maskable_layers(model)
    names = list(layers) if names is None else names
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise ValueError(f"not conv/linear layers of the model: {', '.join(unknown)}")
    for name in names:
        if parametrize.is_parametrized(layers[name], "weight"):
            raise ValueError(f"{name}.weight already has a parametrization")
        parametrize.register_parametrization(layers[name], "weight", make(name, layers[name]))


def attach_masks(model: nn.Module, names: list[str] | None = None) -> dict[str, WeightMask]:
    """Register an all-ones mask on the weight of each named layer (default: all maskable)."""
    parametrize_weights(model, names, lambda name, module: WeightMask(
        module.weight.shape, module.weight.dtype, module.weight.device))
    return masks_of(model)


def masks_of(model: nn.Module) -> dict[str, WeightMask]:
    """Layer name -> its WeightMask, for every masked layer of ``model``."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, MASKABLE) and parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations["weight"]:
                if isinstance(p, WeightMask):
                    found[name] = p
    return found


def raw_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The unmasked parameter behind a masked layer's weight (what the optimizer updates)."""
    return model.get_submodule(name).parametrizations["weight"].original


def detach_masks(model: nn.Module) -> nn.Module:
    """Bake every mask into its weight and remove the parametrizations (in place)."""
    for name in masks_of(model):
        parametrize.remove_parametrizations(model.get_submodule(name), "weight",
                                            leave_parametrized=True)
    return model


@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, nb_zeros: int) -> torch.Tensor:
    """0/1 mask with exactly ``nb_zeros`` zeros on the smallest ``|weight|`` (ties broken by
    position, so the count is exact even when magnitudes repeat)."""
    numel = weight.numel()
    if not 0 <= nb_zeros <= numel:
        raise ValueError(f"nb_zeros must be in [0, {numel}], got {nb_zeros}")
    mask = torch.zeros(numel, dtype=weight.dtype, device=weight.device)
    keep = torch.topk(weight.detach().abs().flatten(), numel - nb_zeros, sorted=False).indices
    mask[keep] = 1
    return mask.view_as(weight)


@torch.no_grad()
def global_nb_zeros(weights: dict[str, torch.Tensor], nb_zeros: int) -> dict[str, int]:
    """Split ``nb_zeros`` between layers by ONE magnitude ranking over all their weights
    (global magnitude pruning): layer -> how many of its weights are among the smallest."""
    names = list(weights)
    flat = torch.cat([weights[n].detach().abs().flatten().float() for n in names])
    if not 0 <= nb_zeros <= flat.numel():
        raise ValueError(f"nb_zeros must be in [0, {flat.numel()}], got {nb_zeros}")
    owner = torch.cat([torch.full((weights[n].numel(),), i) for i, n in enumerate(names)])
    smallest = torch.topk(flat, nb_zeros, largest=False, sorted=False).indices
    counts = torch.bincount(owner[smallest], minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts)}


@torch.no_grad()
def set_masks(model: nn.Module, nb_zeros: dict[str, int]) -> None:
    """Re-choose each named layer's mask by the magnitude of its raw (unmasked) weight."""
    masks = masks_of(model)
    for name, count in nb_zeros.items():
        masks[name].mask.copy_(magnitude_mask(raw_weight(model, name), count))


def sparsity_table(model: nn.Module) -> dict:
    """Zeros per conv/linear weight (masked or baked) and overall: ``{"layers": {name:
    {"zeros", "numel", "sparsity"}}, "zeros", "numel", "sparsity"}``."""
    layers = {}
    for name, module in maskable_layers(model).items():
        weight = module.weight.detach()
        zeros = int((weight == 0).sum())
        layers[name] = {"zeros": zeros, "numel": weight.numel(), "sparsity": zeros / weight.numel()}
    zeros = sum(v["zeros"] for v in layers.values())
    numel = sum(v["numel"] for v in layers.values())
    return {"layers": layers, "zeros": zeros, "numel": numel,
            "sparsity": zeros / numel if numel else 0.0}


def sparsity_of(model: nn.Module, names: list[str], targets: dict) -> dict:
    """The sparsity table restricted to the pruned layers ``names``, each with the zero count
    its pruner aimed at (``targets``), and their totals."""
    table = sparsity_table(model)
    layers = {n: {**table["layers"][n], "target_zeros": targets.get(n)} for n in names
              if n in table["layers"]}
    zeros = sum(v["zeros"] for v in layers.values())
    numel = sum(v["numel"] for v in layers.values())
    return {"layers": layers, "zeros": zeros, "numel": numel,
            "sparsity": zeros / numel if numel else 0.0, "overall": table["sparsity"]}


class KeepZeros(Callback):
    """Holds at exactly 0, after every step, each weight (of a tensor of 2+ dims) that is 0
    when the callback is made: a sparse model stays sparse through a fine-tuning that has no
    masks of its own (e.g. quantization-aware training)."""

    def __init__(self, model: nn.Module) -> None:
        self.masks = [(p, p.detach() != 0) for p in model.parameters()
                      if p.dim() >= 2 and bool((p == 0).any())]

    @property
    def sparsity(self) -> float:
        total = sum(mask.numel() for _, mask in self.masks)
        return sum(int((~mask).sum()) for _, mask in self.masks) / total if total else 0.0

    @torch.no_grad()
    def on_minibatch_end(self, trainer, state) -> None:
        for param, mask in self.masks:
            param.mul_(mask)
