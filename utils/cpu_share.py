"""Intra-op threads that follow the cores other processes leave free.

On a machine shared with other work, OpenMP threads that outnumber the free cores wait for each
other: two 2-thread training jobs on 2 cores ran 5x slower each, not 2x (docs/speed.md).
``CpuShare`` reads how busy the cores this process may run on are (``/proc/stat``, per core of
its affinity set) minus this process's own CPU time (``/proc/self/stat``), every ``interval_s``,
and sets ``torch.set_num_threads`` to the cores the others leave free: at least 1, at most
``max_threads``. Two identical jobs settle at half the cores each; one job alone keeps them all.

``poll()`` costs a clock read between samples: call it often, from the thread that runs the
model (OpenMP's thread count belongs to the thread that sets it). The trainer calls it every
step and the evaluation every batch; ``configure`` (the run's ``--cpu_threads``) sets it up.
Without ``/proc`` (not Linux) the thread count is left as it is.
"""
from __future__ import annotations

import logging
import os
import time

import torch

log = logging.getLogger("pocketflow")

FIRST_INTERVAL_S = 1.0


def _affinity() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _busy_ticks(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks summed over ``cpus`` since boot; None without /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        ticks = [int(v) for v in rest.split()[:8]]   # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


def _own_ticks() -> int | None:
    """This process's user + system clock ticks (all its threads)."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])          # utime, stime (fields 14, 15 of proc(5))


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


class CpuShare:
    """Adjusts the intra-op thread count to the free cores (see the module's docstring)."""

    def __init__(self, max_threads: int | None = None, interval_s: float = 3.0) -> None:
        self.cpus = _affinity()
        self.max_threads = max(1, min(max_threads or len(self.cpus), len(self.cpus)))
        self.interval_s = interval_s
        self.history: list[tuple[float, int, float]] = []     # (time, threads, others' cores)
        self._last = self._sample()
        self._next = time.monotonic() + min(FIRST_INTERVAL_S, interval_s)
        if self._last is None:
            log.debug("cpu share: no /proc/stat; intra-op threads stay at %d",
                      torch.get_num_threads())
        else:
            torch.set_num_threads(self.max_threads)

    def _sample(self) -> tuple[int, int, int] | None:
        ticks, own = _busy_ticks(set(self.cpus)), _own_ticks()
        return None if ticks is None or own is None else (*ticks, own)

    def others(self, before: tuple[int, int, int], after: tuple[int, int, int]) -> float:
        """Cores kept busy by other processes between two samples."""
        busy, total, own = (a - b for a, b in zip(after, before))
        if total <= 0:
            return 0.0
        return max(0.0, (busy - own) / total * len(self.cpus))

    def threads_for(self, others: float) -> int:
        return max(1, min(self.max_threads, int(len(self.cpus) - others + 0.5)))

    def poll(self) -> int:
        """The thread count, re-decided when ``interval_s`` has passed since the last sample."""
        now = time.monotonic()
        if self._last is None or now < self._next:
            return torch.get_num_threads()
        sample = self._sample()
        if sample is None:
            return torch.get_num_threads()
        others = self.others(self._last, sample)
        self._last, self._next = sample, now + self.interval_s
        threads, current = self.threads_for(others), torch.get_num_threads()
        self.history.append((now, threads, round(others, 2)))
        if threads != current:
            torch.set_num_threads(threads)
            log.debug("cpu share: %d -> %d intra-op threads (other processes keep %.1f of %d "
                      "cores busy)", current, threads, others, len(self.cpus))
        return threads


_share: CpuShare | None = None


def configure(cpu_threads: int = 0, interval_s: float = 3.0) -> None:
    """``cpu_threads`` > 0: that many intra-op threads, fixed. 0: follow the free cores, at
    most the thread count torch has (its default, or what the caller set) and
    ``OMP_NUM_THREADS`` when it is set (``scripts/run_local.sh -n=N`` sets 1 per process);
    with ``PF_CPU_SHARE=0`` in the environment, 0 keeps the process's thread count as it is
    (runs that repeat bit for bit whatever the machine's load: the test suite sets it)."""
    global _share
    ceiling = _share.max_threads if _share is not None else torch.get_num_threads()
    if cpu_threads > 0 or os.environ.get("PF_CPU_SHARE", "1").strip() == "0":
        _share = None
        if cpu_threads > 0:
            torch.set_num_threads(cpu_threads)
        return
    _share = CpuShare(min(ceiling, _env_threads() or ceiling), interval_s)


def poll() -> None:
    """Re-decide the thread count if a run configured the share and its interval has passed."""
    if _share is not None:
        _share.poll()
