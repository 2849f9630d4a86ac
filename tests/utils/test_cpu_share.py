"""utils.cpu_share: intra-op threads follow the cores other processes leave free."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from utils import cpu_share
from utils.cpu_share import CpuShare


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    cpu_share._share = None
    torch.set_num_threads(threads)


class FakeProc:
    """/proc as numbers: busy/total ticks of the cores and this process's own ticks."""

    def __init__(self, monkeypatch, cpus=4):
        self.busy = self.total = self.own = 0
        self.now = 100.0
        monkeypatch.setattr(cpu_share, "_affinity", lambda: list(range(cpus)))
        monkeypatch.setattr(cpu_share, "_busy_ticks", lambda _: (self.busy, self.total))
        monkeypatch.setattr(cpu_share, "_own_ticks", lambda: self.own)
        monkeypatch.setattr(cpu_share.time, "monotonic", lambda: self.now)

    def advance(self, seconds, others_cores, own_cores, cpus=4, hz=100):
        self.now += seconds
        self.total += int(seconds * hz * cpus)
        self.own += int(seconds * hz * own_cores)
        self.busy += int(seconds * hz * (others_cores + own_cores))


def test_threads_follow_the_free_cores(monkeypatch, restore_threads):
    proc = FakeProc(monkeypatch)
    share = CpuShare(max_threads=4, interval_s=3.0)
    assert torch.get_num_threads() == 4                      # alone: every core
    proc.advance(0.5, others_cores=3.0, own_cores=1.0)
    assert share.poll() == 4 and share.history == []         # before the first interval (1 s)
    proc.advance(0.6, others_cores=3.0, own_cores=1.0)
    assert share.poll() == 1 and torch.get_num_threads() == 1   # 3 of 4 cores taken
    proc.advance(3.0, others_cores=1.6, own_cores=1.0)
    assert share.poll() == 2                                  # 4 - 1.6 = 2.4 -> 2
    proc.advance(3.0, others_cores=0.2, own_cores=2.0)
    assert share.poll() == 4                                  # the other job ended
    proc.advance(1.0, others_cores=3.9, own_cores=0.1)
    assert share.poll() == 4                                  # within the interval: unchanged
    proc.advance(2.0, others_cores=4.0, own_cores=0.0)
    assert share.poll() == 1                                  # never below 1
    assert [t for _, t, _ in share.history] == [1, 2, 4, 1]
    assert share.history[0][2] == pytest.approx(3.0, abs=0.05)


def test_max_threads_caps_and_own_time_is_not_counted_as_others(monkeypatch, restore_threads):
    proc = FakeProc(monkeypatch)
    share = CpuShare(max_threads=2, interval_s=1.0)
    assert torch.get_num_threads() == 2
    proc.advance(2.0, others_cores=0.0, own_cores=4.0)       # our own 4 busy cores: nobody else
    assert share.poll() == 2 and share.history[-1][2] == 0.0


def test_configure_fixed_auto_and_the_omp_ceiling(monkeypatch, restore_threads):
    FakeProc(monkeypatch)
    monkeypatch.delenv("PF_CPU_SHARE", raising=False)          # the suite sets it to 0
    torch.set_num_threads(3)
    cpu_share.configure(2)
    assert cpu_share._share is None and torch.get_num_threads() == 2
    cpu_share.poll()                                          # fixed: nothing to follow
    assert torch.get_num_threads() == 2
    torch.set_num_threads(3)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpu_share.configure(0)                                    # at most what torch had
    assert cpu_share._share.max_threads == 3 and torch.get_num_threads() == 3
    cpu_share.configure(0)                                    # a second run keeps the ceiling
    assert cpu_share._share.max_threads == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")                # run_local.sh -n=N
    cpu_share.configure(0)
    assert cpu_share._share.max_threads == 1
    monkeypatch.setenv("PF_CPU_SHARE", "0")                   # keep the process's count
    torch.set_num_threads(3)
    cpu_share.configure(0)
    assert cpu_share._share is None and torch.get_num_threads() == 3
    cpu_share.configure(2)                                    # a fixed count still applies
    assert torch.get_num_threads() == 2


def test_without_proc_the_threads_stay(monkeypatch, restore_threads):
    monkeypatch.setattr(cpu_share, "_busy_ticks", lambda _: None)
    torch.set_num_threads(1)
    share = CpuShare(max_threads=4, interval_s=0.0)
    assert share.poll() == 1 and torch.get_num_threads() == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_real_busy_processes_take_the_threads_down(restore_threads):
    share = CpuShare(interval_s=0.3)
    cores = len(share.cpus)
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        share._last, share._next = share._sample(), 0.0       # start the window now
        x = torch.randn(256, 256)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            x = torch.tanh(x @ x)
            share.poll()
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    assert share.history and share.history[-1][1] == 1, share.history
    assert share.history[-1][2] >= cores - 1.0              # the loops, seen as others' cores
