"""Channels a thinning extension removes because they are exactly zero (Distiller's thinning:
``remove_channels`` drops all-zero input channels, ``remove_filters`` all-zero outputs).

- An input column of a conv/linear layer whose weights are all zero contributes nothing: the
  layer drops it (whatever zeroed it: a group-lasso threshold, a mask).
- A channel is zero where a BatchNorm's weight AND bias are zero on it (network slimming with a
  threshold, ``compression.schedule.regularizers``) and that BatchNorm follows the only layer
  writing the channel: every reader drops it. A channel several layers write (a residual
  stream) is not zero because one member's BatchNorm is, and stays.

Both keep the thinned model's outputs equal to the model's (the learner reports the largest
difference). ``zero_keep`` returns the readers' kept input columns, as a structured pruner's
keep dict, to be intersected with it (``merge_keep``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from compression.graph.layers import PrunableLayer, graph_of


@torch.no_grad()
def zero_keep(model: nn.Module, layers: Sequence[PrunableLayer]) -> tuple[dict[str, torch.Tensor], dict]:
    """(reader -> kept input columns, {"zero_columns": {reader: n}, "zero_channels": {bn: n}})."""
    graph = graph_of(layers)
    dropped: dict[str, set[int]] = {}
    stats: dict = {"zero_columns": {}, "zero_channels": {}}
    readers = [n for n in graph.readers if n not in graph.gate_readers]
    for name in readers:
        weight = model.get_submodule(name).weight
        if weight.dim() < 2 or weight.shape[1] != len(graph.columns[name]):
            continue                                   # grouped: its columns are not channels
        zero = weight.detach().transpose(0, 1).flatten(1).abs().sum(dim=1) == 0
        columns = zero.nonzero().flatten().tolist()
        if columns:
            dropped.setdefault(name, set()).update(columns)
            stats["zero_columns"][name] = len(columns)
    writers: dict[int, set[str]] = {}
    for writer, ids in graph.writers.items():
        for root in graph.roots(ids):
            writers.setdefault(root, set()).add(writer)
    zero_roots: set[int] = set()
    for name, ids in graph.followers.items():
        module = model.get_submodule(name)
        if not isinstance(module, nn.modules.batchnorm._NormBase) or not module.affine:
            continue
        roots = graph.roots(ids)
        zero = ((module.weight == 0) & (module.bias == 0)).nonzero().flatten().tolist()
        found = [roots[c] for c in zero if len(writers.get(roots[c], ())) == 1]
        if found:
            zero_roots.update(found)
            stats["zero_channels"][name] = len(found)
    for name in readers:
        read = graph.roots(graph.read_ids(name))
        columns = {c for c, root in enumerate(read) if root in zero_roots}
        if columns:
            dropped.setdefault(name, set()).update(columns)
    keep = {}
    for name, columns in dropped.items():
        width = len(graph.columns[name])
        if len(columns) >= width:
            columns = set(sorted(columns)[1:])         # a layer keeps at least one input
        keep[name] = torch.tensor(sorted(set(range(width)) - columns), dtype=torch.long)
    return keep, stats


def merge_keep(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per reader, the columns both keep."""
    out = dict(a)
    for name, kept in b.items():
        if name in out:
            both = sorted(set(out[name].tolist()) & set(kept.tolist()))
            out[name] = torch.tensor(both or out[name].tolist()[:1], dtype=torch.long)
        else:
            out[name] = kept
    return out
