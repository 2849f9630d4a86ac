"""Learning-rate schedules: plain callables ``step -> lr`` that know their length."""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class PiecewiseLr:
    """``base_lr * rates[i]`` between the iteration boundaries (PocketFlow's schedule)."""

    base_lr: float
    boundaries: Sequence[int]
    rates: Sequence[float]
    nb_iters: int

    def __post_init__(self) -> None:
        if len(self.rates) != len(self.boundaries) + 1:
            raise ValueError("PiecewiseLr needs len(rates) == len(boundaries) + 1")

    def __call__(self, step: int) -> float:
        return self.base_lr * self.rates[bisect.bisect_right(list(self.boundaries), step)]


@dataclass(frozen=True)
class CosineLr:
    """Linear warm-up for ``warmup_iters`` then cosine decay to ``final_ratio * base_lr``."""

    base_lr: float
    nb_iters: int
    warmup_iters: int = 0
    final_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_iters:
            return self.base_lr * (step + 1) / self.warmup_iters
        span = max(1, self.nb_iters - self.warmup_iters)
        progress = min(1.0, (step - self.warmup_iters) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.base_lr * (self.final_ratio + (1.0 - self.final_ratio) * cosine)


@dataclass(frozen=True)
class ConstantLr:
    base_lr: float
    nb_iters: int

    def __call__(self, step: int) -> float:
        return self.base_lr


@dataclass(frozen=True)
class ScaledLr:
    """Another schedule multiplied by ``factor`` (e.g. QAT at 1/100 of the training rates)."""

    schedule: object
    factor: float

    @property
    def nb_iters(self) -> int:
        return self.schedule.nb_iters

    def __call__(self, step: int) -> float:
        return self.factor * self.schedule(step)


def scaled_lr(lrn_rate_init: float, global_batch: int, batch_size_norm: int) -> float:
    """The linear scaling rule: lr grows with the global batch (batch_size x workers)."""
    return lrn_rate_init * global_batch / batch_size_norm


def iters_for_epochs(nb_epochs: float, nb_smpls: int, global_batch: int) -> int:
    return max(1, int(math.ceil(nb_epochs * nb_smpls / global_batch)))


@dataclass(frozen=True)
class TriangularLr:
    """One cycle: ``lr_min`` rising linearly to ``lr_max`` at mid-run, back to ``lr_min`` at
    the end (Gate Decorator's fine-tuning schedule)."""

    lr_min: float
    lr_max: float
    nb_iters: int

    def __call__(self, step: int) -> float:
        half = max(1.0, self.nb_iters / 2)
        rise = 1.0 - abs(min(step, self.nb_iters) - half) / half
        return self.lr_min + (self.lr_max - self.lr_min) * max(0.0, rise)
