"""Per-layer progress of a layer-by-layer channel selection, so a stopped selection resumes
from the last selected layer instead of starting over.

``SelectionProgress(save, resumed)``: ``save(state)`` is called after every layer with a dict
of tensors and plain data (the learner writes it atomically beside its checkpoint);
``resumed`` is such a dict read back (or None). ``select_channels`` restores it when it is for
the same layers and counts, and says when it starts over and why.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

log = logging.getLogger("pocketflow")


@dataclass
class SelectionProgress:
    save: Callable[[dict], None]
    resumed: dict | None = None

    def restore(self, pruned: nn.Module, names: Sequence[str], counts: Mapping[str, int],
                gen: torch.Generator) -> tuple[int, dict, list]:
        """``(layers already done, keep, stats)``; ``pruned`` and ``gen`` as they were after
        them. ``(0, {}, [])`` when there is nothing to resume."""
        state = self.resumed
        if state is None:
            return 0, {}, []
        wanted = {name: int(counts[name]) for name in names}
        if list(state.get("layers", [])) != list(names) or state.get("counts") != wanted:
            log.warning("selection: the saved progress is for other layers or counts; starting "
                        "the selection over")
            return 0, {}, []
        pruned.load_state_dict(state["state"])
        gen.set_state(state["gen"])
        log.info("selection: resumed after %d of %d layers", state["done"], len(names))
        return int(state["done"]), dict(state["keep"]), list(state["stats"])

    def record(self, pruned: nn.Module, names: Sequence[str], counts: Mapping[str, int],
               done: int, keep: dict, stats: list, gen: torch.Generator) -> None:
        self.save({"layers": list(names), "counts": {n: int(counts[n]) for n in names},
                   "done": done, "keep": dict(keep), "stats": list(stats), "gen": gen.get_state(),
                   "state": pruned.state_dict()})
