"""Which channel of an earlier tensor each element of a reshaped or permuted tensor holds.

A channel shuffle (``x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)``), a
``flatten`` of a feature map before a linear layer, ``permute`` there and back: ops that move
channels away from dim 1 or mix them with other dims. The channel graph keeps such channels
whole; liveness (``compression.surgery.liveness``) follows them exactly with a *map*: an
integer tensor over every dim but the batch whose entries are the source's channels.
``follow(node, grid, before, after)`` moves a map through one op; ``aligned(grid)`` is the
source channel of each channel (dim 1) of the result, None where a dim-1 index holds several.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import fx

RESHAPES = {"view", "reshape", "flatten", "squeeze", "unsqueeze", torch.reshape, torch.flatten,
            torch.squeeze, torch.unsqueeze}
TRANSPOSES = {"transpose", "swapaxes", "swapdims", torch.transpose, torch.swapaxes}
PERMUTES = {"permute", torch.permute}


def source_grid(shape: Sequence[int]) -> torch.Tensor:
    """The map of a tensor onto itself: every element holds its own channel (dim 1)."""
    channels = int(shape[1])
    return torch.arange(channels).view(channels, *([1] * (len(shape) - 2))).expand(*shape[1:])


def follow(node: fx.Node, grid: torch.Tensor, before: Sequence[int],
           after: Sequence[int]) -> torch.Tensor | None:
    """The map of ``node``'s output from ``grid``, the map of its input (shape ``before``);
    None where the op moves the batch dim or is not a reshape / transpose / permute."""
    if len(after) < 1 or after[0] != before[0] or _numel(after[1:]) != _numel(before[1:]):
        return None
    target, rank = node.target, len(before)
    try:
        if target in RESHAPES:
            return grid.reshape(tuple(after[1:]))
        if target in TRANSPOSES:
            dims = _ints(node.args[1:3] or (node.kwargs.get("dim0"), node.kwargs.get("dim1")))
            dims = [d % rank for d in dims]
            return None if 0 in dims else grid.transpose(dims[0] - 1, dims[1] - 1)
        if target in PERMUTES:
            order = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) \
                else node.args[1:] or node.kwargs.get("dims")
            order = [d % rank for d in _ints(order)]
            return None if order[0] != 0 else grid.permute([d - 1 for d in order[1:]])
    except (TypeError, ValueError, RuntimeError, IndexError):
        return None
    return None


def aligned(grid: torch.Tensor) -> torch.Tensor | None:
    """``grid``'s source channel for each index of its first dim (the tensor's dim 1), or None
    where one index holds elements of several source channels."""
    if grid.dim() == 0:
        return None
    rows = grid.reshape(grid.shape[0], -1)
    return rows[:, 0].clone() if bool((rows == rows[:, :1]).all()) else None


def _ints(values) -> list[int]:
    out = [int(v) for v in values]            # a traced size (an fx Node) raises TypeError
    if not out:
        raise ValueError("no dims")
    return out


def _numel(dims: Sequence[int]) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out
