"""Two quantization defaults that differ from PocketFlow's, each measured against PocketFlow's
value on ResNet-20 / digits, all runs from the SAME pre-trained model:

* ``--nuql_opt_mode``: ``weights`` (PocketFlow: centres fixed) against ``both`` (weights and
  centres trained);
* ``--uql_use_buckets``: ``false`` (PocketFlow: one range per layer) against ``true`` (one range
  per output channel, ``--uql_bucket_type=channel``).

Each pair runs with identical other flags (both values are passed explicitly, so the figures do
not depend on the current defaults), once per seed and per setting: PocketFlow's default bit
widths (4-bit weights, fp32 activations) and harder ones where differences show. One
``learners.launch.run`` per run (own temporary directory, ``--report_latency=false``, no
TensorBoard, ``--nb_epochs_rat=--ft_epochs_rat``). Prints a table (setting, flag, value,
accuracy before fine-tuning, accuracy after fine-tuning mean / min / max over the seeds, wall
seconds of the whole run and of its fine-tuning, bytes of the bit-packed file), then, as the
LAST line, one JSON object {"full", "ft_epochs_rat", "rows": [...]} (per-seed accuracies in
each row's "after_ft").

    python benchmarks/pocketflow_defaults.py [--seeds=0,1,2] [--ft_epochs_rat=0.1]
        [--settings=nuql4,nuql2,nuql1,uql4,uql2] [--threads=1]
"""
from __future__ import annotations

import json
import tempfile
import time

import torch
from absl import app, flags
from bench_common import learner_values, mean

from learners.launch import run
from nets.resnet_at_digits import ModelHelper

flags.DEFINE_string("model", "./models_eval/model.ckpt",
                    "pre-trained digits ResNet-20 artifact (trained by the first run if missing)")
flags.DEFINE_float("ft_epochs_rat", 0.1, "--nb_epochs_rat of the fine-tuning")
flags.DEFINE_list("settings", ["nuql4", "nuql2", "nuql1", "uql4", "uql2"],
                  "settings to run (see SETTINGS)")
flags.DEFINE_list("seeds", ["0", "1", "2"], "--seed values (one test image is 0.28 points)")
flags.DEFINE_integer("threads", 1, "torch intra-op threads")
FLAGS = flags.FLAGS

# setting: (learner, prefix, flag, (PocketFlow's value, this project's value), other flags)
SETTINGS = {
    "nuql4": ("non-uniform", "nuql", "opt_mode", ("weights", "both"), ["--nuql_weight_bits=4"]),
    "nuql2": ("non-uniform", "nuql", "opt_mode", ("weights", "both"), ["--nuql_weight_bits=2"]),
    "nuql1": ("non-uniform", "nuql", "opt_mode", ("weights", "both"), ["--nuql_weight_bits=1"]),
    "uql4": ("uniform", "uql", "use_buckets", ("false", "true"),
             ["--uql_weight_bits=4", "--uql_bucket_type=channel"]),
    "uql2": ("uniform", "uql", "use_buckets", ("false", "true"),
             ["--uql_weight_bits=2", "--uql_bucket_type=channel"]),
}


def one_run(setting: str, value: str, seed: int) -> tuple[dict, float]:
    learner, prefix, flag, _, extra = SETTINGS[setting]
    with tempfile.TemporaryDirectory(prefix=f"bench_{setting}_{value}_") as outdir:
        values = learner_values(ModelHelper, FLAGS.model, outdir, seed, FLAGS.ft_epochs_rat,
                                {prefix: ("save_path", "save_path_eval")},
                                [f"--learner={learner}", f"--{prefix}_{flag}={value}", *extra])
        start = time.perf_counter()
        report = run(ModelHelper, values)
        return report, time.perf_counter() - start


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    seeds = [int(s) for s in FLAGS.seeds]
    results: dict[tuple[str, str], list[tuple[dict, float]]] = {}
    for seed in seeds:            # seeds outside: load drift hits both values of a pair alike
        for setting in FLAGS.settings:
            for value in SETTINGS[setting][3]:
                results.setdefault((setting, value), []).append(one_run(setting, value, seed))
    full = next(iter(results.values()))[0][0]["accuracy"]["full"]
    rows = []
    for (setting, value), runs in results.items():
        learner, prefix, flag, pair, extra = SETTINGS[setting]
        after = [r["accuracy"]["compressed"] for r, _ in runs]
        rows.append({"setting": setting, "flag": f"--{prefix}_{flag}", "value": value,
                     "pocketflow": value == pair[0], "extra": extra, "seeds": seeds,
                     "before_ft": mean(r["accuracy"]["compressed_before_finetune"]
                                       for r, _ in runs),
                     "after_ft": after, "mean": mean(after), "min": min(after),
                     "max": max(after), "wall_s": mean(w for _, w in runs),
                     "finetune_s": mean(r["wall_s"]["finetune"] for r, _ in runs),
                     "bytes": runs[0][0]["quantization"]["file"]["bytes"]})
    print(f"\nResNet-20 / digits, full model {full:.4f}, --nb_epochs_rat={FLAGS.ft_epochs_rat}, "
          f"seeds {seeds}, {FLAGS.threads} thread(s); accuracy after fine-tuning")
    print(f"{'setting':<8}{'flag':<20}{'value':<9}{'before FT':>10}{'mean':>9}{'min':>9}"
          f"{'max':>9}{'wall s':>9}{'FT s':>8}{'bytes':>9}")
    for row in rows:
        print(f"{row['setting']:<8}{row['flag']:<20}{row['value']:<9}{row['before_ft']:>10.4f}"
              f"{row['mean']:>9.4f}{row['min']:>9.4f}{row['max']:>9.4f}{row['wall_s']:>9.1f}"
              f"{row['finetune_s']:>8.1f}{row['bytes']:>9d}")
    print(json.dumps({"full": full, "ft_epochs_rat": FLAGS.ft_epochs_rat, "rows": rows}))


if __name__ == "__main__":
    app.run(main)
