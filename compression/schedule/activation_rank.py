"""Filters ranked by the feature maps they produce (Distiller's ActivationAPoZRankedFilterPruner
and ActivationMeanRankedFilterPruner, Hu et al. 2016 "network trimming").

The statistics are those of the channel as its READERS see it (after the writer's BatchNorm and
ReLU, or after a residual sum for a stream), gathered by forward pre-hooks on one reader of each
channel over a few batches of training inputs with the model in eval mode, when the event fires
(Distiller collects them during the previous validation). Scores, higher = kept:

- ``apoz``: 1 - the average percentage of zeros of the channel;
- ``mean_act``: the channel's mean activation. Distiller's code keeps the LOWEST means, which
  removes the most active filters; here the least active ones go, as the criterion intends.

A channel whose named filters are already all zero scores 0, so pruning stays monotone.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from compression.graph.channel_graph import ChannelGraph

Batches = Callable[[], Iterable[torch.Tensor]]
CRITERIA = ("apoz", "mean_act")


@torch.no_grad()
def activation_scores(model: nn.Module, graph: ChannelGraph, roots: list[int], criterion: str,
                      batches: Batches | None, what: str) -> torch.Tensor:
    if batches is None:
        raise ValueError(f"{what}: ranking by activations needs training batches (the schedule "
                         "learner passes them; a bare CompressionScheduler needs batches=...)")
    wanted = set(roots)
    where: dict[int, tuple[str, int]] = {}       # root -> (reader, position in its input)
    for reader, ids in graph.readers.items():
        if reader in graph.gate_readers:
            continue
        for position, root in enumerate(graph.roots(ids)):
            if root in wanted and root not in where:
                where[root] = (reader, position)
    missing = wanted - set(where)
    if missing:
        raise ValueError(f"{what}: {len(missing)} channels have no reader to observe")
    sums = torch.zeros(len(roots), dtype=torch.float64)
    counts = torch.zeros(len(roots), dtype=torch.float64)
    by_reader: dict[str, list[tuple[int, int]]] = {}
    for k, root in enumerate(roots):
        reader, position = where[root]
        by_reader.setdefault(reader, []).append((k, position))

    def hook_for(pairs: list[tuple[int, int]]):
        index = torch.tensor([p for _, p in pairs])
        slots = torch.tensor([k for k, _ in pairs])

        def hook(module, args):
            x = args[0].detach()
            x = x.index_select(1, index.to(x.device)).transpose(0, 1).flatten(1).double().cpu()
            value = (x == 0).double() if criterion == "apoz" else x
            sums.index_add_(0, slots, value.sum(dim=1))
            counts.index_add_(0, slots, torch.full((len(pairs),), float(x.shape[1]), dtype=torch.float64))
        return hook

    handles = [model.get_submodule(r).register_forward_pre_hook(hook_for(pairs))
               for r, pairs in by_reader.items()]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for inputs in batches():
            model(inputs.to(device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    mean = (sums / counts.clamp_min(1)).float()
    return 1.0 - mean if criterion == "apoz" else mean
