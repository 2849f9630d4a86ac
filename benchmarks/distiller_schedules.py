"""Distiller's own schedules (``examples/distiller/*.yaml``: published files with their epochs
scaled to digits) on ResNet-20 / digits, all from the same pre-trained model: one
``--learner=schedule --compress=<file>`` run each, nothing in the files edited for this project.

Per schedule: the sparsity each pruned weight reached against what the file requests (filters
or input columns removed or zero for the structured pruners, zero weights for the fine-grained
ones; the worst gap over the weights), FLOPs and params kept, the thinning's masked-vs-thinned
difference, accuracy before / after fine-tuning. The LAST line printed is one JSON object.

    python benchmarks/distiller_schedules.py [--schedules=resnet20_filters.schedule_agp,...]
"""
from __future__ import annotations

import glob
import json
import os

import torch
from absl import app, flags
from bench_common import fmt, learner_values

from compression.artifacts import load_model
from compression.schedule.names import resolve_names
from compression.schedule.policy import load_policy
from learners.launch import run
from nets.resnet_at_digits import ModelHelper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(REPO, "examples", "distiller", "*.yaml")))
EPOCHS = {"resnet20_filters.schedule_agp": 14, "resnet20_slimming": 10, "resnet20_dorefa": 10,
          "resnet20_activation_apoz": 12}

flags.DEFINE_string("model", "./models_eval/model.ckpt",
                    "pre-trained digits ResNet-20 artifact (trained by the first run if missing)")
flags.DEFINE_string("outdir", "./bench_distiller", "where the runs go")
flags.DEFINE_list("schedules", [os.path.basename(f)[:-5] for f in FILES],
                  "examples/distiller/<name>.yaml to run")
flags.DEFINE_integer("epochs", 8, "--sch_nb_epochs of a schedule without its own in EPOCHS")
flags.DEFINE_integer("seed", 0, "--seed of the runs")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS


def requested(path: str, model: torch.nn.Module) -> dict[str, tuple[str, float]]:
    """weight -> (structure, fraction the file asks for at its end)."""
    policy = load_policy(path)
    resolve_names(policy, model)
    out = {}
    for inst in policy.instances["pruners"].values():
        p = inst.params
        fraction = p.get("final_sparsity", p.get("desired_sparsity"))
        if p.get("reg_regims"):
            out.update({w: ("Filters" if s == "3D" else s, f) for w, (f, s) in p["reg_regims"].items()})
        elif p.get("group_type"):
            out.update({w: ("Filters" if p["group_type"] == "3D" else p["group_type"], fraction)
                        for w in p["weights"]})
        else:
            out.update({w: ("Fine", fraction) for w in p["weights"]})
    return out


def reached(full: torch.nn.Module, final: torch.nn.Module, weight: str, structure: str) -> float:
    """The fraction of the structures gone (removed by thinning, or all zero)."""
    layer = weight[: -len(".weight")]
    before = full.get_submodule(layer).weight
    after = final.get_submodule(layer).weight.detach()
    if structure == "Fine":
        return float((after == 0).sum()) / after.numel()
    dim = 0 if structure == "Filters" else 1
    alive = int((after.transpose(0, dim).flatten(1).abs().sum(dim=1) != 0).sum())
    return 1.0 - alive / before.shape[dim]


def one(name: str) -> dict:
    path = os.path.join(REPO, "examples", "distiller", f"{name}.yaml")
    out = os.path.join(os.path.abspath(FLAGS.outdir), name)
    report = run(ModelHelper, learner_values(
        ModelHelper, FLAGS.model, out, FLAGS.seed, 1.0, {"sch": ("save_path", "save_path_eval")},
        ["--learner=schedule", f"--compress={path}", "--export_format=onnx",
         f"--sch_nb_epochs={EPOCHS.get(name, FLAGS.epochs)}"]))
    full, _ = load_model(FLAGS.model)
    final, _ = load_model(os.path.join(out, "schsave_path_eval", "model.ckpt"))
    gaps = {}
    for weight, (structure, fraction) in requested(path, full).items():
        gaps[weight] = (structure, fraction, reached(full, final, weight, structure))
    thinning = report.get("thinning") or {}
    return {"before_ft": report["accuracy"].get("compressed_before_finetune"),
            "after_ft": report["accuracy"]["compressed"], "full": report["accuracy"]["full"],
            "flops_ratio": report["flops"]["compressed"] / report["flops"]["full"],
            "params_ratio": report["params"]["compressed"] / report["params"]["full"],
            "weights": {w: {"structure": s, "requested": r, "reached": round(g, 4)}
                        for w, (s, r, g) in gaps.items()},
            "worst_gap": max((abs(g - r) for _, r, g in gaps.values()), default=None),
            "zero_channels": sum((thinning.get("zero_channels") or {}).values()),
            "thinning_max_abs_diff": thinning.get("max_abs_diff"),
            "names_mapped": len(report["policy"]["names"]),
            "onnx_parity_ok": (report.get("onnx") or {}).get("parity_ok")}


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    rows = {name: one(name) for name in FLAGS.schedules}
    full = next(iter(rows.values()))["full"]
    print(f"\nDistiller schedules on ResNet-20 / digits, full model {full:.4f}")
    print(f"{'schedule':<30}{'weights':>8}{'worst gap':>10}{'FLOPs':>8}{'params':>8}{'slimmed':>8}"
          f"{'thin diff':>10}{'before FT':>10}{'after FT':>10}{'ONNX':>6}")
    for name, row in rows.items():
        print(f"{name:<30}{len(row['weights']):>8}{fmt(row['worst_gap'], '.4f'):>10}"
              f"{row['flops_ratio']:>8.3f}{row['params_ratio']:>8.3f}{row['zero_channels']:>8}"
              f"{fmt(row['thinning_max_abs_diff'], '.1e'):>10}{fmt(row['before_ft'], '.4f'):>10}"
              f"{row['after_ft']:>10.4f}{str(row['onnx_parity_ok']):>6}")
    print(json.dumps({"full": full, "runs": rows}))


if __name__ == "__main__":
    app.run(main)
