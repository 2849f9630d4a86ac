"""Fixed-point arithmetic of the integer-only program (gemmlowp / TFLite conventions).

A real multiplier ``M > 0`` is stored as an int32 ``M0`` in ``[2^30, 2^31)`` and a right shift
``n`` (negative: a left shift) with ``M ~= M0 * 2^-31 * 2^-n`` (relative error <= 2^-31).
``requantize(acc, M0, n, rounding)`` computes ``round(acc * M)`` for int32 accumulators ``acc``
in one of two roundings:

- ``"single"`` (default): the doubling high multiply kept at full precision in int64
  (``acc * M0 < 2^62``), then ONE rounding right shift by ``31 + n``:
  ``RoundingDivideByPOT(acc * M0, 31 + n)``. Exactly ``round(acc * M0 * 2^-(31+n))`` with
  halves away from zero (TFLite's ``TFLITE_SINGLE_ROUNDING`` rounds halves up instead).
- ``"gemmlowp"``: bit-exact with gemmlowp / TFLite's reference ``MultiplyByQuantizedMultiplier``:
  ``x = acc << max(-n, 0)`` (must stay in int32), ``y = SaturatingRoundingDoublingHighMul(x,
  M0) = (x*M0 + nudge) / 2^31`` truncated toward 0 (``nudge = 2^30`` if ``x*M0 >= 0`` else
  ``1 - 2^30``), then ``RoundingDivideByPOT(y, max(n, 0))``. It rounds twice, so when ``n`` is
  small the result is one above/below ``round(acc * M)`` for a few percent of inputs (e.g.
  ``n = 1``: ``acc * M = 28.32`` -> ``y = 57`` -> ``28.5`` -> ``29``).

``RoundingDivideByPOT(x, e)`` divides by ``2^e`` rounding half away from zero (gemmlowp). Both
run on int64 tensors with integer ops only. The float helpers below (``quantize_multiplier``,
``activation_qparams``, ``quantize_weight``) run once, at build time.
"""
from __future__ import annotations

import math

import torch

INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1
MAX_RIGHT_SHIFT = 31
ROUNDINGS = ("single", "gemmlowp")


class IntegerOverflowError(OverflowError):
    """An accumulator or shifted value left the int32 range of the integer-only contract."""


def quantize_multiplier(real: float) -> tuple[int, int]:
    """``(M0, n)`` with ``M0`` in ``[2^30, 2^31)`` and ``real ~= M0 * 2^-31 * 2^-n``; ``(0, 0)``
    for ``real == 0`` (or a multiplier so small that every int32 input gives 0)."""
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"a requantization multiplier must be finite and >= 0, got {real!r}")
    if real == 0.0:
        return 0, 0
    mantissa, exponent = math.frexp(real)          # real = mantissa * 2^exponent, 0.5 <= m < 1
    m0 = round(mantissa * 2 ** 31)
    if m0 == 2 ** 31:
        m0, exponent = m0 // 2, exponent + 1
    shift = -exponent
    if shift > MAX_RIGHT_SHIFT:
        return 0, 0
    if shift < -31:
        raise ValueError(f"requantization multiplier {real!r} is too large (>= 2^31)")
    return int(m0), int(shift)


def multiplier_value(m0: int, shift: int) -> float:
    """The real multiplier ``M0 * 2^-31 * 2^-n`` a pair represents (for reports and tests)."""
    return math.ldexp(m0, -31 - shift)


def _check_int32(x: torch.Tensor, what: str) -> None:
    if x.numel() and (int(x.max()) > INT32_MAX or int(x.min()) < INT32_MIN):
        raise IntegerOverflowError(f"{what} leaves the int32 range "
                                   f"[{int(x.min())}, {int(x.max())}]")


def rounding_doubling_high_mul(x: torch.Tensor, m0: torch.Tensor) -> torch.Tensor:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int64 tensors holding int32 values
    (``m0 >= 0``, so the one saturating case ``INT32_MIN * INT32_MIN`` cannot occur)."""
    ab = x * m0
    nudge = torch.where(ab >= 0, torch.full_like(ab, 2 ** 30), torch.full_like(ab, 1 - 2 ** 30))
    return torch.div(ab + nudge, 2 ** 31, rounding_mode="trunc")


def rounding_divide_by_pot(x: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded half away from zero."""
    mask = (torch.ones_like(exponent) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).to(torch.int64)
    return (x >> exponent) + (remainder > threshold).to(torch.int64)


def check_rounding(rounding: str) -> str:
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; valid: {', '.join(ROUNDINGS)}")
    return rounding


def requantize(acc: torch.Tensor, m0: torch.Tensor | int, shift: torch.Tensor | int,
               what: str = "accumulator", rounding: str = "single") -> torch.Tensor:
    """``round(acc * M)`` in integer arithmetic (see the module docstring); ``m0``/``shift``
    broadcast against ``acc`` (per-channel: shape ``[C, 1, 1]`` or ``[C]`` on the last dim)."""
    if acc.dtype != torch.int64:
        raise TypeError(f"requantize expects an int64 tensor, got {acc.dtype}")
    m0 = torch.as_tensor(m0, dtype=torch.int64)
    shift = torch.as_tensor(shift, dtype=torch.int64)
    _check_int32(acc, what)
    if check_rounding(rounding) == "single":
        return rounding_divide_by_pot(acc * m0, shift + 31)
    left = shift.neg().clamp(min=0)
    if bool((left > 0).any()):
        acc = acc << left
        _check_int32(acc, f"{what} after its left shift")
    return rounding_divide_by_pot(rounding_doubling_high_mul(acc, m0), shift.clamp(min=0))


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Float rounding with exact halves away from zero (the fake-quant side's rounding)."""
    return torch.where(x >= 0, torch.floor(x + 0.5), torch.ceil(x - 0.5))


def activation_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Asymmetric unsigned ``(scale, zero_point)`` of a calibrated range (widened to hold 0, so
    real 0 -- padding, ReLU -- is exactly representable): codes ``[0, 2^bits - 1]``."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmax = 2 ** bits - 1
    if hi - lo <= 0.0:
        return 1.0, 0
    scale = (hi - lo) / qmax
    zero_point = min(max(round(-lo / scale), 0), qmax)
    return scale, int(zero_point)


def quantize_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel ``(codes int64 in [-(2^(b-1)-1), 2^(b-1)-1], scale float64
    [C_out])``; an all-zero channel gets scale 1 (its codes are all 0)."""
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().to(torch.float64)
    amax = w.reshape(w.shape[0], -1).abs().amax(1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    view = (-1,) + (1,) * (w.dim() - 1)
    codes = round_half_away(w / scale.view(view)).clamp(-qmax, qmax).to(torch.int64)
    return codes, scale


def check_bits(name: str, bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"{name} must be an int in [2, 8], got {bits!r}")
    return bits
