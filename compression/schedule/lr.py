"""The policy's learning-rate schedulers as ONE pure callable ``step -> lr`` (with ``nb_iters``).

Distiller's semantics (the default): a scheduler steps at the END of each of its active epochs
``a`` to epoch ``a + 1`` with torch's closed form at that absolute epoch (Distiller calls
``lr_scheduler.step(epoch=a + 1)``), so during epoch ``t`` the rate is ``base_lr * f(a* + 1)``
for the last active epoch ``a* < t``, and ``base_lr * f(0)`` before the first one ends.
With ``inclusive`` policies (``--sch_ending_epoch=inclusive``, this project's earlier reading)
the rate at the j-th active epoch (j = 0 at the first) is ``base_lr * f(j)``.
Several schedulers multiply.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace
from typing import Callable

from compression.schedule.policy import Policy


def _multi_gamma(p: dict, t: int) -> float:
    factor = 1.0
    for gamma in p["gammas"][: bisect.bisect_right(p["milestones"], t)]:
        factor *= gamma
    return factor


# class -> f(params, t, base_lr): the rate multiplier at scheduler epoch t (torch's closed forms,
# Distiller's MultiStepMultiGammaLR and PolynomialLR)
LR_FACTORS: dict[str, Callable[[dict, int, float], float]] = {
    "StepLR": lambda p, t, base: p["gamma"] ** (t // p["step_size"]),
    "MultiStepLR": lambda p, t, base: p["gamma"] ** bisect.bisect_right(p["milestones"], t),
    "MultiStepMultiGammaLR": lambda p, t, base: _multi_gamma(p, t),
    "ExponentialLR": lambda p, t, base: p["gamma"] ** t,
    "CosineAnnealingLR": lambda p, t, base: (p["eta_min"] + (base - p["eta_min"]) * (
        1 + math.cos(math.pi * t / p["T_max"])) / 2) / base if base > 0 else 1.0,
    "PolynomialLR": lambda p, t, base: max(0.0, 1 - t / p["T_max"]) ** p["power"],
}


@dataclass(frozen=True)
class EpochScheduler:
    cls: str
    params: dict
    active: tuple[int, ...]  # the policy's active epochs, sorted
    inclusive: bool = False

    def factor(self, epoch: int, base: float) -> float:
        if self.inclusive:
            j = bisect.bisect_right(self.active, epoch) - 1
            return 1.0 if j < 0 else LR_FACTORS[self.cls](self.params, j, base)
        done = bisect.bisect_left(self.active, epoch)    # active epochs that ended before epoch
        t = self.active[done - 1] + 1 if done else 0
        return LR_FACTORS[self.cls](self.params, t, base)


@dataclass(frozen=True)
class PolicyLr:
    """``base_lr`` times every scheduler's factor at the epoch of ``step + offset``."""

    base_lr: float
    iters_per_epoch: int
    nb_iters: int
    schedulers: tuple[EpochScheduler, ...] = ()
    offset: int = 0  # steps before this callable's step 0 (a later training segment)

    def epoch_lr(self, epoch: int) -> float:
        lr = self.base_lr
        for scheduler in self.schedulers:
            lr *= scheduler.factor(epoch, self.base_lr)
        return lr

    def __call__(self, step: int) -> float:
        return self.epoch_lr((step + self.offset) // self.iters_per_epoch)

    def segment(self, start_epoch: int, end_epoch: int) -> "PolicyLr":
        """The schedule of epochs ``[start_epoch, end_epoch)`` with steps counted from 0."""
        return replace(self, offset=start_epoch * self.iters_per_epoch,
                       nb_iters=(end_epoch - start_epoch) * self.iters_per_epoch)


def policy_lr(policy: Policy, base_lr: float, iters_per_epoch: int, nb_epochs: int) -> PolicyLr:
    schedulers = tuple(EpochScheduler(p.instance.cls, p.instance.params, tuple(p.active_epochs()),
                                      p.inclusive)
                       for p in policy.of_kind("lr_scheduler"))
    return PolicyLr(base_lr, iters_per_epoch, nb_iters=nb_epochs * iters_per_epoch, schedulers=schedulers)
