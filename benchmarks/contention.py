"""A busy machine: the README job alone, beside a second identical job, and beside a CPU-bound
process, with the intra-op threads following the free cores (``--cpu_threads=0``, the
default) and fixed at the core count (``--cpu_threads=<cores>``, torch's default and this
project's behaviour before ``utils.cpu_share``).

Each job is ``scripts/run_local.sh nets/resnet_at_digits_run.py <job flags>`` in a fresh
folder (its own full-model pre-training included), timed from start to exit; the CPU-bound
process is one Python busy loop. Ratios are wall times over the same mode's job alone.

    python benchmarks/contention.py [--job=readme|quick] [--modes=auto,fixed] [--repeats=1]

``readme``: the README's main job (``--learner=chn-pruned-rmt``, defaults); ``quick``:
full-precision training only, ``--nb_epochs_rat=0.2``. Goals (issue 40): auto alone no slower
than fixed alone (speed ratio >= 0.95) and, with auto, each of two jobs on the machine <= 2.5x
its time alone. Prints a table, then, as the LAST line, one JSON object:
{"cores", "job", "seconds": {mode: {scenario: [s, ...]}}, "ratio": {mode: {scenario: r}},
 "goals": {...}}
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = {"readme": ["--learner=chn-pruned-rmt"],
        "quick": ["--learner=full-prec", "--nb_epochs_rat=0.2"]}
SCENARIOS = ("alone", "pair", "beside_busy_loop")

flags.DEFINE_enum("job", "readme", list(JOBS), "which job to time")
flags.DEFINE_list("modes", ["auto", "fixed"], "auto: --cpu_threads=0; fixed: --cpu_threads=<cores>")
flags.DEFINE_integer("repeats", 1, "runs of each (mode, scenario)")
FLAGS = flags.FLAGS


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def start_job(mode: str, folder: str) -> subprocess.Popen:
    threads = 0 if mode == "auto" else cores()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return subprocess.Popen(
        ["bash", os.path.join(ROOT, "scripts", "run_local.sh"),
         os.path.join(ROOT, "nets", "resnet_at_digits_run.py"), *JOBS[FLAGS.job],
         f"--cpu_threads={threads}", "--log_dir=", "--report_latency=false"],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait(proc: subprocess.Popen, started: float) -> float:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"job failed ({proc.returncode}): {err[-2000:]}")
    return time.perf_counter() - started


def run_scenario(mode: str, scenario: str) -> list[float]:
    """Wall seconds of each job of ``scenario`` (2 for a pair)."""
    with tempfile.TemporaryDirectory() as tmp:
        folders = [os.path.join(tmp, str(i)) for i in range(2)]
        for folder in folders:
            os.makedirs(folder)
        busy = None
        if scenario == "beside_busy_loop":
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)
        try:
            nb_jobs = 2 if scenario == "pair" else 1
            started = time.perf_counter()
            procs = [start_job(mode, folders[i]) for i in range(nb_jobs)]
            return [wait(proc, started) for proc in procs]
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()


def main(argv):
    del argv
    seconds = {mode: {s: [] for s in SCENARIOS} for mode in FLAGS.modes}
    for _ in range(FLAGS.repeats):
        for scenario in SCENARIOS:
            for mode in FLAGS.modes:
                seconds[mode][scenario] += run_scenario(mode, scenario)
                print(f"{mode:6s} {scenario:17s} {seconds[mode][scenario][-1]:7.1f} s", flush=True)
    median = {m: {s: statistics.median(v) for s, v in d.items()} for m, d in seconds.items()}
    ratio = {m: {s: round(median[m][s] / median[m]["alone"], 2) for s in SCENARIOS}
             for m in median}
    print(f"\n{'mode':8s}" + "".join(f"{s:>20s}" for s in SCENARIOS) + "   (x its own alone time)")
    for mode in median:
        print(f"{mode:8s}" + "".join(f"{median[mode][s]:12.1f} s {ratio[mode][s]:5.2f}x"
                                     for s in SCENARIOS))
    goals = {}
    if "auto" in median:
        goals["pair_each_le_2.5x_alone"] = ratio["auto"]["pair"] <= 2.5
        if "fixed" in median:
            speed = median["fixed"]["alone"] / median["auto"]["alone"]
            goals["auto_alone_speed_vs_fixed"] = round(speed, 3)
            goals["auto_alone_ge_0.95x_fixed"] = speed >= 0.95
    print(json.dumps({"cores": cores(), "job": FLAGS.job, "seconds": seconds, "ratio": ratio,
                      "goals": goals}))


if __name__ == "__main__":
    app.run(main)
