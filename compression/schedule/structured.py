"""Ranked structure pruners of a schedule (Distiller's ``*RankedStructureParameterPruner`` and
their ``_AGP`` forms): filters, input channels or rows, ranked and removed by exact counts.

Each event ranks the structures of the named weights and keeps the best; what it decides is a
keep dict on the READERS of the removed channels (``compression.surgery.thinning.thin``), and until the
thinning extension the readers' input columns (and the named weights' filters) are masked, so
the masked model computes exactly what the thinned one will.

- ``Filters`` / ``3D`` of a weight W remove W's output channels. Where W's outputs are shared
  (a residual stream written by several convs, read by several layers), a channel leaves the
  stream as a whole: the named writers of one stream are ranked TOGETHER (the sum of their
  length-normalised filter norms) and every reader of a removed channel drops it.
- ``Channels`` (and ``Rows`` of a 2-D weight, as Distiller's rank_and_prune_channels) of a layer
  L remove L's input columns; L's producer loses the filters no other layer reads.
- Counts follow Distiller: ``floor(fraction * n)`` structures (rounded down to ``group_size``),
  never all of them; ties are broken by position (an exact count; Distiller's threshold may
  remove more on ties). ``group_dependency: Leader``: the first weight's ranking decides for
  all of them (they must have as many structures).
- Rankings (``RANKERS``): ``l1`` / ``l2`` (mean absolute / root-mean-square value of the
  structure: Distiller's length-normalised norms), ``random`` (seeded by the pruner's name
  and the epoch, so every process draws the same); filters also by their feature maps
  (``apoz``, ``mean_act``: ``compression.schedule.activation_rank``).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from compression.graph.layers import PrunableLayer, graph_of
from compression.sparsity.masks import masks_of
from compression.schedule.policy import Instance, PolicyEntry, Where
from compression.schedule.activation_rank import CRITERIA, activation_scores
from compression.schedule.names import layer_of
from compression.sparsity.agp import agp_sparsity
from compression.surgery.inference import following_bn
from compression.schedule.bn_fold import folded_weight
from compression.schedule.schema import RANKINGS

Ranker = Callable[[torch.Tensor, int, str], torch.Tensor]


def _l1(weight: torch.Tensor, dim: int, seed: str) -> torch.Tensor:
    dims = [d for d in range(weight.dim()) if d != dim]
    return weight.detach().abs().mean(dim=dims)


def _l2(weight: torch.Tensor, dim: int, seed: str) -> torch.Tensor:
    dims = [d for d in range(weight.dim()) if d != dim]
    return weight.detach().pow(2).mean(dim=dims).sqrt()


def _random(weight: torch.Tensor, dim: int, seed: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(zlib.crc32(seed.encode()))
    scores = torch.rand(weight.shape[dim], generator=generator).to(weight.device)
    return torch.where(_l1(weight, dim, seed) == 0, torch.zeros_like(scores), scores + 1e-3)


RANKERS: dict[str, Ranker] = {"l1": _l1, "l2": _l2, "random": _random}


def nb_to_prune(n: int, fraction: float, group_size: int = 1) -> int:
    """Distiller's count: floor(fraction * n), rounded down to group_size, never all n."""
    count = math.floor(fraction * n)
    count = (count // group_size) * group_size
    return n - group_size if count >= n else count


@dataclass
class _Cluster:
    """Structures ranked together: a reader's input columns, or the output channels (channel
    roots) of one or more named writers that share them."""

    kind: str                        # "channels" | "filters"
    weights: list[str]               # the named layers (scored, masked)
    where: Where
    roots: list[int] = field(default_factory=list)               # filters: the channel roots
    positions: dict[str, list[int]] = field(default_factory=dict)  # writer -> root of each filter


class RankedPruner:
    def __init__(self, instance: Instance, entry: PolicyEntry, layers: list[PrunableLayer],
                 all_layers: list[str]) -> None:
        self.instance, self.entry = instance, entry
        base = instance.cls[: -len("_AGP")] if instance.cls.endswith("_AGP") else instance.cls
        self.criterion = RANKINGS[base]
        self.ranker = RANKERS.get(self.criterion, _l1)
        self.batches = None       # () -> input batches, for the activation criteria
        self.agp = instance.cls.endswith("_AGP")
        params = instance.params
        self.group_size = params.get("group_size", 1) or 1
        self.leader = params.get("group_dependency") == "Leader"
        if params.get("reg_regims"):   # the older form: {weight: [fraction, structure]}
            targets = [(w, s, f, instance.at(f"reg_regims.{w}"))
                       for w, (f, s) in params["reg_regims"].items()]
        else:
            targets = [(w, params["group_type"], params.get("desired_sparsity"), instance.at("weights"))
                       for w in params["weights"]]
        self.graph = graph_of(layers)
        self.layers = {layer.name: layer for layer in layers}
        self.fold: dict[str, str] | None = None  # conv -> its BatchNorm, with fold_batchnorm
        self.clusters: list[tuple[_Cluster, float | None]] = []
        self._build(targets)

    # -- what each weight means -------------------------------------------------------------
    def _build(self, targets: list) -> None:
        graph = self.graph
        voters = graph.voters()
        fixed = graph.fixed_roots()
        filters: dict[int, list] = {}    # root -> filter targets writing it
        for weight, structure, fraction, where in targets:
            name = layer_of(weight)
            if structure in ("Channels", "Rows"):
                if name not in self.layers or name not in graph.readers:
                    raise where.error(f"{name} cannot lose input channels: it is not a layer whose "
                                      "inputs can be pruned (called twice, or grouped)")
                self.clusters.append((_Cluster("channels", [name], where), fraction))
                continue
            ids = graph.writers.get(name)
            if not ids:
                raise where.error(f"{name} writes no channels the graph can follow; its filters "
                                  "cannot be removed")
            roots = graph.roots(ids)
            blocked = [r for r in roots if r in fixed or r not in voters]
            if blocked:
                raise where.error(
                    f"cannot remove filters of {name}: its outputs reach the model's output or an "
                    "operation that needs every channel (a flatten into a classifier's fixed "
                    "features, a reshape, an unknown op); prune the input 'Channels' of the layer "
                    "that reads them instead")
            target = (name, roots, fraction, where)
            for root in set(roots):
                filters.setdefault(root, []).append(target)
        # writers of shared channels are ranked together (a residual stream's members)
        seen: set[str] = set()
        for weight, structure, fraction, where in targets:
            name = layer_of(weight)
            if structure in ("Channels", "Rows") or name in seen:
                continue
            members, stack = {}, [name]
            while stack:
                current = stack.pop()
                if current in members:
                    continue
                found = next(t for ts in filters.values() for t in ts if t[0] == current)
                members[current] = found
                for root in found[1]:
                    stack += [t[0] for t in filters[root]]
            seen |= set(members)
            fractions = {t[2] for t in members.values()}
            if len(fractions) > 1:
                raise where.error(f"{', '.join(members)} write the same channels (a residual "
                                  f"stream) but are given different fractions {sorted(fractions)}; "
                                  "the stream loses one set of channels: give them one fraction")
            roots = sorted({r for t in members.values() for r in t[1]})
            cluster = _Cluster("filters", list(members), where, roots,
                               {n: t[1] for n, t in members.items()})
            self.clusters.append((cluster, fraction))
        if self.leader:
            counts = {self._count(c) for c, _ in self.clusters}
            if len(counts) > 1:
                raise self.instance.at("group_dependency").error(
                    "group_dependency: Leader needs weights with as many structures as the leader's; "
                    f"got {sorted(counts)}")

    def _count(self, cluster: _Cluster) -> int:
        if cluster.kind == "filters":
            return len(cluster.roots)
        return len(self.graph.columns[cluster.weights[0]])

    def mask_layers(self) -> list[str]:
        names: list[str] = []
        for cluster, _ in self.clusters:
            touched = list(cluster.weights)
            if cluster.kind == "channels":
                layer = self.layers[cluster.weights[0]]
                if layer.shrinks_producer:
                    touched.append(layer.producer)
            else:
                touched += self._readers(cluster.roots)
            names += [n for n in touched if n not in names]
        return names

    def _readers(self, roots) -> list[str]:
        """The layers (gate readers excepted) that read any of ``roots``."""
        roots = set(roots)
        graph = self.graph
        return sorted(n for n in graph.readers if n not in graph.gate_readers
                      and roots & set(graph.roots(graph.read_ids(n))))

    # -- an event -----------------------------------------------------------------------------
    def fraction(self, default: float | None, epoch: int) -> float:
        if self.agp:
            p, epochs = self.instance.params, self.entry.active_epochs()
            return agp_sparsity(p["initial_sparsity"], p["final_sparsity"], epoch, epochs[0], epochs[-1])
        return float(default)

    def _scores(self, model: nn.Module, cluster: _Cluster, epoch: int) -> torch.Tensor:
        seed = f"{self.instance.name}:{epoch}"
        if cluster.kind == "channels":
            weight = model.get_submodule(cluster.weights[0]).weight
            return self.ranker(weight, 1, seed).float().cpu()
        index = {root: k for k, root in enumerate(cluster.roots)}
        scores = torch.zeros(len(cluster.roots))
        if self.entry.args.get("fold_batchnorm") and self.fold is None:
            self.fold = following_bn(model)
        for name, roots in cluster.positions.items():
            weight = folded_weight(model, name, (self.fold or {}).get(name))
            per_filter = self.ranker(weight, 0, f"{seed}:{name}").float().cpu()
            for f, root in enumerate(roots):
                scores[index[root]] += per_filter[f]
        if self.criterion in CRITERIA:
            alive = (scores > 0).float()       # filters already removed stay removed
            scores = alive * (activation_scores(model, self.graph, cluster.roots, self.criterion,
                                                self.batches, self.instance.name) + 1e-6)
        return scores

    @torch.no_grad()
    def apply(self, model: nn.Module, epoch: int, keep: dict) -> None:
        masks = masks_of(model)
        for name in self.mask_layers():
            masks[name].mask.fill_(1.0)
        dropped: dict[str, set[int]] = {}     # reader -> its input columns removed
        leader_removed: list[int] | None = None
        for cluster, default in self.clusters:
            if self.leader and leader_removed is not None:
                removed = leader_removed
            else:
                scores = self._scores(model, cluster, epoch)
                count = nb_to_prune(self._count(cluster), self.fraction(default, epoch), self.group_size)
                removed = sorted(torch.argsort(scores, stable=True)[:count].tolist())
                leader_removed = removed if self.leader else None
            if cluster.kind == "channels":
                name = cluster.weights[0]
                dropped.setdefault(name, set()).update(removed)
                layer = self.layers[name]
                if layer.shrinks_producer and removed:
                    masks[layer.producer].mask[removed] = 0.0
                continue
            gone = {cluster.roots[k] for k in removed}
            for name, roots in cluster.positions.items():
                rows = [f for f, root in enumerate(roots) if root in gone]
                masks[name].mask[rows] = 0.0
            for reader in self._readers(cluster.roots):
                read = self.graph.roots(self.graph.read_ids(reader))
                dropped.setdefault(reader, set()).update(c for c, r in enumerate(read) if r in gone)
        for reader, columns in dropped.items():
            width = len(self.graph.columns[reader])
            keep[reader] = torch.tensor(sorted(set(range(width)) - columns), dtype=torch.long)
            masks[reader].mask[:, sorted(columns)] = 0.0
