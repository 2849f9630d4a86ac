"""Fake quantizers: uniform and codebook (non-uniform) weights, uniform activations.

Weight quantizers are ``torch.nn.utils.parametrize`` parametrizations of conv/linear ``weight``
(like ``compression.sparsity.masks``): the optimizer updates the raw weight (``.original``), the forward
sees the quantized one, and ``detach_weight_quantizers`` bakes the quantized values in.
Buckets (one range or codebook each): ``layer`` (whole tensor), ``channel`` (per output channel,
dim 0) or ``split`` (the flattened tensor in consecutive chunks of ``bucket_size``; the LAST
chunk is shorter: padded internally with copies of its own last element, which changes neither
its min/max nor any assignment, its codebook initialised on its real elements only; padded
positions are dropped, never stored).

Uniform (PocketFlow ``uniform``): per bucket a = max - min, b = min,
Q(x) = a * round((x - b) / a * (2^k - 1)) / (2^k - 1) + b (round half to even; a == 0: code 0,
Q(x) = b = x). ``quantize_codes`` / ``dequantize`` are the exact halves of the fake quantizer's
forward (same float32 ops), so codes + a + b reconstruct it bit for bit.
Codebook (PocketFlow ``non-uniform``): 2^k centres per bucket in the weight's own units (no
[0, 1] normalisation or sign split: files store the centres as they are); q = nearest centre
(ties to the smaller). Gradients are straight-through (identity) to the weight, and each centre
receives the sum of its members' gradients.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from compression.sparsity.masks import parametrize_weights

BUCKET_TYPES = ("layer", "channel", "split")
OPT_MODES = ("weights", "cluster", "both")
INIT_STYLES = ("kmeans", "quantile", "uniform")


def check_bucket(bucket_type: str, bucket_size: int) -> None:
    if bucket_type not in BUCKET_TYPES:
        raise ValueError(f"unknown bucket_type {bucket_type!r}; valid: {', '.join(BUCKET_TYPES)}")
    if int(bucket_size) < 1:
        raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in 1..16, got {bits!r}")
    return bits


def optional_bits(bits: object) -> int | None:
    """``bits`` as an int in 1..16, or None for full precision (None or an int >= 32)."""
    if bits is None or (isinstance(bits, int) and not isinstance(bits, bool) and bits >= 32):
        return None
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in 1..16 (None or >= 32: full precision), got {bits!r}")
    return bits


def nb_buckets(shape: tuple | list | torch.Size, bucket_type: str, bucket_size: int) -> int:
    """How many ranges/codebooks a tensor of ``shape`` has."""
    if bucket_type == "channel" and len(shape) >= 1:
        return int(shape[0])
    if bucket_type == "split":
        return max(1, math.ceil(math.prod(shape) / bucket_size))
    return 1


def to_buckets(x: torch.Tensor, bucket_type: str, bucket_size: int) -> torch.Tensor:
    """``x`` as rows ``[nb_buckets, bucket_len]`` (split: last row padded with its last value)."""
    if bucket_type == "channel" and x.dim() >= 1:
        return x.reshape(x.shape[0], -1)
    if bucket_type == "split":
        flat = x.reshape(-1)
        pad = (-flat.numel()) % bucket_size
        if pad:
            flat = torch.cat([flat, flat[-1:].expand(pad)])
        return flat.view(-1, bucket_size)
    return x.reshape(1, -1)


def from_buckets(rows: torch.Tensor, shape: tuple | list | torch.Size) -> torch.Tensor:
    return rows.reshape(-1)[:math.prod(shape)].view(tuple(shape))


def range_codes(x: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Float codes round((x - b) / a * (2^k - 1)) clamped to [0, 2^k - 1]; a == 0 -> code 0."""
    levels = float(2 ** bits - 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round((x - offset) / safe * levels).clamp_(0, levels)


def range_values(codes: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor,
                bits: int) -> torch.Tensor:
    return scale * codes / float(2 ** bits - 1) + offset


@torch.no_grad()
def quantize_codes(x: torch.Tensor, bits: int, bucket_type: str = "channel",
                   bucket_size: int = 512, keep_zero: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes int64 of x's shape in [0, 2^k - 1], scale a [nb_buckets], offset b
    [nb_buckets])``, all computed in float32. ``keep_zero``: the offset is moved to a whole
    number of steps below 0, so that 0 is a grid point and decodes to exactly 0 (the integer
    zero point of asymmetric quantization; a pruned weight stays pruned)."""
    check_bits(bits)
    check_bucket(bucket_type, bucket_size)
    rows = to_buckets(x.detach().float(), bucket_type, bucket_size)
    offset = rows.amin(1)
    scale = rows.amax(1) - offset
    if keep_zero:
        levels = float(2 ** bits - 1)
        lo, hi = offset.clamp(max=0.0), rows.amax(1).clamp(min=0.0)
        scale = hi - lo
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-lo / safe * levels).clamp(0, levels)
        offset = -(scale * zero / levels)
    codes = range_codes(rows, offset[:, None], scale[:, None], bits)
    return from_buckets(codes, x.shape).long(), scale, offset


def dequantize(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int,
               bucket_type: str = "channel", bucket_size: int = 512,
               shape: tuple | list | torch.Size | None = None) -> torch.Tensor:
    """float32 tensor of ``shape`` (default: codes' shape) from codes and per-bucket a, b."""
    shape = codes.shape if shape is None else tuple(shape)
    rows = to_buckets(codes.reshape(shape).to(torch.float32), bucket_type, bucket_size)
    return from_buckets(range_values(rows, offset.float()[:, None], scale.float()[:, None], bits),
                        shape)


class BitsModule(nn.Module):
    """A quantizer's ``bits`` (validated by ``optional_bits``, changeable at any time; None:
    full precision) and ``levels`` = 2^k - 1."""

    def __init__(self, bits: int | None) -> None:
        super().__init__()
        self.bits = bits

    @property
    def bits(self) -> int | None:
        return self._bits

    @bits.setter
    def bits(self, value: int | None) -> None:
        self._bits = optional_bits(value)

    @property
    def levels(self) -> float | None:
        return None if self._bits is None else float(2 ** self._bits - 1)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class StraightThrough(torch.autograd.Function):
    """Returns ``q`` exactly; the gradient goes unchanged to both ``x`` and ``q``, or to ``x``
    only where ``lo <= x <= hi`` when a range is given (clipped STE for activations)."""

    @staticmethod
    def forward(ctx, x, q, lo=None, hi=None):
        ctx.save_for_backward(None if lo is None else (x >= lo) & (x <= hi))
        return q.clone()

    @staticmethod
    def backward(ctx, grad):
        inside, = ctx.saved_tensors
        return (grad if inside is None else grad * inside), grad, None, None


def keep_zeros(quantizer: nn.Module, weight: torch.Tensor) -> nn.Module:
    """Make ``quantizer`` keep the zeros of ``weight`` (a pruned layer): those weights stay
    exactly 0 in its output, in the codes it encodes (its grid or codebook holds an exact 0)
    and through fine-tuning (no gradient reaches them). Call before it is registered."""
    quantizer.register_buffer("nonzero", (weight.detach() != 0).to(weight.dtype))
    return quantizer


def apply_kept_zeros(quantizer: nn.Module, q: torch.Tensor) -> torch.Tensor:
    nonzero = getattr(quantizer, "nonzero", None)
    return q if nonzero is None else q * nonzero.to(q.dtype)


class UniformWeightQuantizer(BitsModule):
    """k-bit uniform fake quantizer of a weight (parametrization); ``bits`` may be changed at
    any time; ``None`` or >= 32 means full precision (identity)."""

    def __init__(self, bits: int | None = 4, bucket_type: str = "channel",
                 bucket_size: int = 512) -> None:
        super().__init__(bits)
        check_bucket(bucket_type, bucket_size)
        self.bucket_type, self.bucket_size = bucket_type, int(bucket_size)

    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nonzero = getattr(self, "nonzero", None)
        if nonzero is None:
            return quantize_codes(weight, self.bits, self.bucket_type, self.bucket_size)
        return quantize_codes(weight * nonzero, self.bits, self.bucket_type, self.bucket_size,
                              keep_zero=True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return apply_kept_zeros(self, weight)
        codes, scale, offset = self.encode(weight)
        q = dequantize(codes, scale, offset, self.bits, self.bucket_type, self.bucket_size)
        return apply_kept_zeros(self, StraightThrough.apply(weight, q.to(weight.dtype)))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, bucket_type={self.bucket_type}, bucket_size={self.bucket_size}"


# The weight parametrizations ``quantizers_of`` finds. Each has ``bits``, ``bucket_type``,
# ``bucket_size`` and ``encode`` (codebook: codes and centres; the others: codes, scales and
# offsets with value = scale * code / (2^k - 1) + offset), which the bit-packed format stores.
WEIGHT_QUANTIZERS: list[type] = [UniformWeightQuantizer]


def register_weight_quantizer(cls: type) -> type:
    """Class decorator: another weight quantizer ``quantizers_of`` (and the packed format) knows."""
    WEIGHT_QUANTIZERS.append(cls)
    return cls


def attach_weight_quantizers(model: nn.Module, names: list[str] | None,
                             make_quantizer: Callable[[str], nn.Module]) -> dict[str, nn.Module]:
    """Parametrize the weight of each named conv/linear layer (None: all) with
    ``make_quantizer(name)``; returns ``quantizers_of(model)``."""
    parametrize_weights(model, names, lambda name, module: make_quantizer(name))
    return quantizers_of(model)


def parametrizations_of(model: nn.Module, kind: type) -> dict[str, nn.Module]:
    """``"layer.weight"`` / ``"layer.bias"`` -> its parametrization of class ``kind``."""
    found = {}
    for name, module in model.named_modules():
        for tensor in ("weight", "bias"):
            if parametrize.is_parametrized(module, tensor):
                for p in module.parametrizations[tensor]:
                    if isinstance(p, kind):
                        found[f"{name}.{tensor}" if name else tensor] = p
    return found


def bake_parametrizations(model: nn.Module, kind: type) -> nn.Module:
    """In place: every tensor parametrized by a ``kind`` becomes its computed values (a plain
    parameter: the tensor's whole parametrization chain is baked)."""
    for key in parametrizations_of(model, kind):
        name, _, tensor = key.rpartition(".")
        module = model.get_submodule(name)
        if parametrize.is_parametrized(module, tensor):
            parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
    return model


def quantizers_of(model: nn.Module) -> dict[str, nn.Module]:
    """Layer name -> its weight quantizer (uniform or codebook), for every quantized layer."""
    found = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations["weight"]:
                if isinstance(p, tuple(WEIGHT_QUANTIZERS)):
                    found[name] = p
    return found


def detach_weight_quantizers(model: nn.Module) -> nn.Module:
    """Bake the quantized values into plain weights and remove the quantizers (in place)."""
    for name in quantizers_of(model):
        parametrize.remove_parametrizations(model.get_submodule(name), "weight",
                                            leave_parametrized=True)
    return model


def sqnr_db(x: torch.Tensor, xq: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10 log10(sum x^2 / sum (x - xq)^2) in dB (inf if exact)."""
    noise = (x.detach().double() - xq.detach().double()).pow(2).sum()
    if noise == 0:
        return math.inf
    return float(10 * torch.log10(x.detach().double().pow(2).sum() / noise))
