"""The example YAML policies (``examples/policies/resnet20_digits_*.yaml``) on ResNet-20 /
digits, all from the same pre-trained model: one ``--learner=schedule --compress=<policy>``
run each (``--export_format=onnx``: every result is exported and checked in onnxruntime).

Prints a table (accuracy before / after the policy's fine-tuning, FLOPs and params kept,
sparsity of the pruned weights, bytes on disk of the smallest file: sparse COO/CSR, bit-packed
or the artifact, ONNX parity), then, as the LAST line, one JSON object:
{"full", "runs": {policy: {...}}, "goals": {"agp_exact", "filters_thinned_exact",
 "quantized_reported"}}.

    python benchmarks/schedule_policies.py [--policies=agp,filters,dorefa_w4a4,pact_w4a4]
"""
from __future__ import annotations

import json
import os

import torch
from absl import app, flags
from bench_common import fmt, learner_values

from learners.launch import run
from nets.resnet_at_digits import ModelHelper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("model", "./models_eval/model.ckpt",
                    "pre-trained digits ResNet-20 artifact (trained by the first run if missing)")
flags.DEFINE_string("outdir", "./bench_schedule", "where the runs go")
flags.DEFINE_list("policies", ["agp", "filters", "dorefa_w4a4", "pact_w4a4"],
                  "examples/policies/resnet20_digits_<name>.yaml to run")
flags.DEFINE_integer("seed", 0, "--seed of the runs")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS


def one(name: str) -> dict:
    policy = os.path.join(REPO, "examples", "policies", f"resnet20_digits_{name}.yaml")
    out = os.path.join(os.path.abspath(FLAGS.outdir), name)
    report = run(ModelHelper, learner_values(
        ModelHelper, FLAGS.model, out, FLAGS.seed, 1.0, {"sch": ("save_path", "save_path_eval")},
        ["--learner=schedule", f"--compress={policy}", "--export_format=onnx"]))
    sparsity = report.get("sparsity") or {}
    thinning = report.get("thinning") or {}
    onnx = report.get("onnx") or {}
    return {"before_ft": report["accuracy"].get("compressed_before_finetune"),
            "after_ft": report["accuracy"]["compressed"], "full": report["accuracy"]["full"],
            "flops_ratio": report["flops"]["compressed"] / report["flops"]["full"],
            "params_ratio": report["params"]["compressed"] / report["params"]["full"],
            "sparsity": sparsity.get("sparsity"),
            "bytes": report["bytes_on_disk"]["compressed"], "full_bytes": report["bytes_on_disk"]["full"],
            "exact_zeros": all(v["zeros"] == v["target_zeros"] for v in sparsity.get("layers", {}).values()
                               if v.get("target_zeros") is not None) if sparsity else None,
            "thinning_max_abs_diff": thinning.get("max_abs_diff"),
            "quantization": report.get("quantization"),
            "onnx_parity_ok": onnx.get("parity_ok"), "onnx_max_abs_diff": onnx.get("max_abs_diff")}


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    rows = {name: one(name) for name in FLAGS.policies}
    full = next(iter(rows.values()))["full"]
    print(f"\nResNet-20 / digits, full model {full:.4f}")
    print(f"{'policy':<14}{'before FT':>10}{'after FT':>10}{'drop pt':>9}{'FLOPs':>8}{'params':>8}"
          f"{'sparsity':>10}{'bytes':>10}{'ONNX ok':>9}")
    for name, row in rows.items():
        print(f"{name:<14}{fmt(row['before_ft'], '.4f'):>10}{row['after_ft']:>10.4f}"
              f"{100 * (full - row['after_ft']):>9.2f}{row['flops_ratio']:>8.3f}"
              f"{row['params_ratio']:>8.3f}{fmt(row['sparsity'], '.4f'):>10}{row['bytes']:>10,}"
              f"{str(row['onnx_parity_ok']):>9}")
    filters = rows.get("filters")
    goals = {"agp_exact": rows["agp"]["exact_zeros"] if "agp" in rows else None,
             "filters_thinned_exact": None if filters is None else (
                 filters["thinning_max_abs_diff"] <= 1e-5 and filters["params_ratio"] < 1.0),
             "quantized_reported": all(rows[n]["after_ft"] is not None for n in rows if "w4a4" in n)}
    print(json.dumps({"full": full, "runs": rows, "goals": goals}))


if __name__ == "__main__":
    app.run(main)
