"""Deployment files of a saved result, each checked in its own runtime; their latency.

    python -m tools.deploy --model=models_cpr_eval/model.ckpt --helper=resnet_at_digits
        [--export_format=both] [--out=<stem>] [--latency --reference=models_eval/model.ckpt]
    python -m tools.deploy --model=models_uqtf_eval/model.pt2 --helper=resnet_at_digits
    python -m tools.deploy --model=models_eval/model.ckpt --helper=resnet_at_digits \\
        --check=models_eval/model.onnx

``--model`` is what a learner saved: a model artifact (``.ckpt``: full precision, thinned,
sparse, weight-quantized), exported as float (``fp32``), or uniform-tf's int8 PyTorch model
(``.pt2``), exported as int8 (XNNPACK int8 kernels in the ``.pte``, QDQ in the ``.onnx``).
Files go to ``<out><suffix>`` (``--out`` defaults to the model's path without extension), and
each is run on the helper's eval set in its runtime (ExecuTorch's Python runtime,
onnxruntime) against the PyTorch model: fp32 max |diff| <= ``--atol`` (1e-4), int8 accuracy
within ``--int8_max_drop`` (0.5) points of the int8 PyTorch model. Exit status 1 when a file
fails its check.

``--check=<file>[,<file>]`` exports nothing: it checks existing files against ``--model`` and
refuses (exit status 2) one that is not an export of that model (other input shape, other
outputs, values off).

``--latency`` times ``--reference`` (default ``--model``; e.g. the original full model) in
eager PyTorch against every file, batch sizes ``--batch_sizes``, ``--threads`` threads in every
runtime, interleaved rounds; speed-ups are reference ms / file ms. The last line printed is
one JSON object of all figures.
"""
from __future__ import annotations

import json
import os
import sys

from absl import flags

from compression.artifacts import file_of, model_suffixes
from deployment.formats import export_choices, formats_for
from deployment.pipeline import deploy, eval_batches
from deployment.verify import ATOL, INT8_MAX_DROP, verify_artifact
from tools.common import (ToolError, base_from_flags, define_input_flags, helper_from_flags,
                          load_artifact, run_tool)
from deployment.runners import RunnerError, runner_for, time_runners

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "a model artifact (.ckpt, exported as fp32) or uniform-tf's "
                                   "int8 PyTorch model (.pt2, exported as int8)")
flags.DEFINE_string("export_format", "both", "files to write: pte (ExecuTorch/XNNPACK), onnx "
                    "(onnxruntime), both, none, or a format added with "
                    "deployment.formats.register_format")
flags.DEFINE_string("out", "", "path stem of the files (default: --model without extension)")
flags.DEFINE_list("check", [], "check these existing files against --model (nothing exported)")
flags.DEFINE_integer("eval_batches", 0, "eval-set batches of the checks (0: all)")
flags.DEFINE_float("atol", ATOL, "fp32 files: largest max |runtime - torch| accepted")
flags.DEFINE_float("int8_max_drop", INT8_MAX_DROP, "int8 files: largest accuracy difference "
                                                   "from the int8 PyTorch model, in points")
flags.DEFINE_bool("latency", False, "time --reference in eager PyTorch against every file")
flags.DEFINE_string("reference", "", "--latency: the model artifact timed eagerly "
                                     "(default: --model)")
flags.DEFINE_list("batch_sizes", ["1", "64"], "--latency: batch sizes")
flags.DEFINE_integer("threads", 2, "--latency: intra-op threads in every runtime")
flags.DEFINE_integer("repeats", 30, "--latency: timed calls per batch size and file")
define_input_flags(FLAGS)
flags.mark_flag_as_required("model")


def load_source(path: str, helper):
    """``(model, kind)`` of ``--model`` (``helper``: see ``tools.common.load_artifact``)."""
    row = file_of(path)
    if row is not None and row.role == "deployment" and row.name != "pt2":
        raise ToolError(f"--model={path} is a deployment file; pass the model it was exported "
                        f"from as --model and the file as --check={path}")
    if row is not None and row.name == "pt2":
        if not os.path.isfile(path):
            raise ToolError(f"no such file: {path}")
        from deployment.pte import load_int8_program

        return load_int8_program(path), "int8"
    model, _ = load_artifact(path, helper, base_from_flags(FLAGS.flag_values_dict()))
    return model, "fp32"


def latency(files: dict, shape, helper) -> dict:
    reference = FLAGS.reference or FLAGS.model
    if os.path.splitext(reference)[1].lower() not in model_suffixes():
        raise ToolError(f"--reference={reference}: expected a model artifact (.ckpt) run eagerly")
    try:
        batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    except ValueError:
        raise ToolError(f"--batch_sizes: expected integers, got {','.join(FLAGS.batch_sizes)}") from None
    runners = {"eager fp32 reference": runner_for(reference, FLAGS.threads,
                                                  load=lambda p: load_artifact(
                                                      p, helper, base_from_flags(FLAGS.flag_values_dict())))}
    runners.update({name: runner_for(path, FLAGS.threads) for name, path in files.items()})
    ms = time_runners(runners, shape, batch_sizes, FLAGS.threads, repeats=FLAGS.repeats)
    base = ms["eager fp32 reference"]
    print(f"latency: median ms per batch, {FLAGS.threads} threads (speed-up vs {reference} eager)")
    print(f"{'':<28}" + "".join(f"{f'bs{b} ms':>12}{'x':>8}" for b in batch_sizes))
    for name, times in ms.items():
        print(f"{name:<28}" + "".join(f"{times[f'bs{b}']:>12.3f}{base[f'bs{b}'] / times[f'bs{b}']:>8.2f}"
                                      for b in batch_sizes))
    return {"reference": reference, "threads": FLAGS.threads, "ms": ms,
            "speedup": {n: {k: base[k] / v for k, v in t.items()} for n, t in ms.items()}}


def main() -> None:
    values = FLAGS.flag_values_dict()
    helper = helper_from_flags(values)
    if helper is None:
        raise ToolError("--helper is required: files are checked on its eval set")
    choices = [c for c in export_choices() if c != "auto"]   # after --helper: it may add formats
    if FLAGS.export_format not in choices:
        raise ToolError(f"--export_format={FLAGS.export_format}: unknown export format; valid: "
                        f"{', '.join(choices)}")
    model, kind = load_source(FLAGS.model, helper)
    batches = eval_batches(helper, FLAGS.eval_batches)
    shape = tuple(batches[0][0].shape[1:])
    if FLAGS.check:
        results = {path: verify_artifact(path, model, batches, kind, FLAGS.atol, FLAGS.int8_max_drop,
                                         nb_threads=FLAGS.threads)
                   for path in FLAGS.check}
    else:
        stem = FLAGS.out or os.path.splitext(FLAGS.model)[0]
        formats = formats_for(FLAGS.export_format, (kind,))
        example = batches[0][0][:2]
        results = {r["path"]: r for r in deploy({kind: (model, stem)}, formats, batches,
                                                  example).values()}
    print(f"{'file':<44}{'runtime':>13}{'bytes':>11}{'max|diff|':>11}{'accuracy':>10}{'torch':>8}"
          f"{'ok':>5}")
    for path, r in results.items():
        print(f"{path:<44}{r['runtime']:>13}{os.path.getsize(path):>11,}{r['max_abs_diff']:>11.2e}"
              f"{r['accuracy']:>10.4f}{r['accuracy_torch']:>8.4f}{'yes' if r['parity_ok'] else 'NO':>5}")
    output = {"model": FLAGS.model, "kind": kind, "files": results}
    if FLAGS.latency and results:
        output["latency"] = latency({os.path.basename(p): p for p in results}, shape, helper)
    print(json.dumps(output))
    failed = [p for p, r in results.items() if not r["parity_ok"]]
    if failed:
        print(f"error: {len(failed)} file(s) do not reproduce the model: {', '.join(failed)}",
              file=sys.stderr, flush=True)
        raise SystemExit(1)


def cli() -> None:
    """``pocketflow-deploy``: the same as ``python -m tools.deploy``."""
    run_tool(__name__, main, errors=(RunnerError,))


if __name__ == "__main__":
    cli()
