"""Distiller's own schedules (``examples/distiller/*.yaml``: published files with their epochs
scaled to digits) on digits, one ``--learner=schedule --compress=<file>`` run each, nothing in
the files edited for this project.

``PUBLISHED`` is every schedule Distiller publishes for its CIFAR ResNets (resnet20/56_cifar,
preact_resnet20_cifar; the model each file's header / ``arch`` names), run on that registered
net (``--net``). The other files are this project's adaptations of Distiller's files to its
default ``resnet20``. Each net is pre-trained once (``<model_dir>/<net>/model.ckpt``, the default
ResNet-20 at ``<model_dir>/model.ckpt``) and every run starts from it.

Per schedule: run / refused / failed (with the first line of the message); the sparsity each
pruned weight reached against what the file requests (filters or input columns removed or zero
for the structured pruners, zero weights for the fine-grained ones; the worst gap over the
weights), FLOPs and params kept, the thinning's masked-vs-thinned difference, accuracy before /
after fine-tuning, whether an int8 file was written, the ONNX parity check. The run length is
the last pruning / regularization / thinning epoch + 3 (3 when the file has none: LR-only or
quantization files), or ``EPOCHS``. The LAST line printed is one JSON object.

    python benchmarks/distiller_schedules.py [--published] [--schedules=a,b,...]
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
# examples/distiller/<name>.yaml -> (Distiller's examples/<path>, the registered net it targets)
PUBLISHED = {
    "resnet20_filters.schedule_agp": ("agp-pruning/resnet20_filters.schedule_agp.yaml", "resnet20_cifar"),
    "resnet20_filters.bn_fold.schedule_agp": ("agp-pruning/resnet20_filters.bn_fold.schedule_agp.yaml",
                                              "resnet20_cifar"),
    "resnet20_filters.schedule_agp_2": ("agp-pruning/resnet20_filters.schedule_agp_2.yaml", "resnet20_cifar"),
    "resnet20_filters.schedule_agp_3": ("agp-pruning/resnet20_filters.schedule_agp_3.yaml", "resnet20_cifar"),
    "resnet20_filters.schedule_agp_4": ("agp-pruning/resnet20_filters.schedule_agp_4.yaml", "resnet20_cifar"),
    "resnet20_cifar_randomlevel_training": ("drop_filter/resnet20_cifar_randomlevel_training.yaml",
                                            "resnet20_cifar"),
    "gss_channels-removal_training": ("gss/gss_channels-removal_training.yaml", "resnet20_cifar"),
    "resnet20_slimming_published": ("network_slimming/resnet20_slimming.yaml", "resnet20_cifar"),
    "resnet20.network_surgery": ("network_surgery/resnet20.network_surgery.yaml", "resnet20_cifar"),
    "resnet56_cifar_activation_apoz": ("network_trimming/resnet56_cifar_activation_apoz.yaml",
                                       "resnet56_cifar"),
    "resnet56_cifar_activation_apoz_v2": ("network_trimming/resnet56_cifar_activation_apoz_v2.yaml",
                                          "resnet56_cifar"),
    "resnet56_cifar_baseline_training": (
        "pruning_filters_for_efficient_convnets/resnet56_cifar_baseline_training.yaml", "resnet56_cifar"),
    "resnet56_cifar_channel_rank": ("pruning_filters_for_efficient_convnets/resnet56_cifar_channel_rank.yaml",
                                    "resnet56_cifar"),
    "resnet56_cifar_filter_rank": ("pruning_filters_for_efficient_convnets/resnet56_cifar_filter_rank.yaml",
                                   "resnet56_cifar"),
    "resnet56_cifar_filter_rank_v2": (
        "pruning_filters_for_efficient_convnets/resnet56_cifar_filter_rank_v2.yaml", "resnet56_cifar"),
    "preact_resnet_cifar_base_fp32": ("quantization/fp32_baselines/preact_resnet_cifar_base_fp32.yaml",
                                      "preact_resnet20_cifar"),
    "preact_resnet20_cifar_pact": ("quantization/quant_aware_train/preact_resnet20_cifar_pact.yaml",
                                   "preact_resnet20_cifar"),
    "preact_resnet_cifar_dorefa": ("quantization/quant_aware_train/preact_resnet_cifar_dorefa.yaml",
                                   "preact_resnet20_cifar"),
    # model-agnostic (its header runs it on ImageNet's resnet18): run on resnet20_cifar
    "quant_aware_train_linear_quant": ("quantization/quant_aware_train/quant_aware_train_linear_quant.yaml",
                                       "resnet20_cifar"),
    "resnet20_cifar_baseline_training": ("ssl/resnet20_cifar_baseline_training.yaml", "resnet20_cifar"),
    "ssl_4D-removal_finetuning": ("ssl/ssl_4D-removal_finetuning.yaml", "resnet20_cifar"),
    "ssl_4D-removal_training": ("ssl/ssl_4D-removal_training.yaml", "resnet20_cifar"),
    "ssl_channels-removal_finetuning": ("ssl/ssl_channels-removal_finetuning.yaml", "resnet20_cifar"),
    "ssl_channels-removal_finetuning_x1.8": ("ssl/ssl_channels-removal_finetuning_x1.8.yaml",
                                             "resnet20_cifar"),
    "ssl_channels-removal_training": ("ssl/ssl_channels-removal_training.yaml", "resnet20_cifar"),
    "ssl_channels-removal_training_x1.8": ("ssl/ssl_channels-removal_training_x1.8.yaml", "resnet20_cifar"),
    "ssl_filter-removal_training": ("ssl/ssl_filter-removal_training.yaml", "resnet20_cifar"),
}
EPOCHS = {"resnet20_filters.schedule_agp": 14, "resnet20_slimming": 10, "resnet20_dorefa": 10,
          "resnet20_activation_apoz": 12, "resnet20_filter_rank": 8, "resnet20_channel_rank": 8}
FT_EPOCHS = 2     # after the last pruning / regularization / thinning epoch
PLAIN_EPOCHS = 3  # a file without any (LR schedulers, quantizers only)

flags.DEFINE_string("model_dir", "./models_eval",
                    "pre-trained digits models: <dir>/model.ckpt (ResNet-20), <dir>/<net>/model.ckpt "
                    "(--net); each is trained by its first run if missing")
flags.DEFINE_string("outdir", "./bench_distiller", "where the runs go")
flags.DEFINE_list("schedules", [os.path.basename(f)[:-5] for f in FILES],
                  "examples/distiller/<name>.yaml to run")
flags.DEFINE_bool("published", False, "run only Distiller's published CIFAR-ResNet files (PUBLISHED)")
flags.DEFINE_integer("seed", 0, "--seed of the runs")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS


def net_of(name: str) -> str:
    """The registered net a file runs on ('' = the helper's default ResNet-20)."""
    return PUBLISHED.get(name, ("", ""))[1]


def nb_epochs(name: str, path: str) -> int:
    if name in EPOCHS:
        return EPOCHS[name]
    last = [p.active_epochs()[-1] for p in load_policy(path).policies
            if p.kind in ("pruner", "regularizer", "extension") and p.active_epochs()]
    return max(last) + 1 + FT_EPOCHS if last else PLAIN_EPOCHS


def requested(path: str, model: torch.nn.Module) -> dict[str, tuple[str, float | None]]:
    """weight -> (structure, fraction the file asks for at its end; None: no fixed fraction)."""
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
        elif p.get("weights"):
            out.update({w: ("Fine", fraction) for w in p["weights"]})
        elif p.get("sensitivities"):   # SplicingPruner: thresholds, no fixed fraction
            out.update({w: ("Fine", None) for w in p["sensitivities"] if w != "*"})
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


def model_path(net: str) -> str:
    return os.path.join(FLAGS.model_dir, net, "model.ckpt") if net else \
        os.path.join(FLAGS.model_dir, "model.ckpt")


def pretrained(net: str) -> None:
    """Train the net's full model once (a plain schedule run trains it when it is missing)."""
    if os.path.exists(model_path(net)):
        return
    path = os.path.join(REPO, "examples", "distiller", "resnet20_cifar_baseline_training.yaml")
    out = os.path.join(os.path.abspath(FLAGS.outdir), f"pretrain_{net or 'resnet20'}")
    run(ModelHelper, learner_values(
        ModelHelper, model_path(net), out, FLAGS.seed, 1.0, {"sch": ("save_path", "save_path_eval")},
        ["--learner=schedule", f"--compress={path}", "--sch_nb_epochs=1", "--cpu_threads=1",
         *([f"--net={net}"] if net else [])]))


def one(name: str) -> dict:
    path = os.path.join(REPO, "examples", "distiller", f"{name}.yaml")
    net = net_of(name)
    out = os.path.join(os.path.abspath(FLAGS.outdir), name)
    row = {"net": net or "resnet20", "epochs": None, "source": PUBLISHED.get(name, ("", ""))[0]}
    pretrained(net)
    try:
        row["epochs"] = epochs = nb_epochs(name, path)
        report = run(ModelHelper, learner_values(
            ModelHelper, model_path(net), out, FLAGS.seed, 1.0, {"sch": ("save_path", "save_path_eval")},
            ["--learner=schedule", f"--compress={path}", "--export_format=onnx", "--cpu_threads=1",
             f"--sch_nb_epochs={epochs}", *([f"--net={net}"] if net else [])]))
    except Exception as exc:  # noqa: BLE001 - a refusal or a failure is this benchmark's result
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = message.replace(REPO + os.sep, "")
        refused = " is not supported" in message or "refused" in message
        return {**row, "outcome": "refused" if refused else "failed",
                "error": f"{type(exc).__name__}: {message}"}
    full, _ = load_model(model_path(net))
    final, _ = load_model(os.path.join(out, "schsave_path_eval", "model.ckpt"))
    gaps = {}
    for weight, (structure, fraction) in requested(path, full).items():
        gaps[weight] = (structure, fraction, reached(full, final, weight, structure))
    thinning = report.get("thinning") or {}
    int8 = report.get("int8")
    return {**row, "outcome": "ran",
            "before_ft": report["accuracy"].get("compressed_before_finetune"),
            "after_ft": report["accuracy"]["compressed"], "full": report["accuracy"]["full"],
            "flops_ratio": report["flops"]["compressed"] / report["flops"]["full"],
            "params_ratio": report["params"]["compressed"] / report["params"]["full"],
            "weights": {w: {"structure": s, "requested": r, "reached": round(g, 4)}
                        for w, (s, r, g) in gaps.items()},
            "worst_gap": max((abs(g - r) for _, r, g in gaps.values() if r is not None), default=None),
            "zero_channels": sum((thinning.get("zero_channels") or {}).values()),
            "thinning_max_abs_diff": thinning.get("max_abs_diff"),
            "names_mapped": len(report["policy"]["names"]),
            "int8_written": None if int8 is None else bool(int8.get("written")),
            "int8_reason": None if int8 is None else int8.get("reason"),
            "onnx_parity_ok": (report.get("onnx") or {}).get("parity_ok")}


def sparsity(row: dict) -> str:
    """'reached / requested' over the pruned weights (means), '-' without pruners."""
    weights = [w for w in row.get("weights", {}).values()]
    if not weights:
        return "-"
    got = sum(w["reached"] for w in weights) / len(weights)
    asked = [w["requested"] for w in weights if w["requested"] is not None]
    return f"{got:.3f}/{sum(asked) / len(asked):.3f}" if asked else f"{got:.3f}/-"


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    names = [n for n in FLAGS.schedules if n in PUBLISHED] if FLAGS.published else FLAGS.schedules
    rows = {}
    for name in names:
        rows[name] = one(name)
        print(f"DONE {name}: {json.dumps(rows[name])}", flush=True)
    print("\nDistiller schedules on digits (16x16)")
    print(f"{'schedule':<40}{'net':<23}{'ep':>3} {'outcome':<8}{'sparsity':>12}{'gap':>8}{'FLOPs':>7}"
          f"{'params':>7}{'thin diff':>10}{'before FT':>10}{'after FT':>10}{'int8':>6}{'ONNX':>6}")
    for name, row in rows.items():
        if row["outcome"] != "ran":
            print(f"{name:<40}{row['net']:<23}{fmt(row['epochs'], 'd'):>3} {row['outcome']:<8}{row['error']}")
            continue
        print(f"{name:<40}{row['net']:<23}{row['epochs']:>3} {'ran':<8}{sparsity(row):>12}"
              f"{fmt(row['worst_gap'], '.4f'):>8}{row['flops_ratio']:>7.3f}{row['params_ratio']:>7.3f}"
              f"{fmt(row['thinning_max_abs_diff'], '.1e'):>10}{fmt(row['before_ft'], '.4f'):>10}"
              f"{row['after_ft']:>10.4f}{str(row['int8_written']):>6}{str(row['onnx_parity_ok']):>6}")
    print(json.dumps({"runs": rows}))


if __name__ == "__main__":
    app.run(main)
