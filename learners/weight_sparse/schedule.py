"""The mask schedule as a training-loop callback.

``agp``: at scheduled steps between ``beg`` and ``end`` the masks are re-chosen by magnitude at
``fraction(step)`` of each layer's final count (cubic ramp); from ``end`` on they hold the
final counts exactly. ``oneshot``: final masks before the first step, never changed (the
pruned weights are frozen at zero while the rest retrains). The masks live in the model's
state dict, so a resumed run continues with them; the schedule itself depends only on the step.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from compression.sparsity.masks import global_nb_zeros, raw_weight, set_masks
from compression.sparsity.agp import agp_fraction
from training.trainer import Callback, StepState, Trainer

log = logging.getLogger("pocketflow")


def update_steps(beg: int, end: int, every: int) -> set[int]:
    """Steps at which an AGP schedule updates the masks (always including ``end``)."""
    every = every or max(1, (end - beg) // 20)
    return set(range(beg, end, every)) | {end}


class MaskScheduleCallback(Callback):
    """Drives the masks of ``model`` towards ``final`` zeros per layer (``None``: global
    ranking towards ``total`` zeros over all masked layers)."""

    def __init__(self, model: nn.Module, names: list[str], final: dict[str, int] | None,
                 total: int, steps: set[int], beg: int, end: int, exponent: float) -> None:
        self.model = model
        self.names = names
        self.final = final
        self.total = total
        self.steps = steps
        self.beg, self.end, self.exponent = beg, end, exponent

    def counts_at(self, step: int) -> dict[str, int]:
        fraction = agp_fraction(step, self.beg, self.end, self.exponent)
        if self.final is None:
            weights = {n: raw_weight(self.model, n) for n in self.names}
            return global_nb_zeros(weights, round(fraction * self.total))
        return {name: round(fraction * count) for name, count in self.final.items()}

    def on_minibatch_begin(self, trainer: Trainer, state: StepState) -> None:
        if state.step in self.steps:
            with torch.no_grad():
                counts = self.counts_at(state.step)
                set_masks(self.model, counts)
            log.debug("step %d: masks hold %d zeros", state.step, sum(counts.values()))
