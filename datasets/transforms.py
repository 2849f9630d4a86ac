"""Image transforms on float CHW tensors (plain torch).

Randomness comes only from an explicit `torch.Generator` argument, so results
are reproducible regardless of worker processes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rand_int(low, high, gen):
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=gen).item())


def _rand_float(gen):
    return float(torch.rand((), generator=gen).item())


def normalize(x, mean, std):
    """(x - mean) / std per channel."""
    mean = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean) / std


def pad_and_random_crop(x, size, padding, gen):
    """Zero-pad by `padding` on every side, then crop `size` x `size` at random."""
    if padding > 0:
        x = F.pad(x, (padding, padding, padding, padding))
    h, w = x.shape[-2:]
    top = _rand_int(0, h - size, gen)
    left = _rand_int(0, w - size, gen)
    return x[..., top:top + size, left:left + size]


def random_hflip(x, gen, p=0.5):
    """Flip horizontally (last axis) with probability p."""
    return x.flip(-1) if _rand_float(gen) < p else x


def resize(x, size):
    """Bilinear, antialiased resize of a CHW tensor to (h, w)."""
    return F.interpolate(x.unsqueeze(0), size=tuple(size), mode="bilinear",
                         align_corners=False, antialias=True).squeeze(0)


def resize_shorter(x, size):
    """Resize so the shorter side equals `size`, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    if h <= w:
        new = (size, max(1, int(round(w * size / h))))
    else:
        new = (max(1, int(round(h * size / w))), size)
    return resize(x, new)


def center_crop(x, size):
    """Central `size` x `size` crop (top/left offsets rounded like torchvision)."""
    h, w = x.shape[-2:]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return x[..., top:top + size, left:left + size]


def random_resized_crop(x, size, gen, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style crop of random area/aspect, resized to `size` x `size`.

    Tries 10 times; falls back to a central crop with the ratio clamped.
    """
    h, w = x.shape[-2:]
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * _rand_float(gen))
        aspect = math.exp(log_r[0] + (log_r[1] - log_r[0]) * _rand_float(gen))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = _rand_int(0, h - ch, gen)
            left = _rand_int(0, w - cw, gen)
            return resize(x[..., top:top + ch, left:left + cw], (size, size))
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
    return resize(x[..., top:top + ch, left:left + cw], (size, size))


class Augment:
    """Chain of callables `f(x, gen) -> x`, applied in order."""

    def __init__(self, fns):
        self.fns = list(fns)

    def __call__(self, x, gen):
        for fn in self.fns:
            x = fn(x, gen)
        return x

    def __repr__(self):
        return f"Augment({self.fns!r})"
