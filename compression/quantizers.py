"""Fake quantizers: uniform and codebook (non-uniform) weights, uniform activations.

Weight quantizers are ``torch.nn.utils.parametrize`` parametrizations of conv/linear ``weight``
(like ``compression.masks``): the optimizer updates the raw weight (``.original``), the forward
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

from compression.masks import parametrize_weights

BUCKET_TYPES = ("layer", "channel", "split")
OPT_MODES = ("weights", "cluster", "both")
INIT_STYLES = ("kmeans", "quantile", "uniform")
ACT_ATTR = "activation_quantizer"


def _check_bucket(bucket_type: str, bucket_size: int) -> None:
    if bucket_type not in BUCKET_TYPES:
        raise ValueError(f"unknown bucket_type {bucket_type!r}; valid: {', '.join(BUCKET_TYPES)}")
    if int(bucket_size) < 1:
        raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")


def _check_bits(bits: int) -> int:
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


def _codes(x: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Float codes round((x - b) / a * (2^k - 1)) clamped to [0, 2^k - 1]; a == 0 -> code 0."""
    levels = float(2 ** bits - 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round((x - offset) / safe * levels).clamp_(0, levels)


def _dequantize(codes: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor,
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
    _check_bits(bits)
    _check_bucket(bucket_type, bucket_size)
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
    codes = _codes(rows, offset[:, None], scale[:, None], bits)
    return from_buckets(codes, x.shape).long(), scale, offset


def dequantize(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int,
               bucket_type: str = "channel", bucket_size: int = 512,
               shape: tuple | list | torch.Size | None = None) -> torch.Tensor:
    """float32 tensor of ``shape`` (default: codes' shape) from codes and per-bucket a, b."""
    shape = codes.shape if shape is None else tuple(shape)
    rows = to_buckets(codes.reshape(shape).to(torch.float32), bucket_type, bucket_size)
    return from_buckets(_dequantize(rows, offset.float()[:, None], scale.float()[:, None], bits),
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


class _StraightThrough(torch.autograd.Function):
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


def _keep_zeros(quantizer: nn.Module, q: torch.Tensor) -> torch.Tensor:
    nonzero = getattr(quantizer, "nonzero", None)
    return q if nonzero is None else q * nonzero.to(q.dtype)


class UniformWeightQuantizer(BitsModule):
    """k-bit uniform fake quantizer of a weight (parametrization); ``bits`` may be changed at
    any time; ``None`` or >= 32 means full precision (identity)."""

    def __init__(self, bits: int | None = 4, bucket_type: str = "channel",
                 bucket_size: int = 512) -> None:
        super().__init__(bits)
        _check_bucket(bucket_type, bucket_size)
        self.bucket_type, self.bucket_size = bucket_type, int(bucket_size)

    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nonzero = getattr(self, "nonzero", None)
        if nonzero is None:
            return quantize_codes(weight, self.bits, self.bucket_type, self.bucket_size)
        return quantize_codes(weight * nonzero, self.bits, self.bucket_type, self.bucket_size,
                              keep_zero=True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return _keep_zeros(self, weight)
        codes, scale, offset = self.encode(weight)
        q = dequantize(codes, scale, offset, self.bits, self.bucket_type, self.bucket_size)
        return _keep_zeros(self, _StraightThrough.apply(weight, q.to(weight.dtype)))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, bucket_type={self.bucket_type}, bucket_size={self.bucket_size}"


@torch.no_grad()
def nearest_centre(rows: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index (int64 ``[B, L]``) of the nearest of each row's centres; ties -> smaller centre."""
    n = centres.shape[1]
    if n == 1:
        return torch.zeros_like(rows, dtype=torch.long)
    ordered, perm = centres.sort(dim=1, stable=True)
    hi = torch.searchsorted(ordered, rows.contiguous()).clamp_(1, n - 1)
    lo = hi - 1
    closer_hi = (ordered.gather(1, hi) - rows).abs() < (rows - ordered.gather(1, lo)).abs()
    return perm.gather(1, torch.where(closer_hi, hi, lo))


def _init_rows(rows: torch.Tensor, n: int, style: str) -> torch.Tensor:
    """``n`` centres per row: quantiles (j + 0.5) / n of its values, linspace(min, max), or
    ``kmeans``: Lloyd iterations from the quantiles (the least-squares codebook, which quantile
    centres are not: they crowd the dense middle and clip the tails)."""
    steps = torch.linspace(0, 1, n, dtype=rows.dtype, device=rows.device)
    if rows.shape[0] == 0:
        return rows.new_empty(0, n)
    if style == "uniform":
        lo, hi = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)
        return lo + (hi - lo) * steps
    ordered = rows.sort(1).values
    pos = (torch.arange(n, dtype=torch.float64, device=rows.device) + 0.5) / n * (rows.shape[1] - 1)
    i0 = pos.floor().long()
    frac = (pos - i0).to(rows.dtype)
    i1 = (i0 + 1).clamp(max=rows.shape[1] - 1)
    centres = ordered[:, i0] * (1 - frac) + ordered[:, i1] * frac
    return _lloyd(rows, centres) if style == "kmeans" else centres


def _lloyd(rows: torch.Tensor, centres: torch.Tensor, nb_iters: int = 30) -> torch.Tensor:
    """k-means on each row's values: every centre moves to the mean of its members (a centre
    without members stays); the squared error never increases."""
    ones = torch.ones_like(rows)
    for _ in range(nb_iters):
        index = nearest_centre(rows, centres)
        sums = torch.zeros_like(centres).scatter_add_(1, index, rows)
        counts = torch.zeros_like(centres).scatter_add_(1, index, ones)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1.0), centres)
    return centres


class CodebookQuantizer(nn.Module):
    """Non-uniform fake quantizer (parametrization): weight -> nearest of 2^k trainable centres
    per bucket. ``opt_mode``: ``weights`` (centres frozen), ``cluster`` (weights get no
    gradient, centres trained) or ``both``. Centres are initialised from the weight on the first
    forward (i.e. when registered); setting ``bits`` re-initialises them on the next forward,
    which replaces the ``centres`` Parameter: rebuild the optimizer afterwards."""

    def __init__(self, bits: int = 4, init_style: str = "quantile", bucket_type: str = "layer",
                 bucket_size: int = 512, opt_mode: str = "weights") -> None:
        super().__init__()
        _check_bucket(bucket_type, bucket_size)
        if init_style not in INIT_STYLES:
            raise ValueError(f"unknown init_style {init_style!r}; valid: {', '.join(INIT_STYLES)}")
        self.init_style, self.bucket_type, self.bucket_size = init_style, bucket_type, int(bucket_size)
        self.centres = nn.Parameter(torch.empty(0, 0))
        self.bits = bits
        self.opt_mode = opt_mode

    @property
    def bits(self) -> int:
        return self._bits

    @bits.setter
    def bits(self, value: int) -> None:
        self._bits = _check_bits(value)
        if self.centres.shape[1:] != (2 ** value,):
            self.centres = nn.Parameter(torch.empty(0, 0, device=self.centres.device),
                                        requires_grad=self.centres.requires_grad)

    @property
    def opt_mode(self) -> str:
        return self._opt_mode

    @opt_mode.setter
    def opt_mode(self, value: str) -> None:
        if value not in OPT_MODES:
            raise ValueError(f"unknown opt_mode {value!r}; valid: {', '.join(OPT_MODES)}")
        self._opt_mode = value
        self.centres.requires_grad_(value != "weights")

    @torch.no_grad()
    def init_centres(self, weight: torch.Tensor) -> None:
        """(Re)place the centres at quantiles of ``weight`` or uniformly over [min, max]."""
        rows = to_buckets(weight.detach().float(), self.bucket_type, self.bucket_size)
        n, rest = 2 ** self.bits, weight.numel() % self.bucket_size
        nonzero = getattr(self, "nonzero", None)
        if nonzero is not None:       # centre 0 is an exact 0; the others fit the kept weights
            mask = to_buckets(nonzero.float(), self.bucket_type, self.bucket_size) > 0
            if self.bucket_type == "split" and rest:
                mask[-1, rest:] = False
            centres = torch.zeros(rows.shape[0], n, device=rows.device)
            for i in range(rows.shape[0]):
                kept = rows[i][mask[i]]
                if n > 1 and kept.numel():
                    centres[i, 1:] = _init_rows(kept[None], n - 1, self.init_style)[0]
            self.centres = nn.Parameter(centres, requires_grad=self.opt_mode != "weights")
            return
        if self.bucket_type == "split" and rest:        # the short last bucket: real values only
            centres = torch.cat([_init_rows(rows[:-1], n, self.init_style),
                                 _init_rows(rows[-1:, :rest], n, self.init_style)])
        else:
            centres = _init_rows(rows, n, self.init_style)
        self.centres = nn.Parameter(centres, requires_grad=self.opt_mode != "weights")

    def _ready(self, weight: torch.Tensor) -> torch.Tensor:
        rows = to_buckets(weight.float(), self.bucket_type, self.bucket_size)
        if self.centres.shape != (rows.shape[0], 2 ** self.bits):
            self.init_centres(weight)
        return rows

    def _centres(self) -> torch.Tensor:
        """The centres; with kept zeros, centre 0 is held at exactly 0 (no gradient)."""
        if getattr(self, "nonzero", None) is None:
            return self.centres
        free = torch.ones_like(self.centres[:1])
        free[:, 0] = 0.0
        return self.centres * free

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes int64 of the weight's shape, centres float32 [nb_buckets, 2^k])``."""
        rows = self._ready(weight)
        centres = self._centres().detach()
        codes = from_buckets(nearest_centre(rows, centres), weight.shape)
        if getattr(self, "nonzero", None) is not None:
            codes = torch.where(self.nonzero > 0, codes, torch.zeros_like(codes))
        return codes, centres.float().clone()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        rows = self._ready(weight)
        if self.opt_mode == "cluster":
            rows = rows.detach()
        centres = self._centres()
        q = centres.gather(1, nearest_centre(rows, centres.detach()))
        q = from_buckets(_StraightThrough.apply(rows, q), weight.shape).to(weight.dtype)
        return _keep_zeros(self, q)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, init_style={self.init_style}, bucket_type={self.bucket_type}, "
                f"bucket_size={self.bucket_size}, opt_mode={self.opt_mode}")


# The weight parametrizations ``quantizers_of`` finds. Each has ``bits``, ``bucket_type``,
# ``bucket_size`` and ``encode`` (codebook: codes and centres; the others: codes, scales and
# offsets with value = scale * code / (2^k - 1) + offset), which the bit-packed format stores.
WEIGHT_QUANTIZERS: list[type] = [UniformWeightQuantizer, CodebookQuantizer]


def register_weight_quantizer(cls: type) -> type:
    """Class decorator: another weight quantizer ``quantizers_of`` (and the packed format) knows."""
    WEIGHT_QUANTIZERS.append(cls)
    return cls


class ActivationQuantizer(nn.Module):
    """k-bit uniform fake quantizer of activations over one range [lo, hi]: in training mode
    (unless ``frozen``) the range is an EMA (``momentum``) of batch min/max, the first batch
    setting it; in eval mode it is frozen (before any training batch, each batch's own min/max
    is used and not stored). Clipped STE: gradient passes only where lo <= x <= hi.
    ``bits`` None or >= 32: identity."""

    def __init__(self, bits: int | None = 8, momentum: float = 0.9, frozen: bool = False) -> None:
        super().__init__()
        self.bits = None if bits is None or bits >= 32 else _check_bits(bits)
        self.momentum, self.frozen = float(momentum), frozen
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _track(self, x: torch.Tensor) -> None:
        keep = self.momentum if bool(self.initialized) else 0.0     # first batch: its range
        self.lo.mul_(keep).add_((1 - keep) * x.detach().amin().float())
        self.hi.mul_(keep).add_((1 - keep) * x.detach().amax().float())
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return x
        if self.training and not self.frozen:
            self._track(x)
        if bool(self.initialized):
            lo, hi = self.lo, self.hi
        else:
            lo, hi = x.detach().amin().float(), x.detach().amax().float()
        with torch.no_grad():
            scale = hi - lo
            q = _dequantize(_codes(x.float(), lo, scale, self.bits), lo, scale, self.bits)
        return _StraightThrough.apply(x, q.to(x.dtype), lo.to(x.dtype), hi.to(x.dtype))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, momentum={self.momentum}, frozen={self.frozen}"


def attach_weight_quantizers(model: nn.Module, names: list[str] | None,
                             make_quantizer: Callable[[str], nn.Module]) -> dict[str, nn.Module]:
    """Parametrize the weight of each named conv/linear layer (None: all) with
    ``make_quantizer(name)``; returns ``quantizers_of(model)``."""
    parametrize_weights(model, names, lambda name, module: make_quantizer(name))
    return quantizers_of(model)


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


def _quantize_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return getattr(module, ACT_ATTR)(output)


def attach_activation_quantizers(model: nn.Module, names: list[str], bits: int | None,
                                 momentum: float = 0.9) -> dict[str, ActivationQuantizer]:
    """Quantize the output of each named module: an ``ActivationQuantizer`` child named
    ``activation_quantizer`` (its range travels in the state dict) applied by a forward hook."""
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"no module {name!r} in the model") from exc
        if isinstance(getattr(module, ACT_ATTR, None), ActivationQuantizer):
            raise ValueError(f"{name} already has an activation quantizer")
        module.add_module(ACT_ATTR, ActivationQuantizer(bits, momentum).train(module.training))
        module.register_forward_hook(_quantize_output)
    return activation_quantizers_of(model)


def activation_quantizers_of(model: nn.Module) -> dict[str, ActivationQuantizer]:
    return {name: getattr(m, ACT_ATTR) for name, m in model.named_modules()
            if isinstance(getattr(m, ACT_ATTR, None), ActivationQuantizer)}


def detach_activation_quantizers(model: nn.Module) -> nn.Module:
    """Remove every activation quantizer and its hook: the model is exactly as before."""
    for name in activation_quantizers_of(model):
        module = model.get_submodule(name)
        for key in [k for k, fn in module._forward_hooks.items() if fn is _quantize_output]:
            del module._forward_hooks[key]
        delattr(module, ACT_ATTR)
    return model


def sqnr_db(x: torch.Tensor, xq: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10 log10(sum x^2 / sum (x - xq)^2) in dB (inf if exact)."""
    noise = (x.detach().double() - xq.detach().double()).pow(2).sum()
    if noise == 0:
        return math.inf
    return float(10 * torch.log10(x.detach().double().pow(2).sum() / noise))
