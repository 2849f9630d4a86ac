"""Pruners and regularizers of a compression schedule (registries keyed by the YAML class).

A pruner acts at the beginning of its active epochs on weight masks (``compression.masks``):
- ``AutomatedGradualPruner`` (Zhu & Gupta): at epoch t of [t0, t0 + n dt] the sparsity is
  s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, applied by magnitude per weight with an
  exact zero count round(s_t * numel); masked weights stay zero (monotone: already pruned
  weights are the smallest).
- ``L1RankedStructureParameterPruner``: '3D' removes a conv's output filters (filter L1 norm),
  'Channels' a layer's input channels (L1 norm of its input-channel slices). Both become a keep
  dict on the CONSUMER layer (``compression.thinning.thin``); until thinning the consumer's
  input columns and the producer's filters are masked, so the masked model computes exactly
  what the thinned one will.
A regularizer returns a loss term (``before_backward_pass``).
"""
from __future__ import annotations

import torch
from torch import nn

from compression.graph import PrunableLayer
from compression.masks import magnitude_mask, masks_of
from compression.schedule.policy import Instance, PolicyEntry


def layer_of(weight_name: str) -> str:
    return weight_name[: -len(".weight")]


def agp_sparsity(initial: float, final: float, epoch: int, start: int, end: int) -> float:
    """Zhu & Gupta's cubic ramp: ``initial`` at ``start``, ``final`` at ``end`` and after."""
    if end <= start:
        return final
    progress = min(max(epoch - start, 0), end - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** 3


class AgpPruner:
    def __init__(self, instance: Instance, entry: PolicyEntry, layers: list[PrunableLayer]) -> None:
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
        for name, zeros in self.target_zeros(model, epoch).items():
            masks[name].mask.copy_(magnitude_mask(model.get_submodule(name).weight, zeros))


class L1StructurePruner:
    def __init__(self, instance: Instance, entry: PolicyEntry, layers: list[PrunableLayer]) -> None:
        self.instance, self.entry = instance, entry
        by_name = {layer.name: layer for layer in layers}
        self.targets = []  # (consumer PrunableLayer, scored layer, structure, fraction)
        consumers = {}
        for weight, (fraction, structure) in instance.params["reg_regims"].items():
            name, where = layer_of(weight), instance.at(f"reg_regims.{weight}")
            if structure == "3D":
                found = [layer for layer in layers if layer.producer == name and layer.shrinks_producer]
                if not found:
                    raise where.error(
                        f"cannot remove filters of {name}: its outputs are shared (they feed a residual "
                        "sum, a concatenation or several layers), so no single consumer can drop the "
                        "matching input channels; prune the input 'Channels' of a consumer instead or "
                        "choose a conv whose output feeds one layer (e.g. a block's conv1)")
                consumer = found[0]
            else:
                if name not in by_name:
                    raise where.error(f"{name} cannot lose input channels (a layer called twice?)")
                consumer = by_name[name]
            if consumer.name in consumers:
                raise where.error(f"the input channels of {consumer.name} are already pruned by "
                                  f"{consumers[consumer.name]}")
            consumers[consumer.name] = weight
            self.targets.append((consumer, name, structure, fraction))

    def mask_layers(self) -> list[str]:
        names = []
        for consumer, _, _, _ in self.targets:
            names.append(consumer.name)
            if consumer.shrinks_producer:
                names.append(consumer.producer)
        return names

    @torch.no_grad()
    def apply(self, model: nn.Module, epoch: int, keep: dict) -> None:
        masks = masks_of(model)
        for consumer, scored, structure, fraction in self.targets:
            weight = model.get_submodule(scored).weight
            dim = 0 if structure == "3D" else 1
            dims = [d for d in range(weight.dim()) if d != dim]
            scores = weight.abs().sum(dim=dims)
            channels = scores.numel()
            kept = max(1, channels - round(fraction * channels))
            index = torch.topk(scores, kept, sorted=False).indices.sort().values
            removed = torch.ones(channels, dtype=torch.bool, device=weight.device)
            removed[index] = False
            keep[consumer.name] = index.cpu()
            cmask = masks[consumer.name].mask
            cmask.fill_(1.0)
            cmask[:, removed] = 0.0
            if consumer.shrinks_producer:
                pmask = masks[consumer.producer].mask
                pmask.fill_(1.0)
                pmask[removed] = 0.0


PRUNERS = {"AutomatedGradualPruner": AgpPruner, "L1RankedStructureParameterPruner": L1StructurePruner}


# -- regularizers ----------------------------------------------------------------------------
def _l1(model: nn.Module, params: dict) -> torch.Tensor:
    return sum(strength * model.get_submodule(layer_of(w)).weight.abs().sum()
               for w, strength in params["reg_regims"].items())


def _group_lasso(model: nn.Module, params: dict) -> torch.Tensor:
    total = 0.0
    for w, (strength, structure) in params["reg_regims"].items():
        weight = model.get_submodule(layer_of(w)).weight
        groups = weight.transpose(0, 1) if structure == "Channels" else weight
        total = total + strength * groups.flatten(1).norm(dim=1).sum()
    return total


REGULARIZERS = {"L1Regularizer": _l1, "GroupLassoRegularizer": _group_lasso}
