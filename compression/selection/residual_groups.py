"""Coupled residual pruning: the channels of a residual stream are chosen once, for all readers.

A residual stream (``x1 = x0 + f1(x0)``, ``x2 = x1 + f2(x1)``...) is one set of channel ids in
the channel graph (``compression.graph``): every member of the sums writes them and several
layers read them (each block's first conv, the next stage's first conv and shortcut, the
classifier). Pruned one reader at a time, each keeps its own subset and the stream keeps the
union, so its members and BN layers hardly shrink. A *residual group* is a set of such shared
channels with the readers that read them all (as Torch-Pruning's groups); selecting which of
them stay, once for the whole group, makes every reader keep the same channels, so the channels
left out vanish from every member, shortcut, BN and reader together. The same holds for any
channels several readers share whole (the input of an Inception block's branches).

Criteria (``GROUP_CRITERIA``), each over all the readers of the group:

- ``lasso``: one LASSO problem stacking every reader's regression (contributions of each
  channel to each reader's sampled outputs, each reader's rows normalised by its target
  energy), solved for an exact count as ``chn-pruned-rmt`` does for one layer;
- ``l1``: the sum over readers of each channel's weight-column L1 norm, normalised per reader
  by its mean column norm.

A group keeps ``round(n * mean_r(counts[r] / in_channels[r]))`` of its ``n`` channels (its
readers' own kept fractions, so a uniform ratio keeps that ratio of the stream).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from compression.graph.layers import PrunableLayer, graph_of
from compression.selection.ista import normalised_problem, select_exact
from compression.selection.sampling import collect, gram_and_corr, layer_weight, normal_equations


@dataclass
class ResidualGroup:
    """Shared channel ids (union roots) and, per reader, the weight column of each."""

    roots: list[int]
    columns: dict[str, list[int]]      # reader -> its column reading roots[k], for each k

    @property
    def readers(self) -> list[str]:
        return list(self.columns)

    def keep(self, kept: Sequence[int]) -> dict[str, torch.Tensor]:
        """Each reader's kept input columns when the group keeps roots ``kept`` (positions)."""
        return {name: torch.tensor(sorted(cols[k] for k in kept), dtype=torch.long)
                for name, cols in self.columns.items()}


def residual_groups(layers: Sequence[PrunableLayer],
                    chosen: Sequence[PrunableLayer]) -> list[ResidualGroup]:
    """The groups whose readers are all ``chosen`` and read nothing but the group's channels
    (each once): shared, not fixed, channel ids grouped by the set of readers reading them."""
    graph = graph_of(layers)
    names = {layer.name for layer in chosen}
    fixed = graph.fixed_roots()
    by_readers: dict[frozenset, list[int]] = {}
    for root, voters in graph.voters().items():
        if len(voters) > 1 and root not in fixed:
            by_readers.setdefault(frozenset(voters), []).append(root)
    groups = []
    for readers, roots in by_readers.items():
        if not readers <= names or len(roots) < 2:
            continue                          # a skipped reader keeps them all anyway
        roots = sorted(roots)
        columns: dict[str, list[int]] | None = {}
        for name in sorted(readers):
            read = graph.roots(graph.read_ids(name))
            if len(set(read)) != len(read) or set(read) != set(roots):
                columns = None                # it reads other channels too, or one twice
                break
            where = {root: col for col, root in enumerate(read)}
            columns[name] = [where[root] for root in roots]
        if columns:
            groups.append(ResidualGroup(roots, columns))
    return groups


def why_no_groups(layers: Sequence[PrunableLayer], chosen: Sequence[PrunableLayer]) -> str:
    """Why ``residual_groups`` found none, in words for the log and the report."""
    graph = graph_of(layers)
    names, fixed = {layer.name for layer in chosen}, graph.fixed_roots()
    shared = {root: voters for root, voters in graph.voters().items() if len(voters) > 1}
    if not shared:
        return "no channel is read by more than one layer (no residual sum or shared input)"
    free = {root: voters for root, voters in shared.items() if root not in fixed}
    if not free:
        return (f"the {len(shared)} channels read by several layers are kept whole by the graph "
                "(a norm across channels, a channel shuffle, a split at fixed widths or an op "
                "without a rule: see the log's 'kept whole around')")
    if not any(voters <= names for voters in free.values()):
        return "the layers reading the shared channels are not all chosen (skip rules)"
    return "each layer reading the shared channels also reads other channels"


def group_count(group: ResidualGroup, counts: Mapping[str, int],
                in_channels: Mapping[str, int]) -> int:
    fraction = sum(counts[r] / in_channels[r] for r in group.readers) / len(group.readers)
    return max(1, min(len(group.roots), round(len(group.roots) * fraction)))


Criterion = Callable[..., torch.Tensor]
GROUP_CRITERIA: dict[str, Criterion] = {}


def register_group_criterion(name: str) -> Callable[[Criterion], Criterion]:
    """``(group, model, nb_keep, batches, options (``SelectionOptions``), seed) -> kept root
    positions``."""
    def add(fn: Criterion) -> Criterion:
        GROUP_CRITERIA[name] = fn
        return fn
    return add


@register_group_criterion("l1")
def _l1(group: ResidualGroup, model: nn.Module, nb_keep: int, batches, settings,
        seed: int) -> torch.Tensor:
    score = torch.zeros(len(group.roots), dtype=torch.float64)
    for name, cols in group.columns.items():
        norms = layer_weight(model.get_submodule(name)).detach().abs().sum(dim=(0, 2)).double().cpu()
        score += norms[cols] / norms.mean().clamp_min(1e-12)
    return score.topk(nb_keep).indices.sort().values


@register_group_criterion("lasso")
def _lasso(group: ResidualGroup, model: nn.Module, nb_keep: int, batches, settings,
           seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    n = len(group.roots)
    gram = torch.zeros(n, n, dtype=torch.float64)
    corr = torch.zeros(n, dtype=torch.float64)
    for name, cols in group.columns.items():
        patches, targets = collect(model, model, name, batches, settings.nb_crops_per_smpl, gen)
        g, c = gram_and_corr(*normal_equations(patches, targets),
                             layer_weight(model.get_submodule(name)).detach())
        energy = float((targets.double() ** 2).sum().clamp_min(1e-30))
        index = torch.tensor(cols)
        gram += g.cpu()[index][:, index] / energy
        corr += c.cpu()[index] / energy
    gram, corr, _ = normalised_problem(gram=gram, corr=corr)
    keep, _ = select_exact(gram, corr, nb_keep, settings.ista_lrn_rate, settings.ista_nb_iters,
                           seed=seed)
    return keep.sort().values.cpu()


def coupled_keep(model: nn.Module, layers: Sequence[PrunableLayer],
                 chosen: Sequence[PrunableLayer], counts: Mapping[str, int], batches,
                 criterion: str, settings, seed: int = 0) -> tuple[dict[str, torch.Tensor],
                                                                  list[dict]]:
    """``reader -> kept input columns`` for every reader of a residual group of ``model``
    (unpruned), and one record per group."""
    if criterion not in GROUP_CRITERIA:
        raise ValueError(f"unknown residual-group criterion {criterion!r}; valid: "
                         f"{', '.join(GROUP_CRITERIA)}")
    in_channels = {layer.name: layer.in_channels for layer in chosen}
    keep, records = {}, []
    model.eval()
    for group in residual_groups(layers, chosen):
        nb_keep = group_count(group, counts, in_channels)
        kept = GROUP_CRITERIA[criterion](group, model, nb_keep, batches, settings, seed)
        keep.update(group.keep(kept.tolist()))
        records.append({"readers": group.readers, "channels": len(group.roots),
                        "kept": nb_keep, "criterion": criterion})
    return keep, records
