"""Dead-channel elimination on the README's main job (chn-pruned-rmt, ResNet-20 / digits):
FLOPs, unread output channels and eager latency of the thinned model before and after the
pass, side by side with the full model, in one process.

Each run is one ``learners.launch.run`` from the same pre-trained model (trained by the first
run if ``--model`` is missing), ``--report_latency=false``. The architecture the pass starts
from is captured by wrapping ``compression.surgery.dead_channels.eliminate`` (nothing else changes);
its weights do not matter for latency. Latency: median eval-mode forward time of the full
model, the thinned model before the pass and after it, rounds rotated (``--rounds``), at
batch 64 and 1, ``--threads`` threads. Unread channels: ``compression.surgery.unread.unread_channels``
(noise on one output channel at a time).

Runs: ``main`` (the README command: ``--learner=chn-pruned-rmt``, default ratio) and
``residual`` (``--cpr_prune_residual``: whole residual channels selected jointly, at
``--residual_ratio``). Prints a table, then one JSON line per run:
{"run", "flops_full", "flops_before", "flops_after", "flops_ratio_before", "flops_ratio_after",
 "unread_before", "unread_after", "latency_ms": {model: {"bs64", "bs1"}},
 "latency_ratio": {"before"|"after": {"bs64", "bs1"}}, "accuracy_full", "accuracy"}

    python benchmarks/dead_channels.py [--runs=main,residual] [--rounds=5]
"""
from __future__ import annotations

import json
import statistics
import tempfile

import torch
from absl import app, flags
from bench_common import learner_values

from compression.surgery import dead_channels
from compression.artifacts import load_model
from compression.surgery.unread import unread_channels
from learners.launch import run
from nets.resnet_at_digits import ModelHelper
from utils.model_stats import count_flops, measure_latency

flags.DEFINE_string("model", "./models_eval/model.ckpt",
                    "pre-trained digits ResNet-20 artifact (trained by the first run if missing)")
flags.DEFINE_list("runs", ["main", "residual"], "main, residual")
flags.DEFINE_float("residual_ratio", 0.5, "--cpr_prune_ratio of the residual run")
flags.DEFINE_float("ft_epochs_rat", 1.0, "--nb_epochs_rat of the fine-tuning")
flags.DEFINE_integer("rounds", 5, "latency rounds (models rotated within each)")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS
SHAPE = ModelHelper().input_shape


def configs() -> dict:
    return {"main": ["--learner=chn-pruned-rmt"],
            "residual": ["--learner=chn-pruned-rmt", "--cpr_prune_residual=true",
                         f"--cpr_prune_ratio={FLAGS.residual_ratio}"]}


def latencies(models: dict) -> dict:
    """Median ms per model and batch size, the models rotated within each round."""
    times = {name: {"bs64": [], "bs1": []} for name in models}
    names = list(models)
    for r in range(FLAGS.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            measured = measure_latency(models[name], SHAPE, (1, 64), FLAGS.threads,
                                       warmup=5, repeats=30)
            for key in ("bs64", "bs1"):
                times[name][key].append(measured[key])
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def one_run(name: str) -> dict:
    captured = []
    eliminate = dead_channels.eliminate

    def spy(model, input_shape):
        result = eliminate(model, input_shape)
        captured.append((model, result[0]))
        return result

    dead_channels.eliminate = spy
    try:
        with tempfile.TemporaryDirectory(prefix=f"bench_dead_{name}_") as outdir:
            values = learner_values(ModelHelper, FLAGS.model, outdir, 0, FLAGS.ft_epochs_rat,
                                    {"cpr": ("save_path", "save_path_eval", "save_path_ws")},
                                    configs()[name])
            report = run(ModelHelper, values)
    finally:
        dead_channels.eliminate = eliminate
    before, after = (m.eval() for m in captured[-1])
    full, _ = load_model(FLAGS.model)
    flops = {k: count_flops(m, SHAPE) for k, m in (("full", full), ("before", before),
                                                     ("after", after))}
    ms = latencies({"full": full.eval(), "before": before, "after": after})
    return {"run": name, "flops_full": flops["full"], "flops_before": flops["before"],
            "flops_after": flops["after"],
            "flops_ratio_before": round(flops["before"] / flops["full"], 4),
            "flops_ratio_after": round(flops["after"] / flops["full"], 4),
            "unread_before": sum(unread_channels(before, SHAPE).values()),
            "unread_after": sum(unread_channels(after, SHAPE).values()),
            "latency_ms": {k: {b: round(v, 3) for b, v in t.items()} for k, t in ms.items()},
            "latency_ratio": {side: {b: round(ms[side][b] / ms["full"][b], 3)
                                     for b in ("bs64", "bs1")} for side in ("before", "after")},
            "accuracy_full": report["accuracy"]["full"],
            "accuracy": report["accuracy"]["compressed"]}


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    rows = [one_run(name) for name in FLAGS.runs]
    print(f"\n{'run':<10}{'FLOPs before':>13}{'after':>8}{'unread':>8}{'->':>4}"
          f"{'lat64 before':>14}{'after':>8}{'lat1 before':>13}{'after':>8}{'acc full':>10}"
          f"{'acc':>8}")
    for row in rows:
        lat = row["latency_ratio"]
        print(f"{row['run']:<10}{row['flops_ratio_before']:>13.3f}{row['flops_ratio_after']:>8.3f}"
              f"{row['unread_before']:>8}{row['unread_after']:>4}"
              f"{lat['before']['bs64']:>14.3f}{lat['after']['bs64']:>8.3f}"
              f"{lat['before']['bs1']:>13.3f}{lat['after']['bs1']:>8.3f}"
              f"{row['accuracy_full']:>10.4f}{row['accuracy']:>8.4f}")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    app.run(main)
