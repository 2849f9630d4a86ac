"""Structural passes kept only where they make the model faster, measured.

Two passes are timed: dead-channel elimination (``compression.surgery.dead_channels``, during
the thinning) and ``fold_gathers`` (on the delivered model: every layer that picks its kept
channels out of a wider tensor with ``index_select`` reads the whole tensor instead, zero
weight columns where it picked none). A pass changes the architecture, and a change that saves
FLOPs (a scatter that places the live channels back, a narrower layer between SIMD blocks, a
gather) can cost more time than the channels save: on ResNet-20 / digits the dead-channel pass
once made the default model 8 % slower at batch 64. So each pass's result goes to
``PassTimer``: both models are timed side by side
(``utils.model_stats.measure_latencies``: alternating rounds, eval mode, batch 1 and 64, the
process's threads) and the pass is kept only when its result is faster at some batch size and
slower at none by more than ``tolerance`` (2 %: the spread of side-by-side rounds on a quiet
machine; a strict comparison undid a pass 6.5 % faster at batch 64 for 0.5 % at batch 1).
The report's ``passes`` section lists every decision with both latencies (and, for
``fold_gathers``, the FLOPs before and after: folding computes the zero columns, so a kept fold
raises the FLOPs the report counts while lowering the time).

``--report_latency=false`` or ``PF_PASS_TIMING=0`` keeps every pass without timing (the latter:
bit-for-bit repeatable architectures, e.g. in a test suite; the decision otherwise depends on
the machine's timings).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

from torch import nn

from utils.model_stats import measure_latencies

log = logging.getLogger("pocketflow")
PASS_TIMING_ENV = "PF_PASS_TIMING"


def timing_enabled() -> bool:
    """Whether passes are timed (``PF_PASS_TIMING`` is not ``0``)."""
    return os.environ.get(PASS_TIMING_ENV, "1").strip() != "0"


@dataclass
class PassTimer:
    """``timer(name, before, after) -> record``: ``{"pass", "latency_ms": {"before",
    "after"}, "kept"}``; ``kept``: ``after`` is faster than ``before`` at some batch size and at
    most ``1 + tolerance`` times as slow at every one."""

    input_shape: Sequence[int]
    batch_sizes: Sequence[int] = (1, 64)
    threads: int | None = None
    repeats: int = 15
    rounds: int = 3
    tolerance: float = 0.02

    def __call__(self, name: str, before: nn.Module, after: nn.Module) -> dict:
        ms = measure_latencies({"before": before, "after": after}, self.input_shape,
                               self.batch_sizes, self.threads, repeats=self.repeats,
                               rounds=self.rounds)
        kept = verdict(ms["before"], ms["after"], self.tolerance)
        log.info("pass %s: %s -> %s ms (%s)", name,
                 " / ".join(f"{v:.3f}" for v in ms["before"].values()),
                 " / ".join(f"{v:.3f}" for v in ms["after"].values()),
                 "kept" if kept else "undone: slower")
        return {"pass": name, "latency_ms": ms, "kept": kept}


def verdict(before: dict, after: dict, tolerance: float) -> bool:
    """Whether a pass whose result times ``after`` (ms per batch size) is kept."""
    return (any(after[key] < before[key] for key in before)
            and all(after[key] <= before[key] * (1.0 + tolerance) for key in before))


def pass_timer(input_shape: Sequence[int], measure: bool = True) -> PassTimer | None:
    """The timer the learners use; None (every pass kept untimed) when ``PF_PASS_TIMING=0`` or
    not ``measure`` (the run's ``--report_latency=false``: no latency is measured at all)."""
    return PassTimer(tuple(input_shape)) if measure and timing_enabled() else None


def fold_gathers(model: nn.Module, spec: dict | None, input_shape: Sequence[int],
                 timer: PassTimer | None) -> tuple[nn.Module, dict | None, dict | None]:
    """``(model, spec, record)``: the delivered ``model`` with its gathers folded
    (``compression.surgery.thinning.gathers_folded``) when ``timer`` finds that faster, else
    as it is; ``record``: the timer's (with ``flops`` before / after and the ``layers``), None
    when there was nothing to fold or no timer."""
    from compression.surgery.thinning import gathers_folded
    from utils.model_stats import count_flops
    if timer is None:
        return model, spec, None
    folded, folded_spec, names = gathers_folded(model, input_shape, spec)
    if not names:
        return model, spec, None
    record = timer("fold_gathers", model, folded)
    record.update(layers=names, flops={"before": count_flops(model, input_shape),
                                       "after": count_flops(folded, input_shape)})
    if record["kept"]:
        return folded, folded_spec, record
    return model, spec, record


def fold_delivered(result, input_shape: Sequence[int], measure: bool, mgw) -> None:
    """``fold_gathers`` on a run's delivered result (``learners.base.Result``, in place; a
    float result with a spec only), its record appended to the result's ``passes`` section;
    ``measure``: the run's ``--report_latency``. The primary process of ``mgw`` times, every
    process folds alike."""
    from compression.surgery.thinning import gathers_folded
    timer = pass_timer(input_shape, measure)
    if timer is None or result.spec is None or result.deploy_kind != "fp32":
        return
    mine = fold_gathers(result.model, result.spec, input_shape, timer) if mgw.is_primary() \
        else None
    record = mgw.broadcast_object(mine and mine[2])
    if record is None:
        return
    result.sections.setdefault("passes", []).append(record)
    if record["kept"]:       # the primary has the model it timed; the others fold alike
        result.model, result.spec = (mine or gathers_folded(result.model, input_shape,
                                                            result.spec))[:2]


def passes_section(stats: dict) -> dict:
    """The report's ``passes`` section from a thinning's ``stats`` (``thin(..., stats=)``),
    moving the timing record out of them; empty when no pass was timed."""
    return {"passes": [stats.pop("timing")]} if "timing" in stats else {}
