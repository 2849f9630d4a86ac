"""What ``--resume`` checks before a run continues from a saved state file.

Every resumable file (training checkpoint, tick-tock rounds, search state) records in its
``meta`` the learner that wrote it and that run's ``settings`` (``utils.config.settings``: the
options that decide what it computes). A resume is refused, with a message, when the file
belongs to another learner or was written with other settings; running without ``--resume``
starts over (and replaces the file).
"""
from __future__ import annotations

from typing import Any

from utils.checkpoint import CheckpointError


def stamp(learner: str, settings: dict) -> dict:
    """The ``meta`` entries that make a saved state checkable on resume."""
    return {"learner": learner, "settings": dict(settings)}


def _flag_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def check_resumable(obj: dict, path: str, learner: str, settings: dict) -> None:
    """Raise CheckpointError unless the state file ``obj`` (read from ``path``) was written by
    ``learner`` with the same ``settings`` (keys absent on either side are not compared: files
    of older versions, options added since)."""
    meta = obj.get("meta") or {}
    saved_learner = meta.get("learner")
    if saved_learner is not None and saved_learner != learner:
        raise CheckpointError(
            f"--resume: {path} holds the state of learner {saved_learner!r}, not of this run's "
            f"learner {learner!r}; point the save path at a {learner!r} checkpoint, or run "
            "without --resume to start over (the file will be replaced)")
    saved = meta.get("settings")
    if not isinstance(saved, dict):
        return
    differ = [f"--{key}={_flag_text(saved[key])} there, {_flag_text(settings[key])} now"
              for key in sorted(set(saved) & set(settings)) if saved[key] != settings[key]]
    if differ:
        raise CheckpointError(
            f"--resume: {path} was written with other settings ({'; '.join(differ)}); resume "
            "with the saved values, or run without --resume to start over (the file will be "
            "replaced)")
