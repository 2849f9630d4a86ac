"""Export a saved model artifact to ONNX and check it in onnxruntime against the torch model.

    python -m tools.export_onnx --model=models_eval/model.ckpt [--out=model.onnx]
        [--helper=resnet_at_digits [--helper_config=image_size=8] | --input_shape=1,8,8]

Any artifact a learner saves exports: full precision, thinned (``GatherConv2d`` gathers become
ONNX ``Gather``), weight-sparse or weight-quantized (the weights are plain floats). An artifact
whose spec has an ``act_quant`` transform (activation fake-quantizers) is refused: those have
no ONNX export yet. The file goes to ``--out`` (default: ``<model without extension>.onnx``),
written atomically, with a dynamic batch dimension.

Checks, both against a float32 CPU copy of the torch model:
- ``--nb_random`` random normal inputs (seed ``--seed``): max |onnxruntime - torch|;
- with ``--helper``: the helper's eval set (``--eval_batches`` batches of its
  ``batch_size_eval``, 0: all): max |onnxruntime - torch| and the accuracy of each.
With ``--int8`` (needs ``--helper``) the float ONNX is also statically quantized to an int8
QDQ model (``deployment.onnx_int8``: int8 per-channel weights, uint8 activations calibrated on
``--calib_batches`` batches of the helper's held-out training split) written to
``<out without extension>.int8.onnx`` and evaluated on the eval set: its accuracy against the
float torch model's and the fraction of identical top-1 predictions.
The last line printed is one JSON object of these figures. Exit status 1 when a max abs diff
exceeds ``--atol``, the float accuracies differ, or the int8 accuracy drops by more than
``--int8_max_drop`` points; 2 on bad input.
"""
from __future__ import annotations

import json
import os
import sys

import torch
from absl import flags

from compression.artifacts import path_of
from tools.common import (base_from_flags, check_writable, define_input_flags, helper_from_flags,
                          load_artifact, resolve_input_shape, run_tool)
from utils.data_loading import make_eval_loader
from deployment.onnx_export import NotExportable, check_exportable, compare_outputs, export_onnx, onnx_session
from deployment.onnx_int8 import quantize_qdq

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "model artifact (a learner's --*_save_path_eval)")
flags.DEFINE_string("out", "", "the .onnx file (default: <model without extension>.onnx)")
flags.DEFINE_integer("opset", 17, "ONNX opset version")
flags.DEFINE_integer("nb_random", 8, "random inputs of the first check")
flags.DEFINE_integer("seed", 0, "seed of the random inputs")
flags.DEFINE_integer("eval_batches", 0, "eval-set batches of the second check (0: all)")
flags.DEFINE_float("atol", 1e-4, "largest max |onnxruntime - torch| accepted")
flags.DEFINE_integer("threads", 0, "onnxruntime intra-op threads (0: its default)")
flags.DEFINE_bool("int8", False, "also write and check an int8 QDQ ONNX model (needs --helper)")
flags.DEFINE_integer("calib_batches", 4, "--int8: calibration batches of the held-out split")
flags.DEFINE_float("int8_max_drop", 2.0, "--int8: largest accuracy drop accepted, in points")
define_input_flags(FLAGS)
flags.mark_flag_as_required("model")


def main() -> None:
    values = FLAGS.flag_values_dict()
    out = FLAGS.out or path_of(os.path.splitext(FLAGS.model)[0], "onnx")
    if os.path.abspath(out) == os.path.abspath(FLAGS.model):
        raise NotExportable(f"--out={out} would overwrite the model artifact")
    check_writable(out)
    helper = helper_from_flags(values)   # first: its module registers the user's nets
    model, obj = load_artifact(FLAGS.model, helper, base_from_flags(values))
    check_exportable(obj.get("spec"))
    shape = resolve_input_shape(FLAGS.input_shape, helper, obj.get("meta"), FLAGS.model)
    export_onnx(model, shape, out, opset=FLAGS.opset)
    print(f"wrote {out} ({os.path.getsize(out):,} bytes, input [batch, {', '.join(map(str, shape))}])")
    session = onnx_session(out, FLAGS.threads or None)
    gen = torch.Generator().manual_seed(FLAGS.seed)
    random = compare_outputs(session, model, [(torch.randn(FLAGS.nb_random, *shape, generator=gen), None)])
    print(f"random inputs ({random['nb_samples']}): max |onnxruntime - torch| = {random['max_abs_diff']:.3e}")
    result = {"onnx": out, "bytes": os.path.getsize(out), "input_shape": list(shape),
              "random": {k: random[k] for k in ("max_abs_diff", "nb_samples")}, "eval": None}
    failures = []
    if random["max_abs_diff"] > FLAGS.atol:
        failures.append(f"random inputs differ by {random['max_abs_diff']:.3e} > --atol={FLAGS.atol:g}")
    if helper is None:
        print("eval-set check skipped: pass --helper (and --helper_config) to compare on real inputs")
    else:
        loader = make_eval_loader(helper.build_dataset_eval(), helper.cfg.batch_size_eval)
        real = compare_outputs(session, model, loader, FLAGS.eval_batches)
        result["eval"] = real
        print(f"eval set ({real['nb_samples']} samples): max |onnxruntime - torch| = "
              f"{real['max_abs_diff']:.3e} | accuracy torch = {real['accuracy_torch']:.4f}, "
              f"onnxruntime = {real['accuracy_onnx']:.4f}")
        if real["max_abs_diff"] > FLAGS.atol:
            failures.append(f"eval inputs differ by {real['max_abs_diff']:.3e} > --atol={FLAGS.atol:g}")
        if real["accuracy_torch"] != real["accuracy_onnx"]:
            failures.append("the accuracies differ")
    if FLAGS.int8:
        result["int8"] = _int8(out, model, helper, failures)
    result["ok"] = not failures
    print(json.dumps(result))
    if failures:
        print(f"error: ONNX check failed: {'; '.join(failures)}", file=sys.stderr, flush=True)
        raise SystemExit(1)


def _int8(out: str, model, helper, failures: list) -> dict:
    """The int8 QDQ model beside ``out``, evaluated against the float torch model."""
    if helper is None:
        raise NotExportable("--int8 needs --helper: its held-out split calibrates the ranges")
    path = path_of(os.path.splitext(out)[0], "onnx_int8")
    calibration = [inputs for inputs, _ in make_eval_loader(helper.build_dataset_val(),
                                                            helper.cfg.batch_size)]
    quantize_qdq(out, path, calibration[:max(1, FLAGS.calib_batches)])
    loader = make_eval_loader(helper.build_dataset_eval(), helper.cfg.batch_size_eval)
    int8 = compare_outputs(onnx_session(path, FLAGS.threads or None), model, loader,
                           FLAGS.eval_batches)
    drop = 100 * (int8["accuracy_torch"] - int8["accuracy_onnx"])
    print(f"int8 QDQ {path} ({os.path.getsize(path):,} bytes): accuracy {int8['accuracy_onnx']:.4f} "
          f"vs float torch {int8['accuracy_torch']:.4f} ({drop:+.2f} points drop)")
    if drop > FLAGS.int8_max_drop:
        failures.append(f"int8 accuracy drops {drop:.2f} points > --int8_max_drop={FLAGS.int8_max_drop:g}")
    return {"path": path, "bytes": os.path.getsize(path), "accuracy": int8["accuracy_onnx"],
            "accuracy_torch": int8["accuracy_torch"], "drop_points": drop}


def cli() -> None:
    """``pocketflow-export-onnx``: the same as ``python -m tools.export_onnx``."""
    run_tool(__name__, main, errors=(NotExportable,))


if __name__ == "__main__":
    cli()
