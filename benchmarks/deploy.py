"""Compose and deploy on ResNet-20 / digits: chn-pruned-rmt (uniform, ``--preserve`` of the
FLOPs) -> uniform-tf (int8 QAT warm-started from the thinned model, distilled from the
original full model), every result exported to ExecuTorch (XNNPACK) and ONNX and checked in
its runtime, then every file timed against the ORIGINAL model in eager PyTorch fp32.

Runs (``learners.launch.run``, in ``--outdir``): ``chn-pruned-rmt`` with
``--export_format=both``, then ``uniform-tf --enbl_warm_start --warm_start_path=<thinned>
--enbl_dst --export_format=both``; the original full model is exported the same way
(``deployment.pipeline``). Latency: ``utils.model_stats.time_runners`` (interleaved rounds, the same
``--threads`` in torch, onnxruntime and ExecuTorch), batch 1 and 64, all in this process.

Prints the chain, a table of every file (runtime, bytes, size ratio vs the original's state
dict, accuracy, parity, ms and speed-up vs eager fp32 original at each batch size), the goals,
then, as the LAST line, one JSON object:
{"chain": [...], "files": {name: {"path", "runtime", "bytes", "size_ratio", "accuracy",
 "parity_ok", "ms", "speedup"}}, "state_dict_bytes", "goals": {...}}

    python benchmarks/deploy.py [--preserve=0.5] [--ft_epochs_rat=0.5] [--qat_epochs_rat=0.5]
"""
from __future__ import annotations

import io
import json
import os

import torch
from absl import app, flags
from bench_common import learner_values

from deployment.formats import formats_for
from deployment.pipeline import deploy, eval_batches
from learners.launch import run
from nets.resnet_at_digits import Config, ModelHelper
from utils.model_io import load_model
from utils.model_stats import runner_for, time_runners

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

    print(f"\nchain ({helper.model_name} @ {helper.dataset_name}):")
    for i, stage in enumerate(chain["chain"]):
        print(f"  {i}. {stage['learner']:<16} accuracy {stage['accuracy']:.4f}  flops "
              f"{stage['flops']:>11,}  params {stage['params']:>8,}  bytes {stage['bytes']:>10,}")
    print(f"\nfp32 original state dict: {base_bytes:,} bytes | {FLAGS.threads} threads | speed-up "
          "= eager fp32 original ms / file ms")
    head = "".join(f"{f'bs{b} ms':>10}{'x':>7}" for b in batch_sizes)
    print(f"{'file':<26}{'runtime':>12}{'bytes':>10}{'smaller':>8}{'acc':>8}{'parity':>7}{head}")
    for name, e in files.items():
        cells = "".join(f"{e['ms'][f'bs{b}']:>10.3f}{e['speedup'][f'bs{b}']:>7.2f}"
                        for b in batch_sizes)
        print(f"{name:<26}{e['runtime']:>12}{e['bytes']:>10,}{e['size_ratio']:>8.2f}"
              f"{e['accuracy']:>8.4f}{'ok' if e['parity_ok'] else 'FAIL':>7}{cells}")
    chained = {k: v for k, v in files.items() if k.startswith("chain")}
    drop = 100 * (chain["accuracy"]["full"] - chain["accuracy"]["compressed"])
    goals = {
        "chain_drop_le_1.5_points": drop <= 1.5,
        "all_parity_ok": all(f["parity_ok"] for f in files.values()),
        "best_chained_bs1_ge_10x": max(f["speedup"]["bs1"] for f in chained.values()) >= 10
        if "bs1" in base_ms else None,
        "chained_int8_pte_bs1_ge_5x": chained["chain pte_int8"]["speedup"].get("bs1", 0) >= 5,
        "chained_ge_6x_smaller": max(f["size_ratio"] for f in chained.values()) >= 6,
    }
    print(f"\nchain accuracy: full {chain['accuracy']['full']:.4f} -> "
          f"{chain['accuracy']['compressed']:.4f} ({drop:+.2f} points drop)")
    print("goals: " + ", ".join(f"{k}={v}" for k, v in goals.items()))
    print(json.dumps({"chain": chain["chain"], "files": files, "state_dict_bytes": base_bytes,
                      "threads": FLAGS.threads, "goals": goals}))


if __name__ == "__main__":
    app.run(main)
