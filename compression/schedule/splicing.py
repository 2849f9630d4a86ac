"""Distiller's ``SplicingPruner``: dynamic network surgery (Guo, Yao & Chen, NIPS 2016), masks
that prune AND splice back, as Distiller implements it (distiller/pruning/splicing_pruner.py,
IntelLabs/distiller HEAD d859fc85; line numbers below are that file's unless another is named).

Per weight tensor ``w`` of a layer named in ``sensitivities`` (or every other conv/linear layer
with ``'*'``; :45-51):

- ``s = sensitivities[w]``, growing linearly with the epoch when ``sensitivity_multiplier > 0``:
  ``s *= (epoch - starting_epoch) * sensitivity_multiplier + 1`` (:53-57; ``starting_epoch`` is
  the policy's, the first of an ``epochs:`` list, distiller/scheduler.py:60-67);
- ``mean``, ``std`` of ``|w|`` (``torch.std``: unbiased) are computed at the tensor's FIRST mask
  update and then kept for the whole run (:70-73; here they also survive a resume);
- ``low = (mean + std * s) * low_thresh_mult``, ``hi = (mean + std * s) * hi_thresh_mult`` (:75-76);
- the new mask is 0 where ``low > |w|``, 1 where ``hi <= |w|`` (applied last, so it wins), and
  the previous mask in between (:91-94; the first previous mask is all ones, :59-60).

Which ``w`` and what the masked weights do between updates (Distiller's ``PruningPolicy`` and
``ParameterMasker``, distiller/policy.py and distiller/scheduler.py):

- ``mask_on_forward_only: True``: the mask acts on the forward only, so ``w`` is the RAW weight
  behind the mask (Distiller's parameter), and a masked weight gets the gradient the masked
  forward gives it (straight through the mask, ``SpliceMask``; with ``mask_gradients`` it gets
  none, policy.py:203-204). Without ``use_double_copies`` the raw masked weights are set to 0 at
  each mini-batch of an active epoch, after the mask update (``apply_mask``, policy.py:227-232,
  scheduler.py:259-272): a weight is spliced back only if what it regrows reaches ``hi``. With
  ``use_double_copies`` they are not: the dense weights are trained and the forward uses the
  masked ones (Distiller keeps an unmasked copy and restores it before the optimizer step,
  scheduler.py:263-264 and 278-283, policy.py:234-237);
- otherwise Distiller masks the weights again after every step (scheduler.py:130 and 144-151), so
  ``w`` is the masked weight: a pruned weight is 0 and never comes back.

The masks are the project's weight parametrizations, kept to the end and baked (as
``keep_mask``), so the saved model is the masked one.
"""
from __future__ import annotations

import torch
from torch import nn

from compression.graph.layers import PrunableLayer
from compression.schedule.names import layer_of
from compression.schedule.policy import Instance, PolicyEntry
from compression.sparsity.masks import WeightMask, masks_of, raw_weight


class _StraightThrough(torch.autograd.Function):
    """``weight * mask`` forward; the gradient reaches every weight unmasked."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class SpliceMask(WeightMask):
    """A ``WeightMask`` (the same buffer, found by ``masks_of``, baked by ``detach_masks``) whose
    masked weights keep receiving the gradient of the masked forward, so they can regrow."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(weight, self.mask)


def use_splice_masks(model: nn.Module, names: list[str]) -> None:
    """Turn the plain masks of ``names`` into ``SpliceMask``s (their mask values kept)."""
    for name in names:
        module = model.get_submodule(name)
        if not hasattr(module, "parametrizations"):
            continue
        plist = module.parametrizations["weight"]
        for i, param in enumerate(plist):
            if isinstance(param, WeightMask) and not isinstance(param, SpliceMask):
                splice = SpliceMask(param.mask.shape, param.mask.dtype, param.mask.device)
                splice.mask.copy_(param.mask)
                plist[i] = splice


@torch.no_grad()
def splice_mask(weight: torch.Tensor, mask: torch.Tensor, low: float, hi: float) -> torch.Tensor:
    """Distiller's ``create_mask`` rule (:91-94): 0 below ``low``, 1 from ``hi``, else ``mask``."""
    zeros, ones = torch.zeros_like(mask), torch.ones_like(mask)
    weights_abs = weight.abs()
    new_mask = torch.where(low > weights_abs, zeros, mask)
    return torch.where(hi <= weights_abs, ones, new_mask)


class SplicingPruner:
    def __init__(self, instance: Instance, entry: PolicyEntry, layers: list[PrunableLayer],
                 all_layers: list[str]) -> None:
        self.instance, self.entry = instance, entry
        values = dict(instance.params["sensitivities"])
        default = values.pop("*", None)
        self.targets = {layer_of(w): v for w, v in values.items()}
        if default is not None:
            self.targets.update({n: default for n in all_layers if n not in self.targets})
        params, args = instance.params, entry.args
        self.low_mult, self.hi_mult = params["low_thresh_mult"], params["hi_thresh_mult"]
        self.multiplier = params["sensitivity_multiplier"]
        self.raw = bool(args.get("mask_on_forward_only"))
        self.straight = self.raw and not args.get("mask_gradients")
        self.zero_raw = self.raw and not args.get("use_double_copies")
        self.start = entry.epochs[0] if entry.epochs is not None else entry.starting_epoch
        self.stats: dict[str, tuple[float, float]] = {}   # layer -> (mean, std) of |w| (shared)

    def mask_layers(self) -> list[str]:
        return list(self.targets)

    def sensitivity(self, name: str, epoch: int) -> float:
        sensitivity = self.targets[name]
        if self.multiplier > 0:   # :53-57
            sensitivity *= (epoch - self.start) * self.multiplier + 1
        return sensitivity

    def thresholds(self, name: str, weight: torch.Tensor, epoch: int) -> tuple[float, float]:
        """(low, hi) of layer ``name`` at ``epoch``; the statistics are the first call's."""
        if name not in self.stats:   # :70-73
            weight_abs = weight.detach().abs()
            self.stats[name] = (torch.mean(weight_abs).item(), torch.std(weight_abs).item())
        mean, std = self.stats[name]
        base = mean + std * self.sensitivity(name, epoch)
        return base * self.low_mult, base * self.hi_mult   # :75-76

    def weight(self, model: nn.Module, name: str) -> torch.Tensor:
        return raw_weight(model, name) if self.raw else model.get_submodule(name).weight

    @torch.no_grad()
    def apply(self, model: nn.Module, epoch: int, keep: dict) -> None:
        masks = masks_of(model)
        for name in self.targets:
            weight = self.weight(model, name).detach()
            low, hi = self.thresholds(name, weight, epoch)
            masks[name].mask.copy_(splice_mask(weight, masks[name].mask, low, hi))

    @torch.no_grad()
    def zero_masked(self, model: nn.Module) -> None:
        """Distiller's ``apply_mask`` on the raw weights (no double copies): masked ones are 0."""
        masks = masks_of(model)
        for name in self.targets:
            raw_weight(model, name).mul_(masks[name].mask)
