"""utils.malloc: with the tuning, an eager forward pass reuses its activations' pages (no page
faults per pass); without it glibc maps and faults them in again on every pass."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from utils import malloc

ROOT = str(REPO)
PROBE = """
import json, resource, torch
from torch import nn
from utils.malloc import tune_malloc
from tests.conftest import REPO
result = tune_malloc()
torch.set_num_threads(1)
net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                    nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                    nn.Conv2d(16, 16, 3, padding=1)).eval()
x = torch.randn(64, 1, 16, 16)       # 1 MiB activations, above glibc's default threshold
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with torch.no_grad():
    for _ in range(5):
        net(x)
    before = faults()
    for _ in range(10):
        net(x)
print(json.dumps({"result": result, "faults_per_pass": (faults() - before) / 10}))
"""


def probe(**env) -> dict:
    environ = {k: v for k, v in os.environ.items()
               if k not in malloc.USER_VARIABLES + ("PF_MALLOC_TUNING",)}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**environ, **env},
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(malloc._glibc_mallopt() is None, reason="glibc only")
def test_tuned_forward_passes_fault_no_pages():
    tuned, default = probe(), probe(PF_MALLOC_TUNING="0")
    assert tuned["result"] == "tuned" and default["result"] == "disabled"
    # 1 MiB activations: 256 pages each; untuned, glibc maps them afresh on every pass
    assert default["faults_per_pass"] > 200, default
    # at most an occasional growth of the heap (one activation's pages once in 10 passes)
    assert tuned["faults_per_pass"] < default["faults_per_pass"] / 20, (tuned, default)


def test_user_settings_win():
    assert probe(MALLOC_TRIM_THRESHOLD_="4194304")["result"] == "user"


def test_tuning_runs_once(monkeypatch):
    calls = []
    monkeypatch.setattr(malloc, "_state", {})
    monkeypatch.setattr(malloc, "_glibc_mallopt", lambda: lambda option, value: calls.append(
        (option, value)) or 1)
    monkeypatch.delenv("PF_MALLOC_TUNING", raising=False)
    for name in malloc.USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert malloc.tune_malloc() == "tuned" and malloc.tune_malloc() == "tuned"
    assert calls == [(malloc.M_MMAP_THRESHOLD, 32 << 20), (malloc.M_TRIM_THRESHOLD, 1 << 30)]


def test_refused_value_is_reported(monkeypatch):
    monkeypatch.setattr(malloc, "_state", {})
    monkeypatch.setattr(malloc, "_glibc_mallopt", lambda: lambda option, value: 0)
    monkeypatch.delenv("PF_MALLOC_TUNING", raising=False)
    for name in malloc.USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert malloc.tune_malloc() == "failed"


def test_timing_without_tuning_is_noted_once(monkeypatch, caplog):
    """An API user's process that never tuned malloc is told once, when it first times a CPU
    forward pass; a tuned one is not."""
    import logging

    import torch

    from utils.model_stats import time_forward

    monkeypatch.setattr(malloc, "_state", {})
    monkeypatch.setattr(malloc, "_glibc_mallopt", lambda: lambda option, value: 1)
    with caplog.at_level(logging.INFO, logger="pocketflow"):
        for _ in range(2):
            time_forward(torch.nn.Identity(), (1, 2, 2), (1,), warmup=0, repeats=1)
    assert sum("tune_malloc()" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    monkeypatch.setattr(malloc, "_state", {"result": "tuned"})
    with caplog.at_level(logging.INFO, logger="pocketflow"):
        time_forward(torch.nn.Identity(), (1, 2, 2), (1,), warmup=0, repeats=1)
    assert not any("tune_malloc()" in r.getMessage() for r in caplog.records)
