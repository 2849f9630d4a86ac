"""The one training loop. Learners and compression policies are callbacks over it.

Hooks, in Distiller's order: ``on_train_begin``, ``on_epoch_begin``, ``on_minibatch_begin``,
``before_backward_pass`` (a callback may add terms to ``state.loss``), ``on_minibatch_end``
(after the optimizer step), ``on_epoch_end``, ``on_train_end``. Callbacks with state that must
survive an interruption implement ``state_dict``/``load_state_dict``.

Three opt-in ways to run the same step faster (``--channels_last``, ``--amp_dtype``,
``--compile``; docs/speed.md): the model and each batch in the channels_last memory format
during ``fit`` (contiguous again after it), the model's forward under autocast (its outputs cast
back to float32: the loss, every callback's term, the backward and the optimizer step stay
float32), and the forward through ``torch.compile`` (the module itself keeps its parameters and
state_dict keys; a failed compilation falls back to eager with one warning).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from training.fast_step import AMP_DTYPES, as_float32, compile_error_reason, compile_guard, set_memory_format
from utils import cpu_share
from utils.checkpoint import rng_state, set_rng_state

__all__ = ["AMP_DTYPES", "Callback", "StepState", "Trainer", "TrainingDivergedError", "model_is_finite",
           "set_memory_format"]

log = logging.getLogger("pocketflow")


class TrainingDivergedError(RuntimeError):
    """The loss (or the weights, or the evaluation) became NaN or infinite; ``step`` is the
    first step seen non-finite (None when unknown)."""

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


def model_is_finite(model: nn.Module) -> bool:
    """All floating-point parameters and buffers are finite (one device sync)."""
    flags = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


@dataclass
class StepState:
    """What the hooks of one mini-batch see; ``loss`` may be replaced by callbacks."""

    step: int
    epoch: int
    inputs: torch.Tensor
    labels: torch.Tensor
    outputs: Any = None
    loss: torch.Tensor | None = None
    metrics: dict = field(default_factory=dict)


class Callback:
    """No-op base; override the hooks you need."""

    def on_train_begin(self, trainer: "Trainer") -> None: ...
    def on_epoch_begin(self, trainer: "Trainer", epoch: int) -> None: ...
    def on_minibatch_begin(self, trainer: "Trainer", state: StepState) -> None: ...
    def before_backward_pass(self, trainer: "Trainer", state: StepState) -> None: ...
    def on_minibatch_end(self, trainer: "Trainer", state: StepState) -> None: ...
    def on_epoch_end(self, trainer: "Trainer", epoch: int) -> None: ...
    def on_train_end(self, trainer: "Trainer") -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


LossFn = Callable[[torch.Tensor, Any], "tuple[torch.Tensor, dict]"]
ForwardFn = Callable[[nn.Module, torch.Tensor], Any]


_compile_failure: str | None = None   # why torch.compile failed in this process (warned once)


class Trainer:
    """Runs ``nb_iters`` optimizer steps over ``loader``, calling the callbacks' hooks.

    The loader's sampler must be resumable (``utils.data_loading.make_train_loader``): the
    trainer sets its epoch and, when starting mid-epoch, how many batches to skip.

    Every loss is kept (detached, no device sync) until the next check, every
    ``check_every`` steps and at the end: the first non-finite one stops the run with
    ``TrainingDivergedError`` naming its step. ``reduce`` (an all-reduce sum over processes)
    makes every process see the same verdict at the same step.

    ``channels_last``, ``amp_dtype`` (None or ``torch.bfloat16``) and ``compile`` change how
    the training forward runs, not what it computes (see the module's docstring).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                 loader: Iterable, nb_iters: int, device: torch.device,
                 callbacks: Sequence[Callback] = (), forward: ForwardFn | None = None,
                 start_step: int = 0, check_every: int = 0,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 channels_last: bool = False, amp_dtype: torch.dtype | None = None,
                 compile: bool = False) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.loader = loader
        self.nb_iters = nb_iters
        self.device = device
        self.callbacks = list(callbacks)
        self.forward = forward or (lambda m, x: m(x))
        self.step = start_step
        self.check_every = check_every
        self.reduce = reduce
        self._losses: list[torch.Tensor] = []   # losses since the last check
        self.stop_requested = False
        self.channels_last = channels_last
        self.amp_dtype = amp_dtype
        self.compile = compile
        self._compiled: Callable | None = None    # torch.compile(model), once fit starts
        self._compiled_steps = 0

    # -- helpers used by callbacks --------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def check_finite(self, check_model: bool = False) -> None:
        """Raise TrainingDivergedError if a loss since the last check was NaN/inf (one sync);
        every process must call it at the same step when ``reduce`` is set.

        With ``check_model`` the parameters and buffers are checked too (before a save: the
        update of the last finite step, or BN statistics, can already be non-finite).
        """
        first = self.step - len(self._losses)   # the last step before the window
        bad = (~torch.isfinite(torch.stack(self._losses))).float() if self._losses else \
            torch.zeros(0, device=self.device)
        model_bad = torch.tensor([0.0 if not check_model or model_is_finite(self.model) else 1.0],
                                 device=bad.device)
        flags = torch.cat([bad, model_bad])
        if self.reduce is not None:
            flags = self.reduce(flags)
        self._losses.clear()
        bad_steps = flags[:-1].nonzero()
        if len(bad_steps):
            step = first + int(bad_steps[0]) + 1
            raise TrainingDivergedError(
                f"the training loss became NaN or infinite at step {step}; stopped at step "
                f"{self.step} without saving the diverged weights", step)
        if flags[-1] > 0:
            raise TrainingDivergedError(
                f"the weights became NaN or infinite by step {self.step} (the loss was still "
                "finite); stopped without saving them", self.step)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def _set_epoch(self, epoch: int, skip_batches: int) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(sampler, "skip_batches"):
            sampler.skip_batches(skip_batches)
        elif skip_batches:
            raise ValueError("resuming mid-epoch needs a resumable sampler (make_train_loader)")
        dataset = getattr(self.loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> int:
        iters_per_epoch = len(self.loader)
        if iters_per_epoch == 0:
            raise ValueError("the training loader yields no batch (dataset smaller than a batch?)")
        self.model.train()
        if self.channels_last:
            set_memory_format(self.model, torch.channels_last)
        if self.compile and _compile_failure is None:
            self._compiled = torch.compile(self.model)   # lazy: compiles at the first step
        try:
            self._call("on_train_begin")
            while self.step < self.nb_iters and not self.stop_requested:
                epoch, done_in_epoch = divmod(self.step, iters_per_epoch)
                self._set_epoch(epoch, done_in_epoch)
                self._call("on_epoch_begin", epoch)
                for inputs, labels in self.loader:
                    self._train_step(StepState(self.step, epoch, self._batch(inputs),
                                               labels.to(self.device, non_blocking=True)))
                    if self.step >= self.nb_iters or self.stop_requested:
                        break
                if self.step % iters_per_epoch == 0:
                    self._call("on_epoch_end", epoch)
            self.check_finite()
            self._call("on_train_end")
        finally:
            self._compiled = None
            if self.channels_last:   # what comes after (saving, export, thinning) sees the usual layout
                set_memory_format(self.model, torch.contiguous_format)
        return self.step

    def _batch(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.to(self.device, non_blocking=True)
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def _run_forward(self, model: Callable, inputs: torch.Tensor) -> Any:
        if self.amp_dtype is None:
            return self.forward(model, inputs)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
            outputs = self.forward(model, inputs)
        return as_float32(outputs)

    def _forward(self, inputs: torch.Tensor) -> Any:
        """The model's training forward: compiled when asked and compilation works, else eager."""
        if self._compiled is None:
            return self._run_forward(self.model, inputs)
        first = self._compiled_steps == 0   # compiles now: keep what a failure must undo
        saved = ([b.detach().clone() for b in self.model.buffers()], rng_state()) if first else None
        try:
            with compile_guard():
                outputs = self._run_forward(self._compiled, inputs)
        except Exception as exc:   # any compilation error: train on in eager mode
            self._compile_failed(exc, saved)
            return self._run_forward(self.model, inputs)
        self._compiled_steps += 1
        return outputs

    def _compile_failed(self, exc: Exception, saved: tuple | None) -> None:
        global _compile_failure
        if saved is not None:   # BN statistics a partly run graph moved, dropout's RNG
            with torch.no_grad():
                for buffer, value in zip(self.model.buffers(), saved[0]):
                    buffer.copy_(value)
            set_rng_state(saved[1])
        self._compiled = None
        reason = compile_error_reason(exc)
        if _compile_failure is None:
            log.warning("--compile: torch.compile failed (%s); training goes on in eager mode "
                        "(the same results, without the speed-up)", reason)
        _compile_failure = reason

    def _train_step(self, state: StepState) -> None:
        cpu_share.poll()                      # intra-op threads follow the free cores
        self._call("on_minibatch_begin", state)
        state.outputs = self._forward(state.inputs)
        state.loss, state.metrics = self.loss_fn(state.labels, state.outputs)
        self._call("before_backward_pass", state)
        self._losses.append(state.loss.detach().float().reshape(()))
        self.optimizer.zero_grad()  # set_to_none by default; Horovod's wrapper takes no argument
        state.loss.backward()
        self.optimizer.step()
        self.step += 1
        state.step = self.step
        if self.check_every and self.step % self.check_every == 0:
            self.check_finite()
        self._call("on_minibatch_end", state)
