"""Images/s of the same full-prec digits job on 1 vs 2 processes, torch.distributed vs Horovod.

Each configuration runs through scripts/run_local.sh as a separate job with the same global
batch; throughput is read from the job's own log (mean of the logged images/s after the
first summary). Every job gets ``OMP_NUM_THREADS=max(1, --cores // processes)``, so the 1-process
and the N-process jobs run at the same total thread count (left alone, run_local.sh gives each
process of an N-process job one thread while a 1-process job takes every core). Prints a table
and, as the last line, a JSON object of figures.

    python benchmarks/multiprocess.py [--nb_epochs_rat=0.3] [--global_batch=64] [--cores=2]
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

from utils.multi_gpu_wrapper import horovod_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_float("nb_epochs_rat", 0.3, "fraction of the digits schedule each job trains")
flags.DEFINE_integer("global_batch", 64, "global batch size (split over the processes)")
flags.DEFINE_integer("cores", 2, "cores shared by each job: OMP_NUM_THREADS=max(1, cores // processes)")
FLAGS = flags.FLAGS


def threads_per_proc(nprocs: int) -> int:
    return max(1, FLAGS.cores // nprocs)


def run_job(nprocs: int, backend: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["bash", os.path.join(ROOT, "scripts", "run_local.sh"), "nets/resnet_at_digits_run.py",
               f"-n={nprocs}", f"--mgw_backend={backend}", f"--batch_size={FLAGS.global_batch // nprocs}",
               f"--nb_epochs_rat={FLAGS.nb_epochs_rat}", "--summ_step=20", "--save_step=100000",
               f"--save_path={tmp}/c/model.ckpt", f"--save_path_eval={tmp}/e/model.ckpt",
               "--log_dir=", "--report_latency=false"]
        env = {**os.environ, "PYTHONPATH": ROOT, "PYTHON": sys.executable,
               "OMP_NUM_THREADS": str(threads_per_proc(nprocs))}
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    speeds = [float(s) for s in re.findall(r"([\d.]+) images/s", out)]
    if len(speeds) < 2:
        raise RuntimeError(f"too few throughput lines in the log:\n{out[-2000:]}")
    return statistics.mean(speeds[1:])


def main(_) -> None:
    jobs = [(1, "torch"), (2, "torch")]
    if horovod_available():
        jobs.append((2, "horovod"))
    speeds = {f"{n}x{b}": run_job(n, b) for n, b in jobs}
    threads = {f"{n}x{b}": threads_per_proc(n) for n, b in jobs}
    print(f"{'job':<14}{'threads/proc':>14}{'images/s':>12}")
    for name, speed in speeds.items():
        print(f"{name:<14}{threads[name]:>14}{speed:>12.1f}")
    figures = {"images_per_s": speeds, "cores": FLAGS.cores, "threads_per_proc": threads,
               "speedup_2_vs_1_torch": speeds["2xtorch"] / speeds["1xtorch"]}
    if "2xhorovod" in speeds:
        figures["horovod_vs_torch_2proc"] = speeds["2xhorovod"] / speeds["2xtorch"]
    print(json.dumps(figures))


if __name__ == "__main__":
    app.run(main)
