"""Codebook (non-uniform) weight quantizer: 2^k trainable centres per bucket.

PocketFlow's ``non-uniform``: the centres are in the weight's own units (no [0, 1]
normalisation or sign split: files store them as they are); q = nearest centre (ties to the
smaller). Gradients are straight-through (identity) to the weight, and each centre receives the
sum of its members' gradients. Buckets as in ``compression.quantization.quantizers``.
"""
from __future__ import annotations

import torch
from torch import nn

from compression.quantization.quantizers import (INIT_STYLES, OPT_MODES, StraightThrough,
                                                 apply_kept_zeros, check_bits, check_bucket,
                                                 from_buckets, register_weight_quantizer,
                                                 to_buckets)


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


@register_weight_quantizer
class CodebookQuantizer(nn.Module):
    """Non-uniform fake quantizer (parametrization): weight -> nearest of 2^k trainable centres
    per bucket. ``opt_mode``: ``weights`` (centres frozen), ``cluster`` (weights get no
    gradient, centres trained) or ``both``. Centres are initialised from the weight on the first
    forward (i.e. when registered); setting ``bits`` re-initialises them on the next forward,
    which replaces the ``centres`` Parameter: rebuild the optimizer afterwards."""

    def __init__(self, bits: int = 4, init_style: str = "quantile", bucket_type: str = "layer",
                 bucket_size: int = 512, opt_mode: str = "weights") -> None:
        super().__init__()
        check_bucket(bucket_type, bucket_size)
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
        self._bits = check_bits(value)
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
        q = from_buckets(StraightThrough.apply(rows, q), weight.shape).to(weight.dtype)
        return apply_kept_zeros(self, q)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, init_style={self.init_style}, bucket_type={self.bucket_type}, "
                f"bucket_size={self.bucket_size}, opt_mode={self.opt_mode}")
