"""Auxiliary classifiers of discrimination-aware channel pruning (DCP).

``head_points(model, nb_stages)`` picks where heads go: evenly spaced among the model's
``stage_names`` (the modules that end a stage, which every registered net with stages lists;
a user's net may list its own), at most ``nb_stages`` of them, so the network is split into
``len(points) + 1`` blocks, the last one ending at the network's own classifier. Each head is
BN -> ReLU -> global average pool -> FC(classes) on the stage's output. ``StageTaps`` records
those outputs during a forward pass with hooks, so the heads live OUTSIDE the model: they are
never part of its parameters, its checkpoint, its thinned artifact or its ONNX graph.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from utils.model_stats import probe_forward


def head_points(model: nn.Module, nb_stages: int) -> list[str]:
    """Up to ``nb_stages`` stage-end module names, evenly spaced, in execution order."""
    stages = list(getattr(model, "stage_names", []) or [])
    if nb_stages <= 0 or not stages:
        return []
    if nb_stages >= len(stages):
        return stages
    picks = [round((i + 1) * len(stages) / nb_stages) - 1 for i in range(nb_stages)]
    return [stages[i] for i in sorted(set(picks))]


class AuxiliaryHead(nn.Module):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(x)).mean(dim=(2, 3)))


class StageTaps:
    """Forward hooks keeping the latest output of each named module (``taps.outputs[name]``)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [model.get_submodule(name).register_forward_hook(self._keep(name))
                         for name in names]

    def _keep(self, name: str):
        def hook(_module, _args, output) -> None:
            self.outputs[name] = output
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def build_heads(model: nn.Module, points: Sequence[str], input_shape: Sequence[int],
                num_classes: int) -> nn.ModuleList:
    """One head per point, sized from a forward pass of one zero input."""
    taps = StageTaps(model, points)
    try:
        probe_forward(model, input_shape)
    finally:
        taps.remove()
    heads = nn.ModuleList()
    for name in points:
        output = taps.outputs[name]
        if output.dim() != 4:
            raise ValueError(f"stage {name!r} outputs a {output.dim()}-D tensor; an auxiliary "
                             "head needs (N, C, H, W)")
        heads.append(AuxiliaryHead(output.shape[1], num_classes))
    return heads.to(next(model.parameters()).device)
