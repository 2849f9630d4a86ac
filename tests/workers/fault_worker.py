"""The digits entry script (nets/resnet_at_digits_run.py) with one injected fault, for
tests/e2e/test_fault_injection.py.

    python tests/workers/fault_worker.py <mode> [--flag=value ...]

Modes:
  ``kill-in-save:N``  the N-th ``torch.save`` of the run writes half of its bytes into the temp
                      file, then the process kills itself with SIGKILL (a crash mid-save);
  ``hold:SECONDS``    once the run holds its output lock, print ``LOCKED <pid>`` and sleep.
"""
from __future__ import annotations

import io
import os
import signal
import sys
import time

import torch
from absl import app, flags

from learners import launch
from nets.resnet_at_digits import ModelHelper


def kill_in_save(nth: int) -> None:
    real_save, calls = torch.save, [0]

    def save(obj, handle, *args, **kwargs):
        calls[0] += 1
        if calls[0] < nth:
            return real_save(obj, handle, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


def hold(seconds: float) -> None:
    real_lock = launch.lock_outputs

    def lock_outputs(directories, mgw):
        lock = real_lock(directories, mgw)
        print(f"LOCKED {os.getpid()}", flush=True)
        time.sleep(seconds)
        return lock

    launch.lock_outputs = lock_outputs


def main() -> None:
    mode, argument = sys.argv.pop(1).split(":")
    {"kill-in-save": lambda: kill_in_save(int(argument)),
     "hold": lambda: hold(float(argument))}[mode]()
    launch.define_flags(flags.FLAGS, ModelHelper)
    app.run(lambda argv: launch.main(ModelHelper, flags.FLAGS.flag_values_dict(), argv))


if __name__ == "__main__":
    main()
