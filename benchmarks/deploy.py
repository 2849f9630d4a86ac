"""Compose and deploy on ResNet-20 / digits: chn-pruned-rmt (uniform, ``--preserve`` of the
FLOPs) -> uniform-tf (int8 QAT warm-started from the thinned model, distilled from the
original full model), every result exported to ExecuTorch (XNNPACK) and ONNX and checked in
its runtime, then every file timed against the ORIGINAL model in eager PyTorch fp32 and every
.pte / .onnx file also against the original model's file in the same runtime (original
``pte_fp32`` for .pte files, original ``onnx_fp32`` for .onnx files), so runtime gains and
compression gains can be told apart.

Runs (``learners.launch.run``, in ``--outdir``): ``chn-pruned-rmt`` with
``--export_format=both``, then ``uniform-tf --enbl_warm_start --warm_start_path=<thinned>
--enbl_dst --export_format=both``; the original full model is exported the same way
(``deployment.pipeline``). Latency: ``deployment.runners.time_runners`` (interleaved rounds, the same
``--threads`` in torch, onnxruntime and ExecuTorch, the starting file rotated every round),
batch 1 and 64, all in this process.

Prints the chain, a table of every file (runtime, bytes, size ratio vs the original's state
dict, accuracy, parity, ms, speed-up vs eager fp32 original and, for .pte / .onnx files, vs the
original in the same runtime at each batch size), the goals, then, as the LAST line, one JSON
object:
{"chain": [...], "files": {name: {"path", "runtime", "bytes", "size_ratio", "accuracy",
 "parity_ok", "ms", "speedup", "same_runtime_baseline", "speedup_vs_same_runtime"}},
 "state_dict_bytes", "goals": {...}} ("same_runtime_baseline" and "speedup_vs_same_runtime" are
null for files that are neither .pte nor .onnx).

    python benchmarks/deploy.py [--preserve=0.5] [--ft_epochs_rat=0.5] [--qat_epochs_rat=0.5]
"""
from __future__ import annotations

import io
import json
import os

import torch
from absl import app, flags
from bench_common import learner_values

from deployment.formats import FORMATS, formats_for
from deployment.pipeline import deploy, eval_batches, result_key
from learners.launch import run
from nets.resnet_at_digits import Config, ModelHelper
from compression.artifacts import load_model, runtime_for
from deployment.runners import runner_for, time_runners

flags.DEFINE_string("model", "./models_eval/model.ckpt",
                    "pre-trained digits ResNet-20 artifact (trained by the first run if missing)")
flags.DEFINE_string("outdir", "./bench_deploy", "where the runs and the files go")
flags.DEFINE_float("preserve", 0.5, "fraction of the FLOPs chn-pruned-rmt keeps")
flags.DEFINE_float("ft_epochs_rat", 0.5, "--nb_epochs_rat of chn-pruned-rmt's fine-tuning")
flags.DEFINE_float("qat_epochs_rat", 0.5, "--nb_epochs_rat of uniform-tf's QAT")
flags.DEFINE_integer("threads", 2, "intra-op threads of every runtime")
flags.DEFINE_integer("repeats", 60, "timed calls per file and batch size (over 3 rounds)")
flags.DEFINE_list("batch_sizes", ["1", "64"], "batch sizes timed")
flags.DEFINE_integer("seed", 0, "--seed of the runs")
FLAGS = flags.FLAGS



def same_runtime_baseline(path: str) -> str | None:
    """The original model's file each runtime's files are also compared with (the float file
    of the format run by the same runtime; None for eager torch and the int8 program)."""
    names = {fmt.runtime: fmt.name for fmt in FORMATS.values()}
    name = names.get(runtime_for(path))
    return f"original {result_key(name, 'fp32')}" if name else None


def state_dict_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def runs() -> tuple[dict, dict]:
    out = os.path.abspath(FLAGS.outdir)
    cpr = learner_values(ModelHelper, FLAGS.model, os.path.join(out, "cpr"), FLAGS.seed,
                         FLAGS.ft_epochs_rat, {"cpr": ["save_path", "save_path_eval", "save_path_ws"]},
                         ["--learner=chn-pruned-rmt", "--cpr_prune_ratio_prtl=uniform",
                          f"--cpr_preserve_ratio={FLAGS.preserve}", "--export_format=both"])
    cpr_report = run(ModelHelper, cpr)
    uqtf = learner_values(ModelHelper, FLAGS.model, os.path.join(out, "uqtf"), FLAGS.seed,
                          FLAGS.qat_epochs_rat, {}, [
                              "--learner=uniform-tf", "--enbl_warm_start",
                              f"--warm_start_path={cpr['cpr_save_path_eval']}", "--enbl_dst",
                              "--export_format=both",
                              f"--uqtf_save_path={os.path.join(out, 'uqtf', 'ckpt', 'model.ckpt')}",
                              f"--uqtf_save_path_eval={os.path.join(out, 'uqtf', 'model.pte')}"])
    return cpr_report, run(ModelHelper, uqtf)


def main(argv: list) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    cpr, chain = runs()
    helper = ModelHelper(Config())
    original, _ = load_model(FLAGS.model)
    batches = eval_batches(helper)
    stem = os.path.join(os.path.abspath(FLAGS.outdir), "original", "model")
    full = deploy({"fp32": (original, stem)}, formats_for("both"), batches, batches[0][0][:2])
    files = {"eager fp32 original": {"path": FLAGS.model, "runtime": "torch",
                                     "accuracy": chain["accuracy"]["full"], "parity_ok": True}}
    files.update({f"original {k}": v for k, v in full.items()})
    files["thinned eager fp32"] = {"path": cpr["chain"][-1]["artifact"], "runtime": "torch",
                                   "accuracy": cpr["accuracy"]["compressed"], "parity_ok": True}
    files.update({f"thinned {k}": v for k, v in cpr["deploy"].items()})
    files.update({f"chain {k}": v for k, v in chain["deploy"].items() if k.endswith("int8")})
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    runners = {name: runner_for(f["path"], FLAGS.threads) for name, f in files.items()}
    ms = time_runners(runners, helper.input_shape, batch_sizes, FLAGS.threads,
                      repeats=FLAGS.repeats)
    base_ms, base_bytes = ms["eager fp32 original"], state_dict_bytes(original)
    for name, entry in files.items():
        entry.update(bytes=os.path.getsize(entry["path"]), ms=ms[name],
                     speedup={k: base_ms[k] / v for k, v in ms[name].items()})
        entry["size_ratio"] = base_bytes / entry["bytes"]
        baseline = same_runtime_baseline(entry["path"])
        entry["same_runtime_baseline"] = baseline if baseline in ms else None
        entry["speedup_vs_same_runtime"] = ({k: ms[baseline][k] / v for k, v in ms[name].items()}
                                            if baseline in ms else None)

    print(f"\nchain ({helper.model_name} @ {helper.dataset_name}):")
    for i, stage in enumerate(chain["chain"]):
        print(f"  {i}. {stage['learner']:<16} accuracy {stage['accuracy']:.4f}  flops "
              f"{stage['flops']:>11,}  params {stage['params']:>8,}  bytes {stage['bytes']:>10,}")
    print(f"\nfp32 original state dict: {base_bytes:,} bytes | {FLAGS.threads} threads | x = eager "
          "fp32 original ms / file ms | rt x = the original's file in the same runtime (pte_fp32, "
          "onnx_fp32) ms / file ms")
    head = "".join(f"{f'bs{b} ms':>10}{'x':>7}{'rt x':>7}" for b in batch_sizes)
    print(f"{'file':<26}{'runtime':>12}{'bytes':>10}{'smaller':>8}{'acc':>8}{'parity':>7}{head}")
    for name, e in files.items():
        same = e["speedup_vs_same_runtime"]
        cells = "".join(f"{e['ms'][f'bs{b}']:>10.3f}{e['speedup'][f'bs{b}']:>7.2f}"
                        + (f"{same[f'bs{b}']:>7.2f}" if same else f"{'-':>7}")
                        for b in batch_sizes)
        print(f"{name:<26}{e['runtime']:>12}{e['bytes']:>10,}{e['size_ratio']:>8.2f}"
              f"{e['accuracy']:>8.4f}{'ok' if e['parity_ok'] else 'FAIL':>7}{cells}")
    chained = {k: v for k, v in files.items() if k.startswith("chain")}
    same_runtime = [f["speedup_vs_same_runtime"] for f in chained.values() if f["speedup_vs_same_runtime"]]
    drop = 100 * (chain["accuracy"]["full"] - chain["accuracy"]["compressed"])
    goals = {
        "chain_drop_le_1.5_points": drop <= 1.5,
        "all_parity_ok": all(f["parity_ok"] for f in files.values()),
        "best_chained_bs1_ge_10x": max(f["speedup"]["bs1"] for f in chained.values()) >= 10
        if "bs1" in base_ms else None,
        "chained_int8_pte_bs1_ge_5x": chained["chain pte_int8"]["speedup"].get("bs1", 0) >= 5,
        "chained_ge_6x_smaller": max(f["size_ratio"] for f in chained.values()) >= 6,
        # against the original model's file in the chained file's own runtime
        "best_chained_bs1_faster_than_original_same_runtime":
        max(s["bs1"] for s in same_runtime) > 1 if "bs1" in base_ms and same_runtime else None,
        "chained_int8_pte_bs1_faster_than_original_pte":
        chained["chain pte_int8"]["speedup_vs_same_runtime"].get("bs1", 0) > 1,
    }
    print(f"\nchain accuracy: full {chain['accuracy']['full']:.4f} -> "
          f"{chain['accuracy']['compressed']:.4f} ({drop:+.2f} points drop)")
    print("goals: " + ", ".join(f"{k}={v}" for k, v in goals.items()))
    print(json.dumps({"chain": chain["chain"], "files": files, "state_dict_bytes": base_bytes,
                      "threads": FLAGS.threads, "goals": goals}))


if __name__ == "__main__":
    app.run(main)
