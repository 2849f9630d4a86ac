"""Channel pruning on the zoo of user-style nets (tests/zoo/nets.py): FLOPs kept and FLOPs
wasted on output channels nothing reads, per net, after a real learner.

For each net: train it on the digits (8x8, Python API ``full-prec``), compress it with
``--learner`` at ``--prune_ratio``, then count on the saved model its FLOPs
(``torch.utils.flop_counter``), the output channels no later layer reads
(``compression.surgery.unread.unread_channels``: noise on one channel at a time, random weights) and
the FLOPs those channels cost, plus the accuracy. Prints a table and one JSON line per net:
{"net", "learner", "flops_full", "flops_pruned", "flops_kept", "unread_channels",
"wasted_flops", "wasted_share", "accuracy_full", "accuracy_pruned"}; a learner that fails on
a net prints {"net", "learner", "error"}.

    python benchmarks/zoo_pruning.py [--nets=inception,se] [--learner=chn-pruned-rmt]
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile

import torch
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pocketflow_torch as pf  # noqa: E402
from compression.surgery.unread import unread_channels, wasted_flops  # noqa: E402
from tests.zoo.nets import INPUT_SHAPE, ZOO  # noqa: E402
from utils.model_stats import count_flops  # noqa: E402

flags.DEFINE_list("nets", list(ZOO), f"zoo nets ({', '.join(ZOO)})")
flags.DEFINE_string("learner", "chn-pruned-rmt", "channel learner")
flags.DEFINE_float("prune_ratio", 0.5, "fraction of each pruned layer's inputs removed")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS


def digits() -> tuple:
    from sklearn.datasets import load_digits
    from torch.utils.data import TensorDataset

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    return TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])


def measure(name: str, train, val, root: str) -> dict:
    torch.manual_seed(0)
    full = pf.compress(ZOO[name](), train, val, "full-prec", out_dir=f"{root}/{name}/full",
                       epochs=15, lrn_rate_init=0.1, report_latency=False, export_format="none")
    row = {"net": name, "learner": FLAGS.learner}
    try:
        result = pf.compress(full.model, train, val, FLAGS.learner, out_dir=f"{root}/{name}/pruned",
                             prune_ratio=FLAGS.prune_ratio, epochs=2, report_latency=False,
                             export_format="none")
    except Exception as error:  # a learner that cannot prune this net: say which and why
        return {**row, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    model = result.model.eval()
    unread = unread_channels(model, INPUT_SHAPE)
    flops_full, flops = count_flops(full.model, INPUT_SHAPE), count_flops(model, INPUT_SHAPE)
    wasted = wasted_flops(model, INPUT_SHAPE, unread)
    return {**row, "flops_full": flops_full, "flops_pruned": flops,
            "flops_kept": round(flops / flops_full, 4), "unread_channels": sum(unread.values()),
            "wasted_flops": wasted, "wasted_share": round(wasted / flops, 4),
            "accuracy_full": round(full.report["accuracy"]["full"], 4),
            "accuracy_pruned": round(result.report["accuracy"]["compressed"], 4)}


def main(_) -> None:
    torch.set_num_threads(FLAGS.threads)
    logging.getLogger("pocketflow").setLevel(logging.WARNING)
    train, val = digits()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in FLAGS.nets:
            rows.append(measure(name, train, val, root))
    print(f"{'net':10} {'FLOPs kept':>10} {'unread':>7} {'wasted':>8} {'acc full':>9} {'acc':>6}")
    for row in rows:
        if "error" in row:
            print(f"{row['net']:10} error: {row['error']}")
            continue
        print(f"{row['net']:10} {row['flops_kept']:10.3f} {row['unread_channels']:7d} "
              f"{row['wasted_share']:8.3f} {row['accuracy_full']:9.4f} {row['accuracy_pruned']:6.4f}")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    app.run(main)
