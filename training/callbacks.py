"""Standard callbacks: learning-rate schedule, logging, periodic checkpoint + evaluation."""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable

import torch

from training.trainer import Callback, StepState, Trainer

log = logging.getLogger("pocketflow")


class LrScheduleCallback(Callback):
    """Sets the optimizer's learning rate from ``schedule(step)`` before every step."""

    def __init__(self, schedule: Callable[[int], float]) -> None:
        self.schedule = schedule

    def on_minibatch_begin(self, trainer: Trainer, state: StepState) -> None:
        trainer.set_lr(self.schedule(state.step))


class LoggingCallback(Callback):
    """Every ``summ_step``: lr, loss, metrics and images/s to the log and TensorBoard.

    Losses are accumulated as tensors and synchronised only when logging, so the hot path
    does no device->host copy. Only the primary process should get this callback.
    """

    def __init__(self, summ_step: int, images_per_step: int, writer=None, prefix: str = "train",
                 progress: bool | None = None) -> None:
        self.summ_step = summ_step
        self.images_per_step = images_per_step
        self.writer = writer
        self.prefix = prefix
        self.show_progress = sys.stderr.isatty() if progress is None else progress
        self._bar = None
        self._reset()

    def _reset(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._t0 = time.perf_counter()

    def on_train_begin(self, trainer: Trainer) -> None:
        self._reset()
        if self.show_progress:
            from tqdm import tqdm

            self._bar = tqdm(total=trainer.nb_iters, initial=trainer.step, desc=self.prefix,
                             dynamic_ncols=True, leave=False)

    def on_minibatch_end(self, trainer: Trainer, state: StepState) -> None:
        values = {"loss": state.loss.detach(), **{k: v.detach() for k, v in state.metrics.items()
                                                   if torch.is_tensor(v)}}
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0) + value.float()
        self._count += 1
        if self._bar is not None:
            self._bar.update(1)
        if state.step % self.summ_step == 0 or state.step == trainer.nb_iters:
            self._emit(trainer, state.step)

    def _emit(self, trainer: Trainer, step: int) -> None:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        means = {k: float(v) / self._count for k, v in self._sums.items()}
        speed = self._count * self.images_per_step / elapsed
        text = " | ".join(f"{k} = {v:.4f}" for k, v in means.items())
        log.info("%s step %d/%d | lr = %.2e | %s | %.1f images/s", self.prefix, step,
                 trainer.nb_iters, trainer.lr, text, speed)
        if self.writer is not None:
            self.writer.add_scalar(f"{self.prefix}/lr", trainer.lr, step)
            self.writer.add_scalar(f"{self.prefix}/images_per_s", speed, step)
            for key, value in means.items():
                self.writer.add_scalar(f"{self.prefix}/{key}", value, step)
        self._reset()

    def on_train_end(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.writer is not None:
            self.writer.flush()


class PeriodicCallback(Callback):
    """Calls ``action(trainer, step)`` every ``every`` steps and at the end of training.

    Used for checkpointing and evaluation; the losses since the last check and the weights
    are checked for NaN/inf first (on every process), so a diverged model never overwrites the
    last good checkpoint.
    """

    def __init__(self, every: int, action: Callable[[Trainer, int], None],
                 at_end: bool = True) -> None:
        self.every = every
        self.action = action
        self.at_end = at_end
        self._last = -1

    def on_minibatch_end(self, trainer: Trainer, state: StepState) -> None:
        if state.step % self.every == 0:
            self._run(trainer, state.step)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.at_end:
            self._run(trainer, trainer.step)

    def _run(self, trainer: Trainer, step: int) -> None:
        if step == self._last:
            return
        trainer.check_finite(check_model=True)
        self.action(trainer, step)
        self._last = step
