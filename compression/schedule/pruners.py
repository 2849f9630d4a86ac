"""Pruners and regularizers of a compression schedule (registries keyed by the YAML class).

A pruner acts at the beginning of its active epochs on weight masks (``compression.sparsity.masks``):
- ``AutomatedGradualPruner`` (Zhu & Gupta): at epoch t of [t0, t0 + n dt] the sparsity is
  s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, applied by magnitude per weight with an
  exact zero count round(s_t * numel); masked weights stay zero (monotone: already pruned
  weights are the smallest).
- the ranked structure pruners (``compression.schedule.structured``);
- the one-shot fine-grained pruners (``LevelPruner``);
- ``SplicingPruner`` (dynamic network surgery: ``compression.schedule.splicing``).
Regularizers are ``compression.schedule.regularizers``.
"""
from __future__ import annotations

import torch
from torch import nn

from compression.graph.layers import PrunableLayer
from compression.sparsity.masks import magnitude_mask, masks_of
from compression.schedule.names import layer_of
from compression.sparsity.agp import agp_sparsity
from compression.surgery.inference import following_bn
from compression.schedule.bn_fold import folded_weight
from compression.schedule.policy import Instance, PolicyEntry
from compression.schedule.schema import RANKINGS
from compression.schedule.splicing import SplicingPruner
from compression.schedule.structured import RankedPruner

__all__ = ["PRUNERS", "AgpPruner", "LevelPruner", "SplicingPruner", "agp_sparsity", "layer_of"]


class AgpPruner:
    def __init__(self, instance: Instance, entry: PolicyEntry, layers: list[PrunableLayer],
                 all_layers: list[str]) -> None:
        self.instance, self.entry = instance, entry
        self.layers = [layer_of(w) for w in instance.params["weights"]]

    def mask_layers(self) -> list[str]:
        return list(self.layers)

    def sparsity(self, epoch: int) -> float:
        p, epochs = self.instance.params, self.entry.active_epochs()
        return agp_sparsity(p["initial_sparsity"], p["final_sparsity"], epoch, epochs[0], epochs[-1])

    def target_zeros(self, model: nn.Module, epoch: int) -> dict[str, int]:
        s = self.sparsity(epoch)
        return {n: round(s * model.get_submodule(n).weight.numel()) for n in self.layers}

    @torch.no_grad()
    def apply(self, model: nn.Module, epoch: int, keep: dict) -> None:
        masks = masks_of(model)
        fold = following_bn(model) if self.entry.args.get("fold_batchnorm") else {}
        for name, zeros in self.target_zeros(model, epoch).items():
            masks[name].mask.copy_(magnitude_mask(folded_weight(model, name, fold.get(name)), zeros))


class LevelPruner:
    """Fine-grained one-shot pruners keyed by weight (``'*'``: every other conv/linear layer):
    ``SparsityLevelParameterPruner`` (``levels``: an exact zero count round(level * numel) by
    magnitude), ``SensitivityPruner`` (``sensitivities``: zero |w| < s * std(w), Han et al.)
    and ``MagnitudeParameterPruner`` (``thresholds``: zero |w| <= t), as Distiller's."""

    KEYS = {"SparsityLevelParameterPruner": "levels", "SensitivityPruner": "sensitivities",
            "MagnitudeParameterPruner": "thresholds"}

    def __init__(self, instance: Instance, entry: PolicyEntry, layers: list[PrunableLayer],
                 all_layers: list[str]) -> None:
        self.instance, self.entry = instance, entry
        self.values = dict(instance.params[self.KEYS[instance.cls]])
        default = self.values.pop("*", None)
        names = {layer_of(w): v for w, v in self.values.items()}
        if default is not None:
            names.update({n: default for n in all_layers if n not in names})
        self.targets = {n: v for n, v in names.items() if v > 0}

    def mask_layers(self) -> list[str]:
        return list(self.targets)

    @torch.no_grad()
    def apply(self, model: nn.Module, epoch: int, keep: dict) -> None:
        masks = masks_of(model)
        for name, value in self.targets.items():
            weight = model.get_submodule(name).weight
            if self.instance.cls == "SparsityLevelParameterPruner":
                masks[name].mask.copy_(magnitude_mask(weight, round(value * weight.numel())))
                continue
            threshold = value * float(weight.std()) if self.instance.cls == "SensitivityPruner" else value
            masks[name].mask.mul_((weight.abs() > threshold).to(weight.dtype))


PRUNERS = {"AutomatedGradualPruner": AgpPruner, **{cls: LevelPruner for cls in LevelPruner.KEYS},
           "SplicingPruner": SplicingPruner,
           **{name: RankedPruner for base in RANKINGS for name in (base, f"{base}_AGP")}}
