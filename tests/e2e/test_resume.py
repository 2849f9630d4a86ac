"""A run killed with SIGKILL and resumed ends with exactly the weights of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

from learners.launch import run
from nets import resnet_at_digits
from tests.conftest import REPO, flag_values
from utils.checkpoint import load_file

ROOT = str(REPO)
ARGS = ("--nb_epochs_rat=0.1", "--save_step=10", "--summ_step=10", "--seed=3")


def _weights(path: str) -> dict:
    return load_file(path, kind="model")["state_dict"]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    reference = flag_values(tmp_path / "ref", *ARGS)
    run(resnet_at_digits.ModelHelper, reference)

    interrupted = flag_values(tmp_path / "cut", *ARGS)
    ckpt = interrupted["save_path"]
    cmd = [sys.executable, os.path.join(ROOT, "nets", "resnet_at_digits_run.py"), *ARGS,
           f"--save_path={ckpt}", f"--save_path_eval={interrupted['save_path_eval']}",
           "--log_dir=", "--report_latency=false"]
    # the same number of threads as this process: float sums must run in the same order
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not os.path.exists(ckpt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    cut_step = load_file(ckpt, kind="checkpoint")["step"]
    total = resnet_at_digits.ModelHelper(
        resnet_at_digits.Config(nb_epochs_rat=0.1)).nb_iters_train(1)
    assert 0 < cut_step < total
    assert cut_step % 22 != 0                       # 22 steps per epoch: resumed mid-epoch
    assert not os.path.exists(interrupted["save_path_eval"])

    run(resnet_at_digits.ModelHelper, {**interrupted, "resume": True})
    ref, resumed = _weights(reference["save_path_eval"]), _weights(interrupted["save_path_eval"])
    assert ref.keys() == resumed.keys()
    for key in ref:
        assert torch.equal(ref[key], resumed[key]), key
