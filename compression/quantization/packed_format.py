"""Bit packing and the quantizers' encode / decode: the layout of bit-packed model files.

The files themselves (the bit-packed copy beside a model artifact, row ``quant`` of
``compression.artifacts.files``) are written and read by ``compression.artifacts.packed``.
Layout of the file (``kind="quantized_model"``, a weights-only ``utils.checkpoint.save_file``
dict)::

    {"spec": <architecture spec>, "meta": {...},
     "dense": {key: tensor},            # every other state-dict tensor, as is (biases, BN, ...)
     "quantized": {key: {               # key: the plain state-dict key, e.g. "conv1.weight"
         "method": "uniform" | "codebook", "bits": k (1..16), "shape": [d0, d1, ...],
         "bucket_type": "layer" | "channel" | "split", "bucket_size": int,
         "codes": uint8 [ceil(numel * k / 8)],       # pack_bits of the codes, row-major order
         # uniform:  "scales": float32 [nb_buckets] (a = max - min), "offsets": float32 (b = min)
         # codebook: "centres": float32 [nb_buckets, n], 1 <= n <= 2^k, every code < n
     }},
     "activations": {layer: {"bits": k, "lo": float32 [], "hi": float32 []}}}  # frozen ranges

Bit stream (``pack_bits``): code i occupies stream bits [i*k, (i+1)*k), least-significant bit
first, and stream bit j is bit (j % 8) of byte j // 8 (little-endian bit order); the last byte
is zero-padded. Buckets follow ``compression.quantization.quantizers`` (nb_buckets: 1 per layer, d0 per
channel, ceil(numel / bucket_size) per split). Loading validates every field and rebuilds the
plain state dict whose weights are bit-identical to the fake-quantized weights of the saved
model; activation ranges are re-attached as frozen ``ActivationQuantizer``s.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from compression.quantization.activations import (ACT_ATTR, activation_quantizers_of,
                                                  attach_activation_quantizers)
from compression.quantization.quantizers import (BUCKET_TYPES, dequantize, from_buckets, nb_buckets,
                                                 quantizers_of, to_buckets)
from compression.quantization.codebook import CodebookQuantizer
from utils.checkpoint import CheckpointError
from utils.model_io import unwrap

KIND = "quantized_model"
_CHUNK = 1 << 16                       # codes per packing step (a multiple of 8: byte-aligned)


class QuantFormatError(CheckpointError):
    """A quantized model file is malformed."""


def packed_nbytes(numel: int, bits: int) -> int:
    return math.ceil(numel * bits / 8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Dense little-endian bit stream (uint8 [ceil(numel * bits / 8)]) of integer ``codes`` in
    [0, 2^bits), for bits in 1..16."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    flat = codes.detach().reshape(-1).cpu().to(torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes must be in [0, {1 << bits}) for {bits} bits")
    shifts, weights = torch.arange(bits, dtype=torch.int32), 1 << torch.arange(8, dtype=torch.int32)
    out = []
    for start in range(0, flat.numel(), _CHUNK):
        stream = ((flat[start:start + _CHUNK, None] >> shifts) & 1).reshape(-1)
        stream = torch.cat([stream, stream.new_zeros((-stream.numel()) % 8)])
        out.append((stream.view(-1, 8) * weights).sum(1).to(torch.uint8))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """The ``numel`` codes (int64) of a ``pack_bits`` stream; exact inverse."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_nbytes(numel, bits):
        raise ValueError(f"expected uint8 [{packed_nbytes(numel, bits)}] for {numel} codes of "
                         f"{bits} bits, got {packed.dtype} {list(packed.shape)}")
    shifts, weights = torch.arange(8, dtype=torch.int32), 1 << torch.arange(bits, dtype=torch.int64)
    step = _CHUNK * bits // 8                               # bytes holding _CHUNK codes
    out = []
    for start in range(0, numel, _CHUNK):
        count = min(_CHUNK, numel - start)
        chunk = packed[start // _CHUNK * step:][:step].to(torch.int32)
        stream = ((chunk[:, None] >> shifts) & 1).reshape(-1)[:count * bits]
        out.append((stream.view(count, bits).long() * weights).sum(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict ``model`` would have with its parametrizations baked in and its activation
    quantizers removed (values of parametrized tensors as computed now)."""
    skip = tuple(f"{name}.{ACT_ATTR}." if name else f"{ACT_ATTR}."
                 for name in activation_quantizers_of(model))
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(skip):
            continue
        if ".parametrizations." in key or key.startswith("parametrizations."):
            owner, _, rest = key.rpartition("parametrizations.")
            plain = owner + rest.split(".")[0]
            if plain not in state:
                module = model.get_submodule(owner[:-1]) if owner else model
                with torch.no_grad():
                    state[plain] = getattr(module, plain[len(owner):]).detach().cpu()
            continue
        state[key] = value.detach().cpu()
    return state


def _encode(quantizer: nn.Module, weight: torch.Tensor) -> dict:
    entry = {"bits": quantizer.bits, "shape": list(weight.shape), "bucket_type": quantizer.bucket_type,
             "bucket_size": quantizer.bucket_size}
    if isinstance(quantizer, CodebookQuantizer):
        codes, centres = quantizer.encode(weight)
        entry.update(method="codebook", centres=centres.cpu())
    else:  # uniform grids: k-bit codes, a scale and an offset per bucket
        codes, scales, offsets = quantizer.encode(weight)
        entry.update(method="uniform", scales=scales.cpu(), offsets=offsets.cpu())
    entry["codes"] = pack_bits(codes, quantizer.bits)
    return entry


def encode_quantized(model: nn.Module) -> dict:
    """The file's ``dense``, ``quantized`` and ``activations`` parts of ``model`` (weight
    quantizers attached). Weights whose quantizer is at full precision stay plain tensors."""
    model = unwrap(model)
    dense, quantized = _plain_state(model), {}
    for name, quantizer in quantizers_of(model).items():
        if quantizer.bits is None:
            continue
        original = model.get_submodule(name).parametrizations["weight"].original
        quantized[f"{name}.weight"] = _encode(quantizer, original.detach())
        del dense[f"{name}.weight"]
    activations = {name: {"bits": q.bits, "lo": q.lo.detach().cpu().float(),
                          "hi": q.hi.detach().cpu().float()}
                   for name, q in activation_quantizers_of(model).items()
                   if q.bits is not None and bool(q.initialized)}
    return {"dense": dense, "quantized": quantized, "activations": activations}


def _fail(name: str, problem: str) -> QuantFormatError:
    return QuantFormatError(f"corrupt quantized tensor {name!r}: {problem}")


def _float_tensor(name: str, entry: dict, field: str, shape: tuple) -> torch.Tensor:
    value = entry.get(field)
    if not torch.is_tensor(value) or not value.is_floating_point() or tuple(value.shape) != shape:
        raise _fail(name, f"{field!r} must be a float tensor of shape {list(shape)}")
    if not bool(torch.isfinite(value).all()):
        raise _fail(name, f"{field!r} holds non-finite values")
    return value.float()


def decode_entry(name: str, entry: dict) -> torch.Tensor:
    """Validate one ``quantized`` entry and return its dequantized float32 weight."""
    if not isinstance(entry, dict):
        raise _fail(name, "expected a dict")
    bits, method, bucket_type = entry.get("bits"), entry.get("method"), entry.get("bucket_type")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise _fail(name, f"bits must be an int in 1..16, got {bits!r}")
    if method not in ("uniform", "codebook"):
        raise _fail(name, f"unknown method {method!r}")
    if bucket_type not in BUCKET_TYPES:
        raise _fail(name, f"unknown bucket_type {bucket_type!r}")
    shape, size = entry.get("shape"), entry.get("bucket_size")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise _fail(name, f"shape must be a list of positive ints, got {shape!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise _fail(name, f"bucket_size must be a positive int, got {size!r}")
    numel, buckets = math.prod(shape), nb_buckets(shape, bucket_type, size)
    packed = entry.get("codes")
    if not torch.is_tensor(packed) or packed.dtype != torch.uint8 or packed.dim() != 1 \
            or packed.numel() != packed_nbytes(numel, bits):
        raise _fail(name, f"packed codes must be uint8 [{packed_nbytes(numel, bits)}] for "
                          f"{numel} codes of {bits} bits, got "
                          f"{list(packed.shape) if torch.is_tensor(packed) else type(packed).__name__}")
    codes = unpack_bits(packed, bits, numel)
    if method == "uniform":
        scales = _float_tensor(name, entry, "scales", (buckets,))
        offsets = _float_tensor(name, entry, "offsets", (buckets,))
        if bool((scales < 0).any()):
            raise _fail(name, "negative scales")
        return dequantize(codes, scales, offsets, bits, bucket_type, size, shape)
    centres = entry.get("centres")
    if not torch.is_tensor(centres) or centres.dim() != 2 or centres.shape[0] != buckets \
            or not 1 <= centres.shape[1] <= 2 ** bits:
        raise _fail(name, f"'centres' must be [{buckets}, n] with 1 <= n <= {2 ** bits} "
                          f"({bits} bits), got {list(getattr(centres, 'shape', []))}")
    centres = _float_tensor(name, entry, "centres", tuple(centres.shape))
    if numel and int(codes.max()) >= centres.shape[1]:
        raise _fail(name, f"code {int(codes.max())} out of range for {centres.shape[1]} centres")
    rows = to_buckets(codes.view(shape), bucket_type, size)
    return from_buckets(centres.gather(1, rows), shape)


def decode_quantized(obj: dict, path: str) -> dict[str, torch.Tensor]:
    """Validate the ``dense`` and ``quantized`` parts of a loaded file and return the plain
    state dict (quantized weights dequantized); errors name ``path``."""
    missing = [k for k in ("spec", "dense", "quantized") if not isinstance(obj.get(k), dict)]
    if missing:
        raise QuantFormatError(f"{path}: missing {', '.join(missing)} (not a quantized model file)")
    both = sorted(set(obj["dense"]) & set(obj["quantized"]))
    if both:
        raise QuantFormatError(f"{path}: tensors stored both dense and quantized: {', '.join(both)}")
    state = dict(obj["dense"])
    for name, entry in obj["quantized"].items():
        state[name] = decode_entry(name, entry)
    return state


def attach_frozen_activations(model: nn.Module, activations: dict, path: str) -> None:
    """Re-attach the file's activation ranges to ``model`` as frozen ``ActivationQuantizer``s
    (each range validated; errors name ``path``)."""
    for name, entry in (activations or {}).items():
        entry = entry if isinstance(entry, dict) else {}
        lo, hi, bits = entry.get("lo"), entry.get("hi"), entry.get("bits")
        if not (torch.is_tensor(lo) and torch.is_tensor(hi) and lo.numel() == hi.numel() == 1
                and isinstance(bits, int) and 1 <= bits <= 16 and float(lo) <= float(hi)):
            raise QuantFormatError(f"{path}: bad activation range for {name!r}")
        try:
            quantizer = attach_activation_quantizers(model, [name], bits)[name]
        except ValueError as exc:
            raise QuantFormatError(f"{path}: {exc}") from exc
        quantizer.lo.copy_(lo.reshape(()))
        quantizer.hi.copy_(hi.reshape(()))
        quantizer.initialized.fill_(True)
        quantizer.frozen = True


def quantized_size_report(model: nn.Module) -> dict:
    """Per quantized layer: bits, numel, buckets, code/overhead/payload bytes and fp32 bytes;
    totals over them, plus ``other_bytes`` (every other state tensor as stored)."""
    model, layers = unwrap(model), {}
    for name, q in quantizers_of(model).items():
        if q.bits is None:
            continue
        shape = model.get_submodule(name).parametrizations["weight"].original.shape
        numel, buckets = math.prod(shape), nb_buckets(shape, q.bucket_type, q.bucket_size)
        overhead = buckets * (4 * 2 ** q.bits if isinstance(q, CodebookQuantizer) else 8)
        codes = packed_nbytes(numel, q.bits)
        layers[name] = {"bits": q.bits, "numel": numel, "buckets": buckets, "code_bytes": codes,
                        "overhead_bytes": overhead, "payload_bytes": codes + overhead,
                        "fp32_bytes": 4 * numel}
    keys = {f"{name}.weight" for name in layers}
    other = sum(v.numel() * v.element_size() for k, v in _plain_state(model).items()
                if k not in keys)
    numel = sum(v["numel"] for v in layers.values())
    payload = sum(v["payload_bytes"] for v in layers.values())
    return {"layers": layers, "numel": numel, "payload_bytes": payload, "fp32_bytes": 4 * numel,
            "ratio": payload / (4 * numel) if numel else 0.0,
            "bits_per_weight": 8 * payload / numel if numel else 0.0, "other_bytes": other}
