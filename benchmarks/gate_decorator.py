"""Gate Decorator vs chn-pruned-rmt on ResNet-20 / digits at the SAME FLOPs, from the same
pre-trained model, with the same fine-tuning length (``--ft_epochs_rat`` x the helper's 30
epochs).

Per seed: ``gate-decorator --gd_preserve_ratio=--preserve`` first; then ``chn-pruned-rmt
--cpr_prune_ratio_prtl=uniform --cpr_preserve_ratio=<the FLOPs ratio Gate Decorator reached>``
(a uniform per-layer count at that FLOPs budget; the first layer skipped as usual). Gate
Decorator also trains during its tocks (``--gd_tock_epoch`` per round): the table gives each
method's extra training epochs beside the fine-tuning.

Prints a table (FLOPs kept, params, accuracy before / after fine-tuning, drop, extra epochs,
wall time), then, as the LAST line, one JSON object:
{"full", "runs": {name: {...}}, "goals": {"gd_drop_le_1pt", "gd_ge_cpr"}}.

    python benchmarks/gate_decorator.py [--preserve=0.5] [--ft_epochs_rat=0.34] [--seeds=0,1]
"""
from __future__ import annotations

import json

import torch
from absl import app, flags
from bench_common import learner_values, mean

from learners.launch import run
from nets.resnet_at_digits import ModelHelper

flags.DEFINE_string("model", "./models_eval/model.ckpt",
                    "pre-trained digits ResNet-20 artifact (trained by the first run if missing)")
flags.DEFINE_string("outdir", "./bench_gate_decorator", "where the runs go")
flags.DEFINE_float("preserve", 0.5, "fraction of the FLOPs both pruned models keep")
flags.DEFINE_float("ft_epochs_rat", 1 / 3, "--nb_epochs_rat of both fine-tunings (x 30 epochs)")
flags.DEFINE_float("tock_epoch", 1.0, "--gd_tock_epoch")
flags.DEFINE_list("seeds", ["0"], "--seed values; the table gives the mean over them")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS

PATHS = {"gd": ("save_path", "save_path_eval"), "cpr": ("save_path", "save_path_eval", "save_path_ws")}


def one_seed(seed: int) -> dict:
    out = f"{FLAGS.outdir}/seed{seed}"
    gd = run(ModelHelper, learner_values(
        ModelHelper, FLAGS.model, f"{out}/gd", seed, FLAGS.ft_epochs_rat, PATHS,
        ["--learner=gate-decorator", f"--gd_preserve_ratio={FLAGS.preserve}",
         f"--gd_tock_epoch={FLAGS.tock_epoch}", "--export_format=none"]))
    reached = gd["flops"]["compressed"] / gd["flops"]["full"]
    cpr = run(ModelHelper, learner_values(
        ModelHelper, FLAGS.model, f"{out}/cpr", seed, FLAGS.ft_epochs_rat, PATHS,
        ["--learner=chn-pruned-rmt", "--cpr_prune_ratio_prtl=uniform",
         f"--cpr_preserve_ratio={reached:.6f}", "--export_format=none"]))
    tocks = sum(1 for key in gd["wall_s"] if key.startswith("tock"))
    return {"gate-decorator": (gd, tocks * FLAGS.tock_epoch), "chn-pruned-rmt": (cpr, 0.0)}


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    per_seed = [one_seed(int(seed)) for seed in FLAGS.seeds]
    full = per_seed[0]["gate-decorator"][0]["accuracy"]["full"]
    rows = {}
    for name in per_seed[0]:
        reports = [runs[name][0] for runs in per_seed]
        rows[name] = {
            "flops_ratio": mean(r["flops"]["compressed"] / r["flops"]["full"] for r in reports),
            "params": mean(r["params"]["compressed"] for r in reports),
            "before_ft": mean(r["accuracy"]["compressed_before_finetune"] for r in reports),
            "after_ft": mean(r["accuracy"]["compressed"] for r in reports),
            "extra_epochs": mean(runs[name][1] for runs in per_seed),
            "wall_s": mean(sum(v for k, v in r["wall_s"].items() if k != "pretrain") for r in reports)}
        rows[name]["drop_pts"] = 100 * (full - rows[name]["after_ft"])
    full_params = per_seed[0]["gate-decorator"][0]["params"]["full"]
    print(f"\nResNet-20 / digits, full model {full:.4f} (params {full_params:,}),"
          f" fine-tuning {30 * FLAGS.ft_epochs_rat:.1f} epochs, mean over seeds {FLAGS.seeds}")
    print(f"{'method':<16}{'FLOPs':>8}{'params':>9}{'before FT':>11}{'after FT':>10}{'drop pt':>9}"
          f"{'extra ep':>10}{'wall s':>8}")
    for name, row in rows.items():
        print(f"{name:<16}{row['flops_ratio']:>8.4f}{row['params']:>9,.0f}{row['before_ft']:>11.4f}"
              f"{row['after_ft']:>10.4f}{row['drop_pts']:>9.2f}{row['extra_epochs']:>10.1f}"
              f"{row['wall_s']:>8.1f}")
    gd, cpr = rows["gate-decorator"], rows["chn-pruned-rmt"]
    print(json.dumps({"full": full, "runs": rows, "goals": {
        "gd_drop_le_1pt": gd["drop_pts"] <= 1.0, "gd_ge_cpr": gd["after_ft"] >= cpr["after_ft"]}}))


if __name__ == "__main__":
    app.run(main)
