"""Quantize a saved model to an integer-only program, check it, and export it as YAML.

    python -m tools.integer_only --model=models_eval/model.ckpt --helper=resnet_at_digits \
        --weight_bits=8 --act_bits=8 --nb_calib_batches=4 --yaml=model_int.yml --sparse=csr \
        [--helper_config=image_size=8] [--rounding=single|gemmlowp] [--eval_batches=0]

Steps (``compression.quantization.integer_only``): calibrate activation ranges on the first
``--nb_calib_batches`` batches (``--calib_batch_size`` images) of the helper's held-out training
split (``val``, never the test set), build the integer program (``--weight_bits`` per-channel
symmetric weights, ``--act_bits`` asymmetric activations, both in [2, 8]), then on the helper's
eval set (``--eval_batches`` batches of ``batch_size_eval``, 0: all) report the float model's,
the fake-quantized model's and the integer program's top-1 accuracy and the fraction of output
codes on which the integer program and the fake-quantized model agree within one LSB.
The program is written to ``--yaml`` (atomically; weights ``dense``, ``coo`` or ``csr``), read
back, and must give bit-identical codes on the first 64 eval images.

The helper is built with ``--helper_config``; when that does not set ``image_size`` and the
helper has that option, it is taken from the input shape the artifact records. The last line
printed is one JSON object: {"model", "yaml", "sparse", "yaml_bytes", "weight_bits", "act_bits",
"rounding", "nb_calib_samples", "nb_samples", "float_accuracy", "fake_accuracy",
"int_accuracy", "within_one_lsb", "exact", "max_diff", "nb_nodes", "yaml_roundtrip_identical",
"wall_s"}. Bad input (bits outside [2, 8], unwritable path, wrong kind of model file,
unsupported layer): one ``error: ...`` line on stderr, exit status 2; a YAML file that does not
reproduce the program: exit status 1.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time

import torch
from absl import flags

from compression.quantization.integer_only import (ROUNDINGS, IntegerOverflowError,
                                                   IntegerYamlError, UnsupportedOpError,
                                                   build_program, compare, export_yaml, load_yaml)
from compression.quantization.integer_only.yaml_io import LAYOUTS
from tools.common import (ToolError, base_from_flags, check_writable, define_input_flags,
                          load_artifact, make_helper, resolve_helper, resolve_input_shape,
                          run_tool)
from utils.data_loading import make_eval_loader

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "model artifact (a learner's --*_save_path_eval)")
flags.DEFINE_integer("weight_bits", 8, "weight bits (symmetric, per output channel), 2..8")
flags.DEFINE_integer("act_bits", 8, "activation bits (asymmetric, per tensor), 2..8")
flags.DEFINE_integer("nb_calib_batches", 4, "calibration batches of the held-out training split")
flags.DEFINE_integer("calib_batch_size", 32, "images per calibration batch")
flags.DEFINE_integer("eval_batches", 0, "eval-set batches compared (0: all)")
flags.DEFINE_string("yaml", None, "the YAML file to write")
flags.DEFINE_string("sparse", "dense", f"weight layout in the YAML: {', '.join(LAYOUTS)}")
flags.DEFINE_string("rounding", "single", f"requantization rounding: {', '.join(ROUNDINGS)}")
define_input_flags(FLAGS)
flags.mark_flag_as_required("model")
flags.mark_flag_as_required("yaml")


def check_values(values: dict) -> None:
    for name in ("weight_bits", "act_bits"):
        if not 2 <= values[name] <= 8:
            raise ToolError(f"--{name} must be in [2, 8], got {values[name]}")
    if values["nb_calib_batches"] < 1 or values["calib_batch_size"] < 1:
        raise ToolError("--nb_calib_batches and --calib_batch_size must be >= 1")
    if values["eval_batches"] < 0:
        raise ToolError(f"--eval_batches must be >= 0 (0: all), got {values['eval_batches']}")
    if values["sparse"] not in LAYOUTS:
        raise ToolError(f"--sparse must be one of {', '.join(LAYOUTS)}, got {values['sparse']!r}")
    if values["rounding"] not in ROUNDINGS:
        raise ToolError(f"--rounding must be one of {', '.join(ROUNDINGS)}, got {values['rounding']!r}")
    if not values["helper"]:
        raise ToolError("--helper is required: it provides the calibration and evaluation data")
    if values["input_shape"]:
        raise ToolError("--input_shape is not used: the helper's data sets the input shape")


def build_helper(values: dict, meta: dict):
    """The helper, ``image_size`` defaulting to the artifact's recorded (square) input size."""
    helper_cls = resolve_helper(values["helper"])
    settings = list(values["helper_config"] or [])
    recorded = meta.get("input_shape")
    fields = {f.name for f in dataclasses.fields(helper_cls.Config)}
    user_keys = {s.partition("=")[0].strip().lstrip("-") for s in settings}
    if ("image_size" in fields and "image_size" not in user_keys and recorded and len(recorded) == 3
            and recorded[1] == recorded[2]):
        settings.insert(0, f"image_size={int(recorded[2])}")
    return make_helper(helper_cls, settings)


def _images(loader, limit: int):
    for images, _ in itertools.islice(loader, limit or None):
        yield images


def main() -> None:
    start = time.perf_counter()
    values = FLAGS.flag_values_dict()
    check_values(values)
    check_writable(values["yaml"])
    resolve_helper(values["helper"])   # first: importing its module registers the user's nets
    model, obj = load_artifact(values["model"], base=base_from_flags(values))
    meta = obj.get("meta") or {}
    helper = build_helper(values, meta)
    resolve_input_shape(None, helper, meta, values["model"])
    calib = make_eval_loader(helper.build_dataset_val(), values["calib_batch_size"])
    program = build_program(model, _images(calib, values["nb_calib_batches"]), values["weight_bits"],
                            values["act_bits"], values["rounding"])
    nb_calib = min(len(calib.dataset), values["nb_calib_batches"] * values["calib_batch_size"])
    print(f"program: {len(program.nodes)} nodes, weights {values['weight_bits']} bits, activations "
          f"{values['act_bits']} bits, rounding {values['rounding']}, calibrated on {nb_calib} images")
    loader = make_eval_loader(helper.build_dataset_eval(), helper.cfg.batch_size_eval)
    report = compare(program, itertools.islice(loader, values["eval_batches"] or None), model)
    print(f"eval set ({report['nb_samples']} samples): accuracy float {report['float_accuracy']:.4f} | "
          f"fake-quant {report['fake_accuracy']:.4f} | integer {report['int_accuracy']:.4f}")
    print(f"integer vs fake-quant output codes: {100 * report['within_one_lsb']:.3f}% within one LSB, "
          f"{100 * report['exact']:.3f}% equal, max diff {report['max_diff']} "
          f"({report['nb_elements']} elements)")
    size = export_yaml(program, values["yaml"], values["sparse"])
    first = next(iter(loader))[0][:64].float()
    identical = torch.equal(load_yaml(values["yaml"])(first), program(first))
    print(f"wrote {values['yaml']} ({size:,} bytes, {values['sparse']} weights); read back: "
          f"{'bit-identical' if identical else 'DIFFERENT'} outputs")
    summary = {"model": values["model"], "yaml": values["yaml"], "sparse": values["sparse"],
               "yaml_bytes": size, "weight_bits": values["weight_bits"], "act_bits": values["act_bits"],
               "rounding": values["rounding"], "nb_calib_samples": nb_calib,
               **{k: report[k] for k in ("nb_samples", "float_accuracy", "fake_accuracy", "int_accuracy",
                                         "within_one_lsb", "exact", "max_diff")},
               "nb_nodes": len(program.nodes), "yaml_roundtrip_identical": identical,
               "wall_s": round(time.perf_counter() - start, 3)}
    print(json.dumps(summary))
    if not identical:
        print(f"error: {values['yaml']} does not reproduce the program's outputs", file=sys.stderr,
              flush=True)
        raise SystemExit(1)


def cli() -> None:
    """``pocketflow-integer-only``: the same as ``python -m tools.integer_only``."""
    run_tool(__name__, main, errors=(UnsupportedOpError, IntegerOverflowError, IntegerYamlError))


if __name__ == "__main__":
    cli()
