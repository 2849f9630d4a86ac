"""Channel selection methods on ResNet-20 / digits at the same per-layer ratio: DCP
(dis-chn-pruned) vs chn-pruned-rmt (LASSO + least squares) vs L1 magnitude (chn-pruned-rmt with
``--cpr_selection=l1``), all from the SAME pre-trained model, first layer skipped in all three.

One ``learners.launch.run`` per method and seed (own temporary directory,
``--report_latency=false``, ``--nb_epochs_rat=--ft_epochs_rat``); from the reports, averaged over
``--seeds``: FLOPs kept, accuracy of the thinned model before and after fine-tuning, the
selection and fine-tuning wall times, and the training steps each method took before its
"before fine-tuning" accuracy (``extra_steps``). DCP's selection itself trains the network with
Adam (``--dcp_nb_iters_block`` steps per block that holds a selected layer, plus
``--dcp_nb_iters_layer`` steps per selected layer); LASSO and L1 take none, so the
before-fine-tuning comparison is stated with DCP's extra training. ``greedy_s``: the part of
DCP's selection spent in its greedy channel choice (the records' ``greedy_seconds``), the rest
being that Adam training and the refits; ``greedy_vs_cpr`` compares it with chn-pruned-rmt's
whole selection.

Prints a table, then, as the LAST line, one JSON object:
{"full", "ratio", "runs": {name: {"flops_ratio", "before_ft", "after_ft", "selection_s",
 "selection_vs_cpr", "greedy_s", "greedy_vs_cpr", "finetune_s", "extra_steps"}},
 "goals": {"dcp_ge_cpr_before_ft",
 "dcp_ge_cpr_before_ft_with_extra_training", "dcp_auto_selection_le_5x_cpr",
 "dcp_short_le_5x_cpr_within_half_a_point"}} (the first two hold the same value; the first is
the old name). Runs: ``dcp`` (the fixed ``--dcp_nb_iters_block/layer``), ``dcp_short``
(``--dcp_short_iters_block`` block steps: DCP's time is its block training, see
``docs/learners.md``), ``dcp_auto`` (the learner's step defaults: 2 epochs of this data per
block, PocketFlow's 1.28 per layer; with ``--dcp_nb_batches=20``, all its defaults),
``dcp_k`` (those, adding ``--dcp_channels_per_pass`` channels per gradient pass), ``cpr``
(chn-pruned-rmt's defaults: residual groups), ``cpr_per_layer`` (``--cpr_prune_residual=false``),
``l1``.

    python benchmarks/channel_methods.py [--ratio=0.5] [--dcp_nb_iters_block=200]
"""
from __future__ import annotations

import json

import torch
from absl import app, flags
from bench_common import fmt, learner_values, mean, run_all

from nets.resnet_at_digits import ModelHelper

flags.DEFINE_string("model", "./models_eval/model.ckpt",
                    "pre-trained digits ResNet-20 artifact (trained by the first run if missing)")
flags.DEFINE_float("ratio", 0.5, "fraction of each pruned layer's input channels removed")
flags.DEFINE_float("ft_epochs_rat", 0.5, "--nb_epochs_rat of the fine-tuning")
flags.DEFINE_integer("dcp_nb_iters_block", 200, "--dcp_nb_iters_block")
flags.DEFINE_integer("dcp_nb_iters_layer", 30, "--dcp_nb_iters_layer")
flags.DEFINE_integer("dcp_nb_batches", 16, "--dcp_nb_batches")
flags.DEFINE_integer("dcp_channels_per_pass", 4, "--dcp_channels_per_pass of the dcp_k run")
flags.DEFINE_integer("dcp_short_iters_block", 50, "--dcp_nb_iters_block of the dcp_short run")
flags.DEFINE_list("runs", ["dcp", "dcp_short", "dcp_auto", "dcp_k", "cpr", "l1"], "methods to run")
flags.DEFINE_list("seeds", ["0"], "--seed values; the table gives the mean over them")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS


def configs() -> dict:
    return {
        "dcp": ["--learner=dis-chn-pruned", f"--dcp_prune_ratio={FLAGS.ratio}",
                f"--dcp_nb_iters_block={FLAGS.dcp_nb_iters_block}",
                f"--dcp_nb_iters_layer={FLAGS.dcp_nb_iters_layer}",
                f"--dcp_nb_batches={FLAGS.dcp_nb_batches}"],
        "dcp_short": ["--learner=dis-chn-pruned", f"--dcp_prune_ratio={FLAGS.ratio}",
                      f"--dcp_nb_iters_block={FLAGS.dcp_short_iters_block}",
                      f"--dcp_nb_iters_layer={FLAGS.dcp_nb_iters_layer}",
                      f"--dcp_nb_batches={FLAGS.dcp_nb_batches}"],
        "dcp_auto": ["--learner=dis-chn-pruned", f"--dcp_prune_ratio={FLAGS.ratio}",
                     f"--dcp_nb_batches={FLAGS.dcp_nb_batches}"],
        "dcp_k": ["--learner=dis-chn-pruned", f"--dcp_prune_ratio={FLAGS.ratio}",
                  f"--dcp_nb_batches={FLAGS.dcp_nb_batches}",
                  f"--dcp_channels_per_pass={FLAGS.dcp_channels_per_pass}"],
        "cpr": ["--learner=chn-pruned-rmt", f"--cpr_prune_ratio={FLAGS.ratio}"],
        "cpr_per_layer": ["--learner=chn-pruned-rmt", f"--cpr_prune_ratio={FLAGS.ratio}",
                          "--cpr_prune_residual=false"],
        "l1": ["--learner=chn-pruned-rmt", f"--cpr_prune_ratio={FLAGS.ratio}",
               "--cpr_selection=l1"],
    }


def flag_values(name: str, outdir: str, seed: int) -> dict:
    return learner_values(ModelHelper, FLAGS.model, outdir, seed, FLAGS.ft_epochs_rat,
                          dict.fromkeys(("cpr", "dcp"), ("save_path", "save_path_eval", "save_path_ws")),
                          configs()[name])


def extra_steps(name: str, report: dict) -> int:
    """Training steps a method takes before its "before fine-tuning" accuracy: DCP's Adam steps
    (one block tune per block holding a selected layer, one layer tune per selected layer, as
    in ``learners/channel/dcp.py``); LASSO and L1 select without training."""
    if "--learner=dis-chn-pruned" not in configs()[name]:
        return 0
    return sum(record["adam_steps"] for record in report.get("selection") or [])


def greedy_seconds(report: dict) -> float | None:
    """Seconds of DCP's greedy channel choice (None for the methods without one)."""
    records = [r for r in report.get("selection") or [] if "greedy_seconds" in r]
    return sum(r["greedy_seconds"] for r in records) if records else None


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    reports = run_all(ModelHelper, FLAGS.runs, map(int, FLAGS.seeds), flag_values)
    full = next(iter(reports.values()))[0]["accuracy"]["full"]

    rows = {name: {"flops_ratio": rs[0]["flops"]["compressed"] / rs[0]["flops"]["full"],
                   "before_ft": mean(r["accuracy"]["compressed_before_finetune"] for r in rs),
                   "after_ft": mean(r["accuracy"]["compressed"] for r in rs),
                   "selection_s": mean(r["wall_s"]["selection"] for r in rs),
                   "finetune_s": mean(r["wall_s"]["finetune"] for r in rs),
                   "greedy_s": None if greedy_seconds(rs[0]) is None
                   else mean(greedy_seconds(r) for r in rs),
                   "extra_steps": mean(extra_steps(name, r) for r in rs)}
            for name, rs in reports.items()}
    print(f"\nResNet-20 / digits, full model {full:.4f}, ratio {FLAGS.ratio}, "
          f"mean over seeds {FLAGS.seeds}")
    cpr_s = rows["cpr"]["selection_s"] if "cpr" in rows else None
    for row in rows.values():
        row["selection_vs_cpr"] = row["selection_s"] / cpr_s if cpr_s else None
        row["greedy_vs_cpr"] = (row["greedy_s"] / cpr_s
                                if cpr_s and row["greedy_s"] is not None else None)
    print(f"{'method':<14}{'FLOPs':>7}{'before FT':>11}{'after FT':>10}{'select s':>10}{'vs cpr':>8}"
          f"{'greedy s':>10}{'vs cpr':>8}{'FT s':>8}{'extra steps':>13}")
    for name, row in rows.items():
        print(f"{name:<14}{row['flops_ratio']:>7.4f}{row['before_ft']:>11.4f}"
              f"{row['after_ft']:>10.4f}{row['selection_s']:>10.1f}"
              f"{fmt(row['selection_vs_cpr'], '.2f'):>8}{fmt(row['greedy_s'], '.1f'):>10}"
              f"{fmt(row['greedy_vs_cpr'], '.2f'):>8}{row['finetune_s']:>8.1f}"
              f"{row['extra_steps']:>13,.0f}")
    goal = (rows["dcp"]["before_ft"] >= rows["cpr"]["before_ft"]
            if "dcp" in rows and "cpr" in rows else None)
    if goal is not None:
        print(f"dcp vs cpr before fine-tuning: DCP had {rows['dcp']['extra_steps']:,.0f} Adam steps of "
              f"training during its selection, cpr {rows['cpr']['extra_steps']:,.0f}")
    print(json.dumps({"full": full, "ratio": FLAGS.ratio, "runs": rows,
                      "goals": {"dcp_ge_cpr_before_ft": goal,
                                "dcp_ge_cpr_before_ft_with_extra_training": goal,
                                "dcp_auto_selection_le_5x_cpr": None if "dcp_auto" not in rows or not cpr_s
                                else rows["dcp_auto"]["selection_vs_cpr"] <= 5.0,
                                "dcp_short_le_5x_cpr_within_half_a_point": short_goal(rows)}}))


def short_goal(rows: dict) -> bool | None:
    """dcp_short's selection at most 5x chn-pruned-rmt's, its accuracy before fine-tuning at
    most 0.5 point below."""
    if "dcp_short" not in rows or "cpr" not in rows:
        return None
    short, cpr = rows["dcp_short"], rows["cpr"]
    return short["selection_vs_cpr"] <= 5.0 and short["before_ft"] >= cpr["before_ft"] - 0.005


if __name__ == "__main__":
    app.run(main)
