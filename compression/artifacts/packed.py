"""The bit-packed copy of a quantized model artifact (row ``quant`` of ``files``): writing,
rebuilding the model (plain weights = the dequantized values, frozen activation quantizers
re-attached), and the export that checks the round trip bit for bit.

The file layout, the bit packing and the quantizers' encode / decode are
``compression.quantization.packed_format``; here they become a file beside an artifact.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from compression.artifacts.model import rebuild
from compression.quantization.packed_format import (KIND, attach_frozen_activations,
                                                    decode_quantized, encode_quantized,
                                                    quantized_size_report)
from compression.quantization.quantizers import quantizers_of
from utils.checkpoint import load_file, save_file
from utils.model_io import unwrap


def save_quantized_model(path: str, model: nn.Module, spec: dict, meta: dict | None = None) -> int:
    """Write ``model`` (weight quantizers attached) bit-packed; returns the file size in bytes.
    Weights whose quantizer is at full precision are stored as plain tensors."""
    save_file(path, KIND, {"spec": spec, "meta": meta or {}, **encode_quantized(model)})
    return os.path.getsize(path)


def load_quantized_model(path: str, base: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model of a quantized file (plain weights = the dequantized values, frozen
    activation quantizers re-attached); returns ``(model, file dict)``. ``base``: the module
    an unregistered net's spec builds on."""
    obj = load_file(path, kind=KIND)
    state = decode_quantized(obj, path)
    model = rebuild(path, obj["spec"], state, base)
    attach_frozen_activations(model, obj.get("activations"), path)
    return model, obj


def export_quantized(path: str, model: nn.Module, spec: dict, meta: dict | None = None,
                     base: nn.Module | None = None) -> dict:
    """Write ``model`` (weight quantizers attached) bit-packed, load it back and compare every
    quantized weight bit for bit: ``{"file": {"path", "bytes", "round_trip_exact"},
    "sizes": quantized_size_report(model)}``."""
    size = save_quantized_model(path, model, spec, meta)
    loaded, _ = load_quantized_model(path, base)
    model = unwrap(model)
    exact = all(torch.equal(loaded.get_submodule(n).weight,
                            q(model.get_submodule(n).parametrizations["weight"].original).detach().cpu())
                for n, q in quantizers_of(model).items())
    return {"file": {"path": path, "bytes": size, "round_trip_exact": exact},
            "sizes": quantized_size_report(model)}
