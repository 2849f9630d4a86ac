"""Sparse copies of a model artifact (rows ``coo`` and ``csr`` of ``files``, one per layout):
writing, rebuilding the dense model, and the export that checks both round trips.

The file layout and the COO / CSR encodings are ``compression.sparsity.sparse_format``
(``encode_state_dict`` / ``decode_state_dict``); here they become files beside an artifact.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from compression.artifacts.files import path_of
from compression.artifacts.model import build_model
from compression.sparsity.sparse_format import (LAYOUTS, SparseFormatError, decode_state_dict,
                                                encode_state_dict)
from utils.checkpoint import load_file, save_file
from utils.model_io import load_weights, unwrap

KIND = "sparse_model"


def save_sparse_model(path: str, model: nn.Module, spec: dict, layout: str,
                      meta: dict | None = None) -> int:
    """Write ``model`` (masks already baked in) in ``layout``; returns the file size in bytes."""
    dense, sparse = encode_state_dict(unwrap(model).state_dict(), layout)
    save_file(path, KIND, {"spec": spec, "meta": meta or {}, "layout": layout,
                           "dense": dense, "sparse": sparse})
    return os.path.getsize(path)


def load_sparse_model(path: str, base: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the dense model of a sparse file; returns ``(model, file dict)``. ``base``: the
    module an unregistered net's spec builds on (``compression.artifacts.build_model``)."""
    obj = load_file(path, kind=KIND)
    missing = [k for k in ("spec", "layout", "dense", "sparse") if k not in obj]
    if missing:
        raise SparseFormatError(f"{path}: missing {', '.join(missing)} (not a sparse model file)")
    state = decode_state_dict(obj["dense"], obj["sparse"], obj["layout"])
    model = build_model(obj["spec"], base)
    load_weights(model, state, path)
    return model, obj


def export_sparse_files(model: nn.Module, spec: dict, stem: str, inputs: torch.Tensor,
                        meta: dict | None = None, base: nn.Module | None = None) -> dict:
    """The sparse copies beside ``stem`` (one per layout, ``files.path_of(stem, layout)``), each
    loaded back and run on ``inputs`` against ``model``: ``{layout: {"path", "bytes",
    "max_abs_diff"}}``."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        expected = model(inputs).cpu()
    model.train(was_training)
    files = {}
    for layout in LAYOUTS:
        path = path_of(stem, layout)
        size = save_sparse_model(path, model, spec, layout, meta)
        loaded, _ = load_sparse_model(path, base)
        with torch.no_grad():
            diff = float((loaded.eval()(inputs.cpu()) - expected).abs().max())
        files[layout] = {"path": path, "bytes": size, "max_abs_diff": diff}
    return files
