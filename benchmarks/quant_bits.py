"""Quantization accuracy on ResNet-20 / digits: uniform 8/4/2 bits, non-uniform 4 bits and DDPG
bit widths at 4 equivalent bits, all from the SAME pre-trained model.

One ``learners.launch.run`` per configuration and seed (own temporary directory,
``--report_latency=false``, ``--nb_epochs_rat=--ft_epochs_rat``); from the reports, averaged
over ``--seeds``: accuracy before fine-tuning (quantizers attached to the pre-trained
weights) and after, the drop from the full model in points, the bit-packed file size, and
for the RL run its bit widths (first seed), equivalent bits and seconds per roll-out.

Prints a table, then, as the LAST line, one JSON object:
{"full", "runs": {name: {"before_ft", "after_ft", "after_ft_per_seed", "drop_points",
 "bytes"}}, "rl": {name: {...}},
 "goals": {"u8_drop_le_0.5", "u4_drop_le_1.5", "nu4_err_le_u4", "rl4_ge_u4", "rl3_ge_u3"}}.

    python benchmarks/quant_bits.py [--ft_epochs_rat=1] [--nb_rlouts=40] [--seeds=0,1,2]
"""
from __future__ import annotations

import json

import torch
from absl import app, flags
from bench_common import learner_values, mean, run_all

from nets.resnet_at_digits import ModelHelper

flags.DEFINE_string("model", "./models_eval/model.ckpt",
                    "pre-trained digits ResNet-20 artifact (trained by the first run if missing)")
flags.DEFINE_float("ft_epochs_rat", 1.0, "--nb_epochs_rat of the fine-tuning")
flags.DEFINE_integer("nb_rlouts", 40, "--uql_nb_rlouts of the RL run")
flags.DEFINE_integer("nb_rlouts_min", 15, "--uql_nb_rlouts_min of the RL run")
flags.DEFINE_integer("tune_global_steps", 20, "--uql_tune_global_steps per roll-out")
flags.DEFINE_list("runs", ["u8", "u4", "u2", "nu4", "rl4"],
                  "configurations to run (also nu4c: codebooks per output channel; u3 and rl3: "
                  "3 bits)")
flags.DEFINE_list("seeds", ["0"], "--seed values: every configuration runs once per seed and the "
                  "table gives the mean (one test image is 0.28 points on digits, so single "
                  "runs at ~99 % differ by noise)")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS

CONFIGS = {
    "u8": ("uniform", ["--uql_weight_bits=8"]),
    "u4": ("uniform", ["--uql_weight_bits=4"]),
    "u3": ("uniform", ["--uql_weight_bits=3"]),
    "u2": ("uniform", ["--uql_weight_bits=2"]),
    "nu4": ("non-uniform", ["--nuql_weight_bits=4"]),
    "nu4c": ("non-uniform", ["--nuql_weight_bits=4", "--nuql_use_buckets",
                             "--nuql_bucket_type=channel"]),
    "rl4": ("uniform", ["--uql_enbl_rl_agent", "--uql_equivalent_bits=4", "--uql_w_bit_min=2",
                        "--uql_w_bit_max=8"]),
    "rl3": ("uniform", ["--uql_enbl_rl_agent", "--uql_equivalent_bits=3", "--uql_w_bit_min=2",
                        "--uql_w_bit_max=8"]),
}


def flag_values(name: str, outdir: str, seed: int) -> dict:
    learner, extra = CONFIGS[name]
    prefix = "uql" if learner == "uniform" else "nuql"
    return learner_values(ModelHelper, FLAGS.model, outdir, seed, FLAGS.ft_epochs_rat,
                          {prefix: ("save_path", "save_path_eval")},
                          [f"--learner={learner}", f"--uql_nb_rlouts={FLAGS.nb_rlouts}",
                           f"--uql_nb_rlouts_min={FLAGS.nb_rlouts_min}",
                           f"--uql_tune_global_steps={FLAGS.tune_global_steps}", *extra])


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    reports = run_all(ModelHelper, FLAGS.runs, map(int, FLAGS.seeds), flag_values)
    full = next(iter(reports.values()))[0]["accuracy"]["full"]
    rows = {name: {"before_ft": mean(r["accuracy"]["compressed_before_finetune"] for r in rs),
                   "after_ft": mean(r["accuracy"]["compressed"] for r in rs),
                   "after_ft_per_seed": [r["accuracy"]["compressed"] for r in rs],
                   "drop_points": round(100 * (full - mean(r["accuracy"]["compressed"]
                                                           for r in rs)), 2),
                   "bytes": rs[0]["quantization"]["file"]["bytes"]}
            for name, rs in reports.items()}
    print(f"\nResNet-20 / digits, full model {full:.4f}, mean over seeds {FLAGS.seeds}")
    print(f"{'run':<6}{'before FT':>11}{'after FT':>10}{'drop (pt)':>11}{'bytes':>10}")
    for name, row in rows.items():
        print(f"{name:<6}{row['before_ft']:>11.4f}{row['after_ft']:>10.4f}"
              f"{row['drop_points']:>11.2f}{row['bytes']:>10d}")
    rl = {}
    for name in (n for n in reports if n.startswith("rl")):
        search, quant = reports[name][0]["search"], reports[name][0]["quantization"]
        rl[name] = {"bits": quant["bits"], "equivalent_bits": search["equivalent_bits"],
                    "nb_rlouts": len(search["history"]),
                    "seconds_per_rollout": search["seconds_per_rollout"],
                    "kept_uniform_per_seed": [r["search"]["kept_baseline"] for r in reports[name]]}
        print(f"{name}: bits {list(quant['bits'].values())}, {search['equivalent_bits']:.3f} bits "
              f"per weight, {rl[name]['nb_rlouts']} roll-outs, "
              f"{rl[name]['seconds_per_rollout']:.2f} s each; uniform kept per seed: "
              f"{rl[name]['kept_uniform_per_seed']}")

    def goal(test):
        try:
            return bool(test())
        except KeyError:
            return None

    print(json.dumps({"full": full, "runs": rows, "rl": rl, "goals": {
        "u8_drop_le_0.5": goal(lambda: rows["u8"]["drop_points"] <= 0.5),
        "u4_drop_le_1.5": goal(lambda: rows["u4"]["drop_points"] <= 1.5),
        "nu4_err_le_u4": goal(lambda: rows["nu4"]["after_ft"] >= rows["u4"]["after_ft"]),
        "nu4c_err_le_u4": goal(lambda: rows["nu4c"]["after_ft"] >= rows["u4"]["after_ft"]),
        "rl4_ge_u4": goal(lambda: rows["rl4"]["after_ft"] >= rows["u4"]["after_ft"]),
        "rl3_ge_u3": goal(lambda: rows["rl3"]["after_ft"] >= rows["u3"]["after_ft"])}}))


if __name__ == "__main__":
    app.run(main)
