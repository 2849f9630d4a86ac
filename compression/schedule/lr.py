"""The policy's learning-rate schedulers as ONE pure callable ``step -> lr`` (with ``nb_iters``).

Each scheduler is epoch-based like ``torch.optim.lr_scheduler``: at the j-th active epoch of its
policy (j = 0 at the policy's first epoch) the rate is ``base_lr * factor(j)``; before its first
epoch the base rate, after its last the rate reached there. Several schedulers multiply.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from typing import Callable

from compression.schedule.policy import Policy

# class -> factor(params, j): the rate multiplier after j scheduler steps (torch's formulas)
LR_FACTORS: dict[str, Callable[[dict, int], float]] = {
    "StepLR": lambda p, j: p["gamma"] ** (j // p["step_size"]),
    "MultiStepLR": lambda p, j: p["gamma"] ** bisect.bisect_right(p["milestones"], j),
    "ExponentialLR": lambda p, j: p["gamma"] ** j,
}


@dataclass(frozen=True)
class EpochScheduler:
    cls: str
    params: dict
    active: tuple[int, ...]  # the policy's active epochs, sorted

    def factor(self, epoch: int) -> float:
        j = bisect.bisect_right(self.active, epoch) - 1
        return 1.0 if j < 0 else LR_FACTORS[self.cls](self.params, j)


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
            lr *= scheduler.factor(epoch)
        return lr

    def __call__(self, step: int) -> float:
        return self.epoch_lr((step + self.offset) // self.iters_per_epoch)

    def segment(self, start_epoch: int, end_epoch: int) -> "PolicyLr":
        """The schedule of epochs ``[start_epoch, end_epoch)`` with steps counted from 0."""
        return replace(self, offset=start_epoch * self.iters_per_epoch,
                       nb_iters=(end_epoch - start_epoch) * self.iters_per_epoch)


def policy_lr(policy: Policy, base_lr: float, iters_per_epoch: int, nb_epochs: int) -> PolicyLr:
    schedulers = tuple(EpochScheduler(p.instance.cls, p.instance.params, tuple(p.active_epochs()))
                       for p in policy.of_kind("lr_scheduler"))
    return PolicyLr(base_lr, iters_per_epoch, nb_epochs * iters_per_epoch, schedulers)
