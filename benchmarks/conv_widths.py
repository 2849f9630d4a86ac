"""What a 3x3 convolution costs per channel width on this CPU (eager torch, oneDNN): the widths
whose time follows their FLOPs, and the ones that cost as much as a wider layer.

For each spatial size and width c, a c -> c 3x3 conv (padding 1, no bias, eval mode, batch
``--batch``) is timed: median of ``--repeats`` calls after 10 warm-up calls, widths rotated
within each of ``--rounds`` rounds, the median over rounds. Run with this process's malloc
tuned (``utils.malloc``) and, ``--untuned``, without it (glibc's defaults: 1 MiB activations
are mapped and faulted in on every call). Prints a table (ms and time per FLOP relative to
the widest width) and, as the LAST line, one JSON object:
{"cpu_capability", "block", "batch", "threads", "malloc", "ms": {"hw16": {"c8": ..}},
 "cost_per_flop": {"hw16": {"c8": ..}}}

    python benchmarks/conv_widths.py [--widths=8,12,16,24,32,40,48,64] [--sizes=16,8,4]
"""
from __future__ import annotations

import json
import os
import statistics
import time

from absl import app, flags

from utils.malloc import tune_malloc

flags.DEFINE_list("widths", ["8", "12", "16", "20", "24", "32", "40", "48", "56", "64"],
                  "channel widths (in = out)")
flags.DEFINE_list("sizes", ["16", "8", "4"], "spatial sizes (ResNet-20 on 16x16 digits: 16, 8, 4)")
flags.DEFINE_integer("batch", 64, "batch size")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
flags.DEFINE_integer("repeats", 50, "timed calls per width and round")
flags.DEFINE_integer("rounds", 3, "rounds (widths rotated)")
flags.DEFINE_bool("untuned", False, "leave glibc's malloc defaults (PF_MALLOC_TUNING=0)")
FLAGS = flags.FLAGS


def median_ms(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list) -> None:
    del argv
    if FLAGS.untuned:
        os.environ["PF_MALLOC_TUNING"] = "0"
    malloc = tune_malloc()
    import torch

    from compression.budget.simd import cpu_channel_block

    torch.set_num_threads(FLAGS.threads)
    widths, sizes = [int(w) for w in FLAGS.widths], [int(s) for s in FLAGS.sizes]
    ms: dict = {}
    with torch.no_grad():
        for hw in sizes:
            calls = {}
            for c in widths:
                conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).eval()
                x = torch.randn(FLAGS.batch, c, hw, hw)
                calls[c] = (lambda conv=conv, x=x: conv(x))
            samples = {c: [] for c in widths}
            for r in range(FLAGS.rounds):
                order = widths[r % len(widths):] + widths[:r % len(widths)]
                for c in order:
                    samples[c].append(median_ms(calls[c], FLAGS.repeats))
            ms[f"hw{hw}"] = {f"c{c}": round(statistics.median(v), 4) for c, v in samples.items()}
    widest = max(widths)
    per_flop = {size: {key: round(t / (int(key[1:]) ** 2) / (row[f"c{widest}"] / widest ** 2), 3)
                       for key, t in row.items()} for size, row in ms.items()}
    print(f"3x3 conv c -> c, batch {FLAGS.batch}, {FLAGS.threads} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}, malloc {malloc}; ms (time per FLOP vs c{widest})")
    print(f"{'width':>6}" + "".join(f"{size:>18}" for size in ms))
    for c in widths:
        print(f"{c:>6}" + "".join(f"{ms[s][f'c{c}']:>10.3f} ({per_flop[s][f'c{c}']:>4.2f})"
                                  for s in ms))
    print(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "block": cpu_channel_block(), "batch": FLAGS.batch,
                      "threads": FLAGS.threads, "malloc": malloc, "ms": ms,
                      "cost_per_flop": per_flop}))


if __name__ == "__main__":
    app.run(main)
