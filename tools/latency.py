"""Latency of model A vs model B, each a model artifact, an .onnx or a .pte file.

    python -m tools.latency --model_a=models_eval/model.ckpt --model_b=model.onnx
        [--input_shape=1,8,8 | --helper=resnet_at_digits [--helper_config=image_size=8]]
        [--batch_sizes=1,64] [--threads=2] [--warmup=5] [--repeats=20] [--rounds=3]
        [--device=cpu]

Runtimes by extension (``deployment.runners.runner_for``): ``.ckpt`` / ``.pt`` / ``.pth``
model artifacts run eagerly in torch (eval mode, ``inference_mode``), ``.onnx`` in
onnxruntime (CPU provider, ``intra_op_num_threads = --threads``), ``.pte`` in ExecuTorch's
runtime (``deployment.pte.PteModel``; needs ``pip install executorch``). ``--device=cuda``
is for two model artifacts only. The input shape is ``--input_shape``, else the helper's,
else the one the files record (an artifact's meta, an .onnx graph, a .pte plan); shapes that
disagree are refused.

For each batch size, random inputs, ``--warmup`` untimed calls, then the median wall time
of ``--repeats`` calls, split over ``--rounds`` rounds that alternate A and B (B first in every
other round: ``utils.model_stats.time_side_by_side``), so that a slow spell of the machine hits
both alike. Prints a table
of the medians (ms per batch) and the ratio B/A (< 1: B is faster), then, as the LAST line,
one JSON object: ``{"a": {"path", "runtime", "device", "ms": {"bs1": ..}}, "b": {..},
"ratio_b_over_a": {"bs1": ..}, "input_shape", "batch_sizes", "threads", "warmup", "repeats",
"rounds", "device"}``.
"""
from __future__ import annotations

import json

from absl import flags

from tools.common import (ToolError, base_from_flags, define_input_flags, helper_from_flags,
                          load_artifact, parse_shape, run_tool)
from deployment.runners import RunnerError, compare_latency, runner_for

FLAGS = flags.FLAGS
flags.DEFINE_string("model_a", None, "model A: a model artifact (.ckpt), an .onnx or a .pte file")
flags.DEFINE_string("model_b", None, "model B: a model artifact (.ckpt), an .onnx or a .pte file")
flags.DEFINE_list("batch_sizes", ["1", "64"], "batch sizes timed")
flags.DEFINE_integer("threads", 2, "intra-op threads (torch, onnxruntime, the ExecuTorch pool)")
flags.DEFINE_integer("warmup", 5, "untimed calls per batch size and model")
flags.DEFINE_integer("repeats", 20, "timed calls per batch size and model (the median is reported)")
flags.DEFINE_integer("rounds", 3, "rounds the repeats are split into, A and B alternating")
flags.DEFINE_enum("device", "cpu", ["cpu", "cuda"], "cuda: model artifacts only")
define_input_flags(FLAGS)
flags.mark_flags_as_required(["model_a", "model_b"])


def input_shape_of(runners: dict, values: dict) -> tuple:
    if values["input_shape"] and values["helper"]:
        raise ToolError("give --helper or --input_shape, not both (the helper sets the shape)")
    helper = helper_from_flags(values)
    recorded = {key: r.input_shape for key, r in runners.items() if r.input_shape is not None}
    if values["input_shape"]:
        return parse_shape(values["input_shape"])
    shape = tuple(helper.input_shape) if helper is not None else next(iter(recorded.values()), None)
    if shape is None:
        raise ToolError("neither model records its input shape: pass --input_shape or --helper")
    for key, own in recorded.items():
        if tuple(own) != tuple(shape):
            raise ToolError(f"{runners[key].path} takes inputs of shape {list(own)}, not {list(shape)}; "
                            "pass the matching --input_shape / --helper_config")
    return shape


def main() -> None:
    values = FLAGS.flag_values_dict()
    try:
        batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    except ValueError:
        batch_sizes = []
    if not batch_sizes or min(batch_sizes) <= 0:
        raise ToolError(f"--batch_sizes: expected positive integers, got {','.join(FLAGS.batch_sizes)}")
    if FLAGS.threads <= 0 or FLAGS.repeats <= 0 or FLAGS.rounds <= 0 or FLAGS.warmup < 0:
        raise ToolError("--threads, --repeats and --rounds must be positive, --warmup >= 0")
    helper = helper_from_flags(values)   # first: its module registers the user's nets
    runners = {key: runner_for(path, FLAGS.threads, FLAGS.device,
                               load=lambda p: load_artifact(p, helper, base_from_flags(values)))
               for key, path in (("a", FLAGS.model_a), ("b", FLAGS.model_b))}
    shape = input_shape_of(runners, values)
    result = compare_latency(runners["a"], runners["b"], shape, batch_sizes, FLAGS.threads,
                             FLAGS.warmup, FLAGS.repeats, FLAGS.device, FLAGS.rounds)
    for key in ("a", "b"):
        print(f"{key.upper()}: {runners[key].runtime:<12} {runners[key].path}")
    print(f"input [batch, {', '.join(map(str, shape))}] | {FLAGS.threads} threads | {FLAGS.device} | "
          f"median ms per batch of {FLAGS.repeats} calls in {FLAGS.rounds} alternating rounds")
    print(f"{'batch':>6} {'A ms':>10} {'B ms':>10} {'B/A':>7}")
    for batch in batch_sizes:
        key = f"bs{batch}"
        print(f"{batch:>6} {result['a'][key]:>10.3f} {result['b'][key]:>10.3f} "
              f"{result['ratio_b_over_a'][key]:>7.3f}")
    print("(B/A < 1: B is faster)")
    print(json.dumps({**result, "a": {**runners["a"].describe(), "ms": result["a"]},
                      "b": {**runners["b"].describe(), "ms": result["b"]}}))


def cli() -> None:
    """``pocketflow-latency``: the same as ``python -m tools.latency``."""
    run_tool(__name__, main, errors=(RunnerError,))


if __name__ == "__main__":
    cli()
