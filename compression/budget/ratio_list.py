"""Per-layer ratio files: what ``--cp_prune_option=list`` reads and the sensitivity tool writes.

Plain text, one layer per line, ``#`` starts a comment, blank lines are ignored. A line is
either ``<ratio>`` (the layers in execution order) or ``<layer name> <ratio>`` (any order,
every layer named exactly once); a file uses one form throughout. PocketFlow's form, ratios
separated by commas on one line (``0.5,0.5,0.7``), is read as the positional form. Each ratio is a number in
[0, 1]; what it means (fraction of input channels kept, weights pruned, ...) is the reader's
contract and is written in the file's header by ``write_ratio_list``. Errors name the file and
the line.
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

from utils.checkpoint import atomic_write_text
from utils.config import ConfigError


class RatioListError(ConfigError, ValueError):
    """A ratio file that is missing or malformed (a user error: one line, exit status 2)."""


def read_ratio_list(path: str, layer_names: Sequence[str]) -> dict[str, float]:
    """``layer name -> ratio`` for exactly ``layer_names``."""
    if not os.path.isfile(path):
        raise RatioListError(f"ratio list file {path!r} does not exist (expected one ratio per "
                             f"line for the {len(layer_names)} layers: {', '.join(layer_names)})")
    entries: list[tuple[int, str | None, float]] = []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if "," in line:                       # PocketFlow's comma-separated ratios
                for text in filter(None, (t.strip() for t in line.split(","))):
                    entries.append((number, None, _ratio(path, number, text)))
                continue
            fields = line.split()
            if len(fields) > 2:
                raise RatioListError(f"{path}:{number}: expected '<ratio>' or '<layer> <ratio>', "
                                     f"got {line!r}")
            name, text = (None, fields[0]) if len(fields) == 1 else (fields[0], fields[1])
            entries.append((number, name, _ratio(path, number, text)))
    named = {name is not None for _, name, _ in entries}
    if len(named) > 1:
        raise RatioListError(f"{path}: mixes '<ratio>' and '<layer> <ratio>' lines; use one form")
    if named == {True}:
        return _by_name(path, entries, layer_names)
    if len(entries) != len(layer_names):
        last = entries[-1][0] if entries else 0
        raise RatioListError(
            f"{path}: {len(entries)} ratios (last on line {last}) for {len(layer_names)} layers; "
            f"the layers, in order: {', '.join(layer_names)}")
    return {name: value for name, (_, _, value) in zip(layer_names, entries)}


def _ratio(path: str, number: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RatioListError(f"{path}:{number}: {text!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise RatioListError(f"{path}:{number}: ratio {value} is outside [0, 1]")
    return value


def _by_name(path: str, entries: list, layer_names: Sequence[str]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    for number, name, value in entries:
        if name not in layer_names:
            raise RatioListError(f"{path}:{number}: unknown layer {name!r}; the layers are: "
                                 f"{', '.join(layer_names)}")
        if name in ratios:
            raise RatioListError(f"{path}:{number}: layer {name!r} is listed twice")
        ratios[name] = value
    missing = [name for name in layer_names if name not in ratios]
    if missing:
        raise RatioListError(f"{path}: no ratio for layers {', '.join(missing)}")
    return ratios


def write_ratio_list(path: str, ratios: Mapping[str, float], meaning: str) -> None:
    """Write ``<layer> <ratio>`` lines (atomically) under a header saying what a ratio means."""
    lines = [f"# {meaning}", "# <layer name> <ratio in [0, 1]>"]
    lines += [f"{name} {value:.6f}" for name, value in ratios.items()]
    atomic_write_text(path, "\n".join(lines) + "\n")
