"""Channel pruning on the zoo of user-style nets (tests/zoo/nets.py): FLOPs kept, output
channels nothing reads, accuracy and ONNX parity, per net and channel learner.

For each net: train it on the digits (8x8, Python API ``full-prec``), compress it with each of
``--learners`` at ``--prune_ratio``, then count on the saved model its FLOPs
(``torch.utils.flop_counter``), the output channels no later layer reads
(``compression.surgery.unread.unread_channels``: noise on one channel at a time, random weights),
the FLOPs those channels cost, and compare with the report (its ``unread_channels`` and how it
was checked, its FLOPs). Prints a table and one JSON line per run: {"net", "learner",
"flops_full", "flops_pruned", "flops_kept", "unread_channels", "report_unread", "checked_by",
"wasted_flops", "wasted_share", "accuracy_full", "accuracy_pruned", "onnx_parity"}; a learner
that refuses a net prints {"net", "learner", "error"}.

    python benchmarks/zoo_pruning.py [--nets=inception,se] [--learners=chn-pruned-rmt]
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
LEARNERS = {"channel": {"nb_rlouts": 2, "nb_rlouts_min": 1, "preserve_ratio": 0.5},
            "chn-pruned-gpu": {}, "chn-pruned-rmt": {},
            "dis-chn-pruned": {"nb_iters_block": 20, "nb_iters_layer": 5, "nb_batches": 2},
            "gate-decorator": {"tock_epoch": 0.2, "t": 3, "preserve_ratio": 0.5}}
flags.DEFINE_list("learners", list(LEARNERS), "channel learners")
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


def measure(name: str, train, val, root: str) -> list[dict]:
    torch.manual_seed(0)
    full = pf.compress(ZOO[name](), train, val, "full-prec", out_dir=f"{root}/{name}/full",
                       epochs=15, lrn_rate_init=0.1, report_latency=False, export_format="none")
    return [run(name, learner, full, train, val, root) for learner in FLAGS.learners]


def run(name: str, learner: str, full, train, val, root: str) -> dict:
    row = {"net": name, "learner": learner}
    ratio = {} if learner in ("channel", "gate-decorator") else {"prune_ratio": FLAGS.prune_ratio}
    try:
        result = pf.compress(full.model, train, val, learner, out_dir=f"{root}/{name}/{learner}",
                             epochs=2, report_latency=False, export_format="onnx",
                             **ratio, **LEARNERS[learner])
    except Exception as error:  # a learner that cannot prune this net: say which and why
        return {**row, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    model, report = result.model.eval(), result.report
    unread = unread_channels(model, INPUT_SHAPE)
    flops_full, flops = count_flops(full.model, INPUT_SHAPE), count_flops(model, INPUT_SHAPE)
    assert report["flops"]["compressed"] == flops, (name, learner)
    wasted = wasted_flops(model, INPUT_SHAPE, unread)
    dead = report.get("dead_channels", {})
    return {**row, "flops_full": flops_full, "flops_pruned": flops,
            "flops_kept": round(flops / flops_full, 4), "unread_channels": sum(unread.values()),
            "report_unread": dead.get("unread_channels"), "checked_by": dead.get("checked_by"),
            "wasted_flops": wasted, "wasted_share": round(wasted / flops, 4),
            "accuracy_full": round(full.report["accuracy"]["full"], 4),
            "accuracy_pruned": round(report["accuracy"]["compressed"], 4),
            "onnx_parity": report.get("onnx", {}).get("parity_ok")}


def main(_) -> None:
    torch.set_num_threads(FLAGS.threads)
    logging.getLogger("pocketflow").setLevel(logging.WARNING)
    train, val = digits()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in FLAGS.nets:
            rows.extend(measure(name, train, val, root))
    print(f"{'net':12} {'learner':15} {'FLOPs kept':>10} {'unread':>7} {'report':>7} "
          f"{'wasted':>7} {'acc full':>8} {'acc':>6} {'parity':>6}")
    for row in rows:
        if "error" in row:
            print(f"{row['net']:12} {row['learner']:15} refused: {row['error']}")
            continue
        print(f"{row['net']:12} {row['learner']:15} {row['flops_kept']:10.3f} "
              f"{row['unread_channels']:7d} {row['report_unread']!s:>7} {row['wasted_share']:7.3f} "
              f"{row['accuracy_full']:8.4f} {row['accuracy_pruned']:6.4f} {row['onnx_parity']!s:>6}")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    app.run(main)
