"""Checkpoint and evaluation as a callback of the one training loop, with keyed state.

``CheckpointCallback`` evaluates the model every ``every`` steps and at the end, and only then
saves the resumable state: model, optimizer, step, RNG states and every callback's
``state_dict()`` under its ``state_key`` (default: its class name), so a resumed run gives each
callback its own state whatever the order of the list. ``restore`` reads such a file back.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import torch
from torch import nn

from training.callbacks import PeriodicCallback
from training.trainer import Callback, Trainer, TrainingDivergedError
from utils.checkpoint import rng_state, save_file, set_rng_state
from utils.model_io import load_weights, unwrap

log = logging.getLogger("pocketflow")


def state_key(callback: Callback) -> str:
    return getattr(callback, "state_key", type(callback).__name__)


def callback_states(callbacks: Sequence[Callback]) -> dict:
    """``{state_key: state}`` of the callbacks that have a state."""
    states = {}
    for callback in callbacks:
        state = callback.state_dict()
        if state:
            key = state_key(callback)
            if key in states:
                raise ValueError(f"two callbacks share the state key {key!r}; give one a "
                                 "state_key attribute of its own")
            states[key] = state
    return states


def load_callback_states(callbacks: Sequence[Callback], states) -> None:
    """Give each callback its saved state (files of older versions kept a list by position)."""
    if isinstance(states, (list, tuple)):
        for callback, state in zip(callbacks, states):
            callback.load_state_dict(state)
        return
    for callback in callbacks:
        if state_key(callback) in states:
            callback.load_state_dict(states[state_key(callback)])


def restore(ckpt: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
            callbacks: Sequence[Callback], path: str) -> int:
    """Load a training checkpoint into ``model``, ``optimizer``, the RNGs and ``callbacks``;
    returns its step."""
    load_weights(model, ckpt["model"], path)
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    load_callback_states(callbacks, ckpt.get("callbacks", {}))
    return int(ckpt["step"])


class CheckpointCallback(PeriodicCallback):
    """Every ``every`` steps and at the end: broadcast the parameters (identical BN statistics
    on every process), ``evaluate`` (all processes), refuse a non-finite evaluation, then save
    the checkpoint (primary process, ``save(payload)``) and log the figures."""

    def __init__(self, every: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                 callbacks: Sequence[Callback], tag: str, evaluate: Callable[[nn.Module], dict],
                 save: Callable[[dict], None], broadcast: Callable[[nn.Module], None],
                 on_eval: Callable[[int, dict], None], last_saved: int | None = None) -> None:
        super().__init__(every, self._save_and_eval)
        self.model, self.optimizer, self.callbacks = model, optimizer, callbacks
        self.tag, self.evaluate, self.save = tag, evaluate, save
        self.broadcast, self.on_eval = broadcast, on_eval
        self.last_saved = last_saved

    def _save_and_eval(self, trainer: Trainer, step: int) -> None:
        self.broadcast(self.model)
        metrics = self.evaluate(self.model)   # first: only a model that evaluates is saved
        if not math.isfinite(metrics["loss"]):
            raise TrainingDivergedError(
                f"at step {step} the model evaluates to a NaN or infinite loss (its weights "
                "exploded); stopped without saving it", step)
        self.save({"model": {k: v.detach().cpu() for k, v in unwrap(self.model).state_dict().items()},
                   "optimizer": self.optimizer.state_dict(), "step": step, "tag": self.tag,
                   "rng": rng_state(), "callbacks": callback_states(self.callbacks)})
        self.last_saved = step
        self.on_eval(step, metrics)


def save_checkpoint(path: str, payload: dict, meta: dict) -> None:
    save_file(path, "checkpoint", {**payload, "meta": meta})
