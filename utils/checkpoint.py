"""Atomic, weights-only checkpoint files.

Two kinds of file share this module:
- a *training checkpoint* (``kind="checkpoint"``): model, optimizer, step, RNG states, learner
  state and metadata, enough to resume an interrupted run;
- a *model artifact* (``kind="model"``): an architecture spec plus a state dict, enough to
  rebuild the model without any training code (see ``utils.model_io``).
Every load goes through ``torch.load(..., weights_only=True)``, so a file can never run code.
"""
from __future__ import annotations

import os
import random
import tempfile
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

FORMAT = "pocketflow-torch"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint or model file is missing, corrupt, of the wrong kind or does not fit."""


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a temp file in the same directory, fsync, then rename it over
    ``path``: readers see the old file or the complete new one, never a partial write."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save(obj: Any, path: str) -> None:
    """torch.save ``obj`` to ``path`` atomically."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def save_file(path: str, kind: str, payload: dict) -> None:
    """Save ``payload`` tagged with the project format, version and kind."""
    atomic_save({"format": FORMAT, "version": VERSION, "kind": kind, **payload}, path)


def load_file(path: str, kind: str | None = None, map_location: Any = "cpu") -> dict:
    """Load a file written by ``save_file``; refuse anything else with a clear message."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no such file: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt zip, pickle with forbidden globals, truncated file...
        raise CheckpointError(
            f"cannot load {path}: not a valid pocketflow-torch file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pocketflow-torch file (missing format tag)")
    if kind is not None and obj.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {obj.get('kind')!r}, expected a {kind!r}")
    return obj


def rng_state() -> dict:
    """All RNG states as weights-only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


def check_state_dict_fits(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Raise CheckpointError naming missing, unexpected and shape-mismatched keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict)
                        if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or mismatched:
        def head(keys: list) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {head(unexpected)}")
        if mismatched:
            parts.append("shape mismatch: " + head(
                [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched]))
        raise CheckpointError(f"{source} does not fit the model ({'; '.join(parts)})")
