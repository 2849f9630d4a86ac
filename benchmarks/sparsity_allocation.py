"""Per-layer sparsity allocation on ResNet-20 / digits: uniform vs heurist vs optimal (DDPG).

Every protocol prunes the SAME pre-trained model (``--model``, passed as ``--save_path_eval``;
trained first when missing) to the same overall sparsity ``--ratio`` with ``--learner=weight-sparse``
(one ``learners.launch.run`` per protocol, each in its own temporary directory, the same seed,
``--report_latency=false``). From each run's report: accuracy with the final masks applied
one-shot before fine-tuning (``compressed_before_finetune``) and after the AGP fine-tune
(``compressed``), the exact overall sparsity, and for ``optimal`` the search's roll-outs, best
reward and seconds per roll-out (layer-wise regression + short fine-tune + fast evaluation on
the held-out split of the training set).

Prints a table, then, as the LAST line, one JSON object:
{"ratio", "full", "before_ft": {protocol: acc}, "after_ft": {...}, "sparsity": {...},
 "search_s_per_rollout", "nb_rlouts", "optimal_ge_uniform_after_ft": bool | null}.

    python benchmarks/sparsity_allocation.py [--ratio=0.9] [--nb_rlouts=60] [--ft_epochs_rat=1]
"""
from __future__ import annotations

import json
import os
import tempfile

import torch
from absl import app, flags

from learners.launch import define_flags as define_run_flags
from learners.launch import run
from nets.resnet_at_digits import ModelHelper

flags.DEFINE_string("model", "./models_eval/model.ckpt",
                    "pre-trained digits ResNet-20 artifact (trained by the first run if missing)")
flags.DEFINE_float("ratio", 0.9, "--ws_prune_ratio: overall fraction of weights removed")
flags.DEFINE_list("protocols", ["uniform", "heurist", "optimal"], "protocols to compare")
flags.DEFINE_float("ft_epochs_rat", 1.0, "--nb_epochs_rat of the fine-tuning")
flags.DEFINE_integer("nb_rlouts", 60, "--ws_nb_rlouts of the optimal search")
flags.DEFINE_integer("nb_rlouts_min", 20, "--ws_nb_rlouts_min (roll-outs filling the buffer)")
flags.DEFINE_integer("nb_iters_ft", 20, "--ws_nb_iters_ft: fine-tune steps per roll-out")
flags.DEFINE_float("lrn_rate_ft", 1e-3, "--ws_lrn_rate_ft: Adam rate of a roll-out's fine-tune")
flags.DEFINE_integer("nb_iters_rg", 20, "--ws_nb_iters_rg: regression steps per layer")
flags.DEFINE_integer("seed", 0, "--seed of every run")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS


def flag_values(protocol: str, outdir: str) -> dict:
    fv = flags.FlagValues()
    define_run_flags(fv, ModelHelper)
    fv(["prog", "--learner=weight-sparse", f"--save_path_eval={FLAGS.model}",
        f"--save_path={os.path.join(outdir, 'models', 'model.ckpt')}",
        f"--ws_save_path={os.path.join(outdir, 'models_ws', 'model.ckpt')}",
        f"--ws_save_path_eval={os.path.join(outdir, 'models_ws_eval', 'model.ckpt')}",
        "--log_dir=", "--report_latency=false", f"--seed={FLAGS.seed}",
        f"--ws_prune_ratio={FLAGS.ratio}", f"--ws_prune_ratio_prtl={protocol}",
        f"--nb_epochs_rat={FLAGS.ft_epochs_rat}", f"--ws_nb_rlouts={FLAGS.nb_rlouts}",
        f"--ws_nb_rlouts_min={FLAGS.nb_rlouts_min}", f"--ws_nb_iters_ft={FLAGS.nb_iters_ft}",
        f"--ws_nb_iters_rg={FLAGS.nb_iters_rg}", f"--ws_lrn_rate_ft={FLAGS.lrn_rate_ft}"])
    return fv.flag_values_dict()


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    rows = {}
    for protocol in FLAGS.protocols:
        with tempfile.TemporaryDirectory(prefix=f"sparsity_allocation_{protocol}_") as outdir:
            rows[protocol] = run(ModelHelper, flag_values(protocol, outdir))
    full = next(iter(rows.values()))["accuracy"]["full"]
    print(f"\nResNet-20 / digits, overall sparsity {FLAGS.ratio:.2f}, full model {full:.4f}")
    print(f"{'protocol':<10}{'sparsity':>10}{'before FT':>11}{'after FT':>10}{'wall s':>9}")
    for protocol, report in rows.items():
        acc = report["accuracy"]
        wall = sum(report["wall_s"].get(k, 0.0) for k in ("search", "finetune"))
        print(f"{protocol:<10}{report['sparsity']['sparsity']:>10.4f}"
              f"{acc['compressed_before_finetune']:>11.4f}{acc['compressed']:>10.4f}{wall:>9.1f}")
    search = rows.get("optimal", {}).get("search")
    if search:
        print(f"optimal: {len(search['history'])} roll-outs, {search['seconds_per_rollout']:.2f} s "
              f"each, best reward {search['reward']:.4f}")
    after = {p: r["accuracy"]["compressed"] for p, r in rows.items()}
    print(json.dumps({
        "ratio": FLAGS.ratio, "full": full,
        "before_ft": {p: r["accuracy"]["compressed_before_finetune"] for p, r in rows.items()},
        "after_ft": after, "sparsity": {p: r["sparsity"]["sparsity"] for p, r in rows.items()},
        "search_s_per_rollout": search["seconds_per_rollout"] if search else None,
        "nb_rlouts": len(search["history"]) if search else None,
        "optimal_ge_uniform_after_ft": (after["optimal"] >= after["uniform"])
        if {"optimal", "uniform"} <= set(after) else None}))


if __name__ == "__main__":
    app.run(main)
