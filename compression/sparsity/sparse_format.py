"""COO and CSR encodings of a state dict: the layout of the sparse model files.

The files themselves (the sparse copies beside a model artifact, rows ``coo`` and ``csr`` of
``compression.artifacts.files``) are written and read by ``compression.artifacts.sparse``.
Layout of the file
(``kind="sparse_model"``, a weights-only ``utils.checkpoint.save_file`` dict)::

    {"spec": <architecture spec>, "meta": {...}, "layout": "coo" | "csr",
     "dense":  {name: tensor},                       # biases, BN, small or dense weights
     "sparse": {name: {"shape": [d0, d1, ...], "values": float tensor [nnz], ...}}}

- COO: ``"indices"``: positions of the non-zeros in the weight flattened row-major, ascending,
  stored as int16 when the weight has < 2^15 elements, else int32.
- CSR: the weight viewed as ``[d0, d1*d2*...]`` (output channel x fan-in); ``"crow"`` int32
  [d0 + 1] row pointers, ``"col"`` column indices (int16 when the fan-in is < 2^15, else int32).

A weight is stored sparse only when that is smaller than dense. Loading validates every index
and rebuilds the dense state dict exactly (same values, same zeros).
"""
from __future__ import annotations

import math

import torch

from utils.checkpoint import CheckpointError

LAYOUTS = ("coo", "csr")


class SparseFormatError(CheckpointError):
    """A sparse model file is malformed."""


def _index_dtype(limit: int) -> torch.dtype:
    return torch.int16 if limit < 2 ** 15 else torch.int32


def _encode(weight: torch.Tensor, layout: str) -> dict:
    shape = list(weight.shape)
    if layout == "coo":
        flat = weight.flatten()
        indices = torch.nonzero(flat, as_tuple=True)[0]
        return {"shape": shape, "values": flat[indices].clone(),
                "indices": indices.to(_index_dtype(flat.numel()))}
    matrix = weight.reshape(shape[0], -1)
    rows, cols = torch.nonzero(matrix, as_tuple=True)
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    return {"shape": shape, "values": matrix[rows, cols].clone(), "crow": crow.to(torch.int32),
            "col": cols.to(_index_dtype(matrix.shape[1]))}


def _nbytes(entry: dict) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values() if torch.is_tensor(t))


def encode_state_dict(state_dict: dict, layout: str) -> tuple[dict, dict]:
    """``(dense, sparse)`` parts of a state dict: weights of rank >= 2 go sparse when smaller."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown sparse layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    dense, sparse = {}, {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu()
        if tensor.dim() >= 2 and tensor.is_floating_point():
            entry = _encode(tensor, layout)
            if _nbytes(entry) < tensor.numel() * tensor.element_size():
                sparse[name] = entry
                continue
        dense[name] = tensor
    return dense, sparse


def _fail(name: str, problem: str) -> SparseFormatError:
    return SparseFormatError(f"corrupt sparse tensor {name!r}: {problem}")


def _decode(name: str, entry: dict, layout: str) -> torch.Tensor:
    if not isinstance(entry, dict) or "shape" not in entry or not torch.is_tensor(entry.get("values")):
        raise _fail(name, "expected a dict with 'shape' and a 'values' tensor")
    shape, values = [int(d) for d in entry["shape"]], entry["values"]
    numel = math.prod(shape)
    if layout == "coo":
        indices = entry.get("indices")
        if not torch.is_tensor(indices) or indices.numel() != values.numel():
            raise _fail(name, "'indices' must be a tensor with one index per value")
        indices = indices.long()
        if indices.numel() and (indices.min() < 0 or indices.max() >= numel
                                or bool((indices[1:] <= indices[:-1]).any())):
            raise _fail(name, f"indices must be ascending, unique and in [0, {numel})")
        flat = torch.zeros(numel, dtype=values.dtype)
        flat[indices] = values
        return flat.view(shape)
    crow, col = entry.get("crow"), entry.get("col")
    if not (torch.is_tensor(crow) and torch.is_tensor(col)) or crow.numel() != shape[0] + 1:
        raise _fail(name, f"'crow' must hold {shape[0] + 1} row pointers and 'col' be a tensor")
    crow, col = crow.long(), col.long()
    nb_cols = numel // shape[0] if shape[0] else 0
    if (crow[0] != 0 or crow[-1] != values.numel() or col.numel() != values.numel()
            or bool((crow[1:] < crow[:-1]).any())):
        raise _fail(name, "row pointers must rise from 0 to the number of values")
    if col.numel() and (col.min() < 0 or col.max() >= nb_cols):
        raise _fail(name, f"column indices must be in [0, {nb_cols})")
    rows = torch.repeat_interleave(torch.arange(shape[0]), crow[1:] - crow[:-1])
    matrix = torch.zeros(shape[0], nb_cols, dtype=values.dtype)
    matrix[rows, col] = values
    return matrix.view(shape)


def decode_state_dict(dense: dict, sparse: dict, layout: str) -> dict:
    if layout not in LAYOUTS:
        raise SparseFormatError(f"unknown sparse layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    state = dict(dense)
    for name, entry in sparse.items():
        state[name] = _decode(name, entry, layout)
    return state
