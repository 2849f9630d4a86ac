"""Channel pruning strategies on ResNet-20 / digits at the same FLOPs budget: ``channel`` with
the DDPG search (auto) vs the uniform strategy, and ``chn-pruned-gpu`` (L2,1 proximal) at
the per-layer ratio that gives the same FLOPs, all from the SAME pre-trained model.

One ``learners.launch.run`` per configuration and seed (own temporary directory,
``--report_latency=false``, ``--nb_epochs_rat=--ft_epochs_rat``); from the reports, averaged over
``--seeds``: FLOPs kept, accuracy of the thinned model before fine-tuning and after, and for the
search its seconds per roll-out, kept channels and whether the final re-ranking kept the
uniform strategy or a searched one.

Prints a table, then, as the LAST line, one JSON object:
{"full", "preserve", "runs": {name: {"flops_ratio", "before_ft", "after_ft", "after_ft_per_seed"}},
 "search": {"seconds_per_rollout", "nb_rlouts", "kept", "rerank_chosen_uniform"},
 "goals": {"auto_ge_uniform_before_ft", "auto_ge_uniform_after_ft", "channel_flops_within_2pct"}}
(chn-pruned-gpu has one ratio for every layer: its FLOPs are the nearest below the budget,
printed in the table; ``rerank_chosen_uniform`` is null without a re-ranking).

    python benchmarks/channel_search.py [--preserve=0.5] [--nb_rlouts=60] [--nb_rerank=4]
        [--seeds=0,1,2]
"""
from __future__ import annotations

import json

import torch
from absl import app, flags
from bench_common import learner_values, mean, run_all

from compression.budget.flops import ChannelFlops
from compression.graph.layers import choose_layers
from compression.budget.counts import counts_for_ratios
from compression.graph.layers import analyse
from nets.resnet_at_digits import ModelHelper
from compression.artifacts import load_model

flags.DEFINE_string("model", "./models_eval/model.ckpt",
                    "pre-trained digits ResNet-20 artifact (trained by the first run if missing)")
flags.DEFINE_float("preserve", 0.5, "fraction of the FLOPs kept")
flags.DEFINE_float("ft_epochs_rat", 0.5, "--nb_epochs_rat of the fine-tuning")
flags.DEFINE_integer("nb_rlouts", 60, "--cp_nb_rlouts of the search")
flags.DEFINE_integer("nb_rlouts_min", 20, "--cp_nb_rlouts_min of the search")
flags.DEFINE_integer("rl_ft_steps", 0, "--cp_rl_ft_steps of a roll-out")
flags.DEFINE_integer("nb_rerank", 4, "--cp_nb_rerank: best roll-outs re-scored against uniform")
flags.DEFINE_list("runs", ["uniform", "auto", "cpg"], "configurations to run")
flags.DEFINE_list("seeds", ["0"], "--seed values; the table gives the mean over them")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS


def cpg_ratio(preserve: float) -> float:
    """The per-layer pruning ratio whose chn-pruned-gpu counts keep at most ``preserve`` of the
    FLOPs (head and tail layers skipped, as by default), found by bisection."""
    full, _ = load_model(FLAGS.model)
    shape = ModelHelper().input_shape
    layers = analyse(full, shape)
    chosen = choose_layers(layers, True, True, [])
    flops = ChannelFlops(full, layers, shape)
    low, high = 0.0, 0.99
    for _ in range(40):
        mid = 0.5 * (low + high)
        kept = counts_for_ratios(chosen, {layer.name: mid for layer in chosen})
        low, high = (low, mid) if flops.ratio(kept) <= preserve else (mid, high)
    return high


def configs() -> dict:
    common = ["--learner=channel", f"--cp_preserve_ratio={FLAGS.preserve}"]
    return {
        "uniform": common + ["--cp_prune_option=uniform"],
        "auto": common + ["--cp_prune_option=auto", f"--cp_nb_rlouts={FLAGS.nb_rlouts}",
                          f"--cp_nb_rlouts_min={FLAGS.nb_rlouts_min}",
                          f"--cp_rl_ft_steps={FLAGS.rl_ft_steps}",
                          f"--cp_nb_rerank={FLAGS.nb_rerank}"],
        "cpg": ["--learner=chn-pruned-gpu", f"--cpg_prune_ratio={cpg_ratio(FLAGS.preserve)}"],
    }


def flag_values(name: str, outdir: str, seed: int) -> dict:
    global TABLE
    TABLE = TABLE or configs()   # built on first use (reads the pre-trained model)
    return learner_values(ModelHelper, FLAGS.model, outdir, seed, FLAGS.ft_epochs_rat,
                          dict.fromkeys(("cp", "cpg"), ("save_path", "save_path_eval", "save_path_ws")),
                          TABLE[name])


TABLE: dict = {}


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    reports = run_all(ModelHelper, FLAGS.runs, map(int, FLAGS.seeds), flag_values)
    full = next(iter(reports.values()))[0]["accuracy"]["full"]

    rows = {name: {"flops_ratio": rs[0]["flops"]["compressed"] / rs[0]["flops"]["full"],
                   "before_ft": mean(r["accuracy"]["compressed_before_finetune"] for r in rs),
                   "after_ft": mean(r["accuracy"]["compressed"] for r in rs),
                   "after_ft_per_seed": [r["accuracy"]["compressed"] for r in rs]}
            for name, rs in reports.items()}
    print(f"\nResNet-20 / digits, full model {full:.4f}, FLOPs kept {FLAGS.preserve}, "
          f"mean over seeds {FLAGS.seeds}")
    print(f"{'run':<9}{'FLOPs':>8}{'before FT':>11}{'after FT':>10}")
    for name, row in rows.items():
        print(f"{name:<9}{row['flops_ratio']:>8.4f}{row['before_ft']:>11.4f}{row['after_ft']:>10.4f}")
    search = None
    if "auto" in reports:
        first = reports["auto"][0]
        rerank = first["strategy"].get("rerank")  # absent: no re-ranking (--nb_rerank=0)
        search = {"seconds_per_rollout": first["search"]["seconds_per_rollout"],
                  "nb_rlouts": len(first["search"]["history"]),
                  "kept": {k: v[0] for k, v in first["strategy"]["kept"].items()},
                  "rerank_chosen_uniform": rerank["candidates"][rerank["chosen"]]["uniform"]
                  if rerank else None}
        chose = {True: "chose the uniform strategy", False: "kept a searched strategy", None: "none"}
        print(f"auto: {search['nb_rlouts']} roll-outs, {search['seconds_per_rollout']:.2f} s each "
              f"({60 / search['seconds_per_rollout']:.1f} per minute); kept channels "
              f"{list(search['kept'].values())}; re-ranking: "
              f"{chose[search['rerank_chosen_uniform']]}")

    def goal(test):
        try:
            return bool(test())
        except KeyError:
            return None

    print(json.dumps({"full": full, "preserve": FLAGS.preserve, "runs": rows, "search": search,
                      "goals": {
                          "auto_ge_uniform_before_ft": goal(
                              lambda: rows["auto"]["before_ft"] >= rows["uniform"]["before_ft"]),
                          "auto_ge_uniform_after_ft": goal(
                              lambda: rows["auto"]["after_ft"] >= rows["uniform"]["after_ft"]),
                          "channel_flops_within_2pct": all(
                              abs(row["flops_ratio"] - FLAGS.preserve) <= 0.02 * FLAGS.preserve
                              for name, row in rows.items() if name != "cpg")}}))


if __name__ == "__main__":
    app.run(main)
