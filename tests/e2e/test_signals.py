"""SIGTERM and SIGINT end a run like a planned stop: one line naming the signal and the phase,
no lock file left, exit status 143 / 130, and ``--resume`` continues from the checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

ARGS = ["--image_size=8", "--batch_size=32", "--resnet_size=20", "--log_dir=",
        "--report_latency=False", "--summ_step=5", "--save_step=10", "--export_format=none"]


def start(tmp_path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(REPO / "nets" / "resnet_at_digits_run.py"), *ARGS,
         f"--save_path={tmp_path}/ckpt/model.ckpt", f"--save_path_eval={tmp_path}/eval/model.ckpt",
         *extra], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, marker: str, timeout: float = 240) -> list[str]:
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    proc.kill()
    raise AssertionError(f"{marker!r} never appeared:\n{''.join(lines[-30:])}")


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_training_is_a_planned_stop_and_resume_continues(tmp_path, signum, status):
    proc = start(tmp_path, "--nb_epochs_rat=0.3")
    wait_for(proc, "train step 20")                    # a checkpoint was saved at step 10 and 20
    sent = time.time()
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    assert time.time() - sent < 5 and proc.returncode == status, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"error: stopped by {signal.Signals(signum).name} during train; ")
    assert "rerun the same command with --resume" in last and "Traceback" not in out
    locks = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files
             if f == ".pocketflow.lock"]
    assert locks == []
    resumed = start(tmp_path, "--nb_epochs_rat=0.3", "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    assert "resum" in out.lower()


def test_sigterm_in_selection_resumes_from_the_last_selected_layer(tmp_path, tiny_pretrained):
    import torch

    from utils.checkpoint import load_file

    runs = {}
    for name in ("stopped", "whole"):
        root = tmp_path / name
        tiny_pretrained(root)
        cpr = [f"--cpr_save_path={root}/cpr/model.ckpt", f"--cpr_save_path_eval={root}/cpr_eval/model.ckpt",
               f"--cpr_save_path_ws={root}/cpr_ws/model.ckpt", "--learner=chn-pruned-rmt",
               "--nb_epochs_rat=0.02", "--cpr_nb_smpls=1000"]
        runs[name] = (root, cpr)
    root, cpr = runs["stopped"]
    proc = start(root, *cpr)
    wait_for(proc, "select ")
    wait_for(proc, "select ")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGTERM during selection; kept: the layers selected")
    resumed = start(root, *cpr, "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    done = [line for line in out.splitlines() if "selection: resumed after" in line]
    assert done and int(done[0].split("resumed after ")[1].split()[0]) >= 1, out[-3000:]
    whole_root, whole_cpr = runs["whole"]
    whole = start(whole_root, *whole_cpr)
    out, _ = whole.communicate(timeout=300)
    assert whole.returncode == 0, out[-3000:]
    a = load_file(str(root / "cpr_ws" / "model.ckpt"))["state_dict"]
    b = load_file(str(whole_root / "cpr_ws" / "model.ckpt"))["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # bit-identical
