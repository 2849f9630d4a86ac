"""A small multi-process program the MultiGpuWrapper tests launch through run_local.sh.

Modes (first argument): ``broadcast`` (rank 0 draws a random list, every rank prints what it
received), ``die-raise`` / ``die-kill`` (rank 1 fails after a few allreduces while the others
keep calling collectives). Extra arguments such as --enbl_multi_gpu are ignored.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import time

import torch

from utils.multi_gpu_wrapper import MultiGpuWrapper


def main() -> None:
    mode = next(a for a in sys.argv[1:] if not a.startswith("-"))
    backend = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--mgw_backend=")), "auto")
    mgw = MultiGpuWrapper.create(True, backend)
    rank = mgw.rank()
    if mode == "broadcast":
        rng = random.Random(1000 + rank)           # every rank draws something different
        mine = [round(rng.random(), 6) for _ in range(5)]
        got = mgw.broadcast_object(mine if rank == 0 else None)
        tensor = mgw.broadcast(torch.tensor(mine))
        total = mgw.allreduce(torch.tensor([float(rank + 1)]))
        # one file per rank: the launchers interleave the ranks' stdout
        with open(os.path.join(os.environ["PF_RESULT_DIR"], f"rank{rank}.json"), "w") as handle:
            json.dump({"rank": rank, "size": mgw.size(), "backend": mgw.name, "drawn": mine,
                       "received": got, "tensor": tensor.tolist(), "sum": total.item()}, handle)
    else:
        for step in range(10_000):
            if rank == 1 and step == 3:
                if mode == "die-kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("rank 1 fails on purpose")
            mgw.allreduce(torch.ones(4))
            time.sleep(0.01)
    mgw.shutdown()


if __name__ == "__main__":
    main()
