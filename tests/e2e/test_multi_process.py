"""Multi-process training end to end (``scripts/run_local.sh -n=2``): the accuracy of two
processes against one, and the speed flags together on two processes."""
from __future__ import annotations

import pytest

from tests.conftest import BACKENDS, digits_run


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_match_one_process_accuracy(tmp_path, backend):
    _, single = digits_run(tmp_path / "one", 1, backend, "--batch_size=64")
    _, double = digits_run(tmp_path / "two", 2, backend, "--batch_size=32")
    print(f"{backend}: 1 process {single['accuracy']['full']:.4f}, "
          f"2 processes {double['accuracy']['full']:.4f}")
    assert abs(single["accuracy"]["full"] - double["accuracy"]["full"]) <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_speed_flags_on_two_processes(tmp_path, backend):
    """2 processes, gloo: the flags together train and the replicas agree; with torchrun (DDP)
    its gradient buckets match the channels_last strides (no stride warning); Horovod, which
    refuses channels_last gradients, runs the other two."""
    flags_on = ["--amp_dtype=bfloat16", "--compile"]
    if backend == "torch":
        flags_on.append("--channels_last")
    proc, report = digits_run(tmp_path, 2, backend, "--nb_epochs_rat=0.1", "--batch_size=32",
                              "--save_step=20", "--summ_step=10", "--export_format=none",
                              *flags_on)
    output = proc.stdout + proc.stderr
    assert "parameters identical on all 2 ranks" in output
    assert "Grad strides do not match" not in output
    assert "torch.compile failed" not in output
    assert report["accuracy"]["full"] > 0.5
