"""The mark of an unfinished result: a run writes ``INCOMPLETE`` into its artifact's folder
before its first output and removes it once ``report.json`` is written. A folder that still
holds it (a run stopped or killed while writing) is refused by ``--exec_mode=eval``, the tools
and a run that would start from it, by name, until the run is redone."""
from __future__ import annotations

import os
import time

from utils.checkpoint import CheckpointError, atomic_write_text

MARK = "INCOMPLETE"


class IncompleteResult(CheckpointError):
    """The artifact's folder holds the result of a run that did not finish."""


def mark_path(artifact: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(artifact)), MARK)


def mark_incomplete(artifact: str) -> None:
    atomic_write_text(mark_path(artifact), f"a run (pid {os.getpid()}, "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}) began writing this result and "
                      "has not finished\n")


def mark_complete(artifact: str) -> None:
    try:
        os.remove(mark_path(artifact))
    except FileNotFoundError:
        pass


def check_complete(artifact: str) -> None:
    """IncompleteResult when ``artifact``'s folder holds the mark."""
    path = mark_path(artifact)
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            note = handle.read(300).strip()
        raise IncompleteResult(
            f"{os.path.dirname(path)} holds an unfinished result ({MARK}: {note}): its files may "
            "be missing or stale; rerun the run that writes it (with --resume where it has a "
            f"checkpoint), or delete {path} if you know the files are whole")
