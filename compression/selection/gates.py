"""Gate Decorator (You et al., NeurIPS 2019): a gate per channel after batch norm, ranked by
a Taylor estimate of the loss change when the gate is closed.

``GatedBatchNorm2d`` wraps a BN as ``bn(x) * g * mask``; as in the authors' code the BN's
scale moves into the gate (``g = gamma``, ``beta' = clamp(beta / gamma, -10, 10)``,
``gamma' = 1`` frozen), so the gate IS the channel's scale and an L1 penalty on it shrinks
whole channels. The importance of channel i is ``sum over batches |dL/dg_i * g_i|`` (the
first-order Taylor change of the loss when ``g_i`` becomes 0; accumulated by a gradient hook).

Gates are put only where the channels can really be removed: on a BN between a conv and the
single layer that consumes it (a ``chain`` of ``compression.graph``). Channels that feed a
residual sum or several consumers get no gate, so pruning never breaks a skip connection.
``melt_gates`` folds ``g * mask`` back into plain BNs and returns, for every consumer layer,
the kept input channels, which ``compression.surgery.thinning.thin`` turns into a smaller model that
computes exactly what the gated one does.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from compression.budget.flops import ChannelFlops
from compression.graph.layers import PrunableLayer


class GatedBatchNorm2d(nn.Module):
    """``bn(x) * (g * mask)`` per channel; ``score`` accumulates Taylor importance while
    ``collecting`` (set by ``collect_scores``)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or not bn.affine:
            raise TypeError(f"a gate needs an affine BatchNorm1d/2d, got {type(bn).__name__}")
        self.bn = bn
        with torch.no_grad():
            gamma = bn.weight.detach().clone()
            safe = torch.where(gamma.abs() < 1e-12, torch.full_like(gamma, 1e-12), gamma)
            bn.bias.copy_(torch.clamp(bn.bias / safe, -10.0, 10.0))
            bn.weight.fill_(1.0)
        bn.weight.requires_grad_(False)
        self.g = nn.Parameter(gamma)
        self.register_buffer("mask", torch.ones_like(gamma))
        self.register_buffer("score", torch.zeros_like(gamma))
        self._hook = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * (self.g * self.mask).view(1, -1, *[1] * (x.dim() - 2))

    @property
    def nb_kept(self) -> int:
        return int(self.mask.sum())

    def collect_scores(self, on: bool) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if on:
            self._hook = self.g.register_hook(self._accumulate)

    def _accumulate(self, grad: torch.Tensor) -> None:
        self.score.add_((grad * self.g.detach()).abs())

    @torch.no_grad()
    def melted(self) -> nn.BatchNorm2d:
        """A plain BN (full width) computing ``bn(x) * g * mask``: closed channels output 0."""
        bn = type(self.bn)(self.bn.num_features, self.bn.eps, self.bn.momentum).to(self.g.device)
        scale = self.g * self.mask
        bn.weight.copy_(self.bn.weight * scale)
        bn.bias.copy_(self.bn.bias * scale)
        bn.running_mean.copy_(self.bn.running_mean)
        bn.running_var.copy_(self.bn.running_var)
        bn.num_batches_tracked.copy_(self.bn.num_batches_tracked)
        bn.train(self.training)
        return bn

    def extra_repr(self) -> str:
        return f"{self.bn.num_features} -> {self.nb_kept}"


def gate_points(model: nn.Module, layers: Sequence[PrunableLayer],
                skip: Sequence[str] = ()) -> dict[str, str]:
    """``BN name -> consumer layer`` for every chain with a BN between producer and consumer,
    and every layer reading a shared tensor through a BN of its own (pre-activation, as in a
    DenseNet): the channels a gate may close (skip: substrings of consumer names left alone).
    The gate goes on the last BN before the consumer, so a closed channel reaches it as exact
    zeros (a gate before a depthwise conv would still let that conv's BN bias through)."""
    points = {}
    for layer in layers:
        if any(s in layer.name for s in skip) or layer.blocks:
            continue          # a gate per channel cannot close whole groups of a grouped conv
        if layer.shrinks_producer:        # conv -> BN -> (depthwise ...) -> the one reader
            candidates = layer.followers
        elif layer.mode == "gather":      # shared input -> a BN only this layer reads
            candidates = layer.private[:1]
        else:
            continue
        bns = [f for f in candidates
               if isinstance(model.get_submodule(f), (nn.BatchNorm1d, nn.BatchNorm2d))
               and model.get_submodule(f).affine]
        if bns:  # the BN nearest the consumer (walked back first): with a depthwise conv in
            points[bns[0]] = layer.name  # between, a closed gate there still outputs exact zeros
    return points


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def attach_gates(model: nn.Module, bn_names: Sequence[str]) -> dict[str, GatedBatchNorm2d]:
    """Replace each named BN by a ``GatedBatchNorm2d`` (in place); returns them by name."""
    gates = {}
    for name in bn_names:
        gates[name] = GatedBatchNorm2d(model.get_submodule(name))
        _set(model, name, gates[name])
    return gates


def gates_of(model: nn.Module) -> dict[str, GatedBatchNorm2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, GatedBatchNorm2d)}


def gate_l1(model: nn.Module) -> torch.Tensor:
    """``sum |g * mask|`` over every open gate (the tock's sparsity penalty)."""
    return sum((m.g * m.mask).abs().sum() for m in gates_of(model).values())


def melt_gates(model: nn.Module, points: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Fold every gate into a plain BN (in place); ``consumer layer -> kept input channels``."""
    keep = {}
    for name, gate in gates_of(model).items():
        keep[points[name]] = gate.mask.nonzero().flatten().cpu()
        _set(model, name, gate.melted())
    return keep


class GlobalGatePruner:
    """Closes the globally least important open gates, down to a FLOPs target.

    Channels are ranked across layers by Taylor score normalised by the mean score of all open
    gates, minus ``flops_eta`` x the FLOPs one channel of that layer costs (as a fraction of
    the costliest; the authors' FLOPs-aware term). A layer keeps at least ``minimal_ratio``
    of its channels (at least one).
    """

    def __init__(self, model: nn.Module, layers: Sequence[PrunableLayer], points: Mapping[str, str],
                 input_shape: Sequence[int], minimal_ratio: float = 0.1,
                 flops_eta: float = 0.0) -> None:
        self.points = dict(points)
        self.flops = ChannelFlops(model, layers, input_shape)
        sizes = {layer.name: layer.in_channels for layer in layers}
        self.minimal = {layer: max(1, int(sizes[layer] * minimal_ratio)) for layer in points.values()}
        self.flops_eta = flops_eta

    def counts(self, gates: Mapping[str, GatedBatchNorm2d]) -> dict[str, int]:
        return {self.points[name]: gate.nb_kept for name, gate in gates.items()}

    def ratio(self, gates: Mapping[str, GatedBatchNorm2d]) -> float:
        return self.flops.ratio(self.counts(gates))

    def floor_ratio(self) -> float:
        """The FLOPs ratio with every gated layer at its minimum."""
        return self.flops.ratio(self.minimal)

    def _channel_cost(self, counts: dict[str, int]) -> dict[str, float]:
        base = self.flops.flops(counts)
        return {layer: base - self.flops.flops({**counts, layer: n - 1}) for layer, n in counts.items()}

    @torch.no_grad()
    def prune(self, gates: Mapping[str, GatedBatchNorm2d], nb: int, target: float) -> int:
        """Close up to ``nb`` gates, stopping once the FLOPs ratio is <= ``target``; returns
        how many were closed."""
        counts = self.counts(gates)
        open_scores = torch.cat([g.score[g.mask > 0] for g in gates.values()])
        norm = float(open_scores.mean()) or 1.0
        cost = self._channel_cost(counts)
        top_cost = max(cost.values()) or 1.0
        ranked = []
        for name, gate in gates.items():
            layer = self.points[name]
            penalty = self.flops_eta * cost[layer] / top_cost
            for i in gate.mask.nonzero().flatten().tolist():
                ranked.append((float(gate.score[i]) / norm - penalty, name, i))
        ranked.sort()
        closed = 0
        for _, name, i in ranked:
            if closed >= nb or self.flops.ratio(counts) <= target:
                break
            layer = self.points[name]
            if counts[layer] <= self.minimal[layer]:
                continue
            gates[name].mask[i] = 0.0
            counts[layer] -= 1
            closed += 1
        return closed
