"""CPU latency of ResNet-20 (CIFAR, 32x32): int8 vs fp32 ExecuTorch (XNNPACK) programs and eager.

    python benchmarks/int8_latency.py [--threads=2] [--repeats=15] [--warmup=5] [--dynamic=True]

Builds ResNet-20 (3 channels, 10 classes, random weights), prepares it for int8 QAT with
``compression.quantization.int8_qat`` (XNNPACK quantizer: per-channel symmetric int8 weights, int8
activations), calibrates the observers on a few random batches (no training: latency does not
depend on the weights), converts it, and lowers both the int8 model and the fp32 model (BN in
eval mode) to ``.pte`` programs with the XNNPACK delegate (dynamic batch 1..64 unless
``--dynamic=False``, which writes one static program per batch size). At batch 64 and batch 1
it times, side by side in one process with ``--threads`` intra-op threads for PyTorch and for
ExecuTorch's thread pool: eager fp32 PyTorch (``inference_mode``), the fp32 ``.pte`` and the
int8 ``.pte`` run by ExecuTorch's Python runtime. After ``--warmup`` calls each, every repeat
times each variant for ~``--min_time_s`` in turn (the order rotates between repeats); the
table shows medians over ``--repeats``. The last line printed is one JSON object with the
figures; goal: int8 .pte >= 2.3x faster than the fp32 .pte at batch 64.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from typing import Callable, Dict

import torch
from absl import app, flags

from utils.malloc import tune_malloc
from compression.artifacts import path_of
from compression.quantization.int8_qat import convert_int8, output_scale, prepare_qat
from deployment.pte import PteModel, export_pte, set_runtime_threads
from nets.registry import create_net

FLAGS = flags.FLAGS
flags.DEFINE_integer("threads", 2, "intra-op threads (PyTorch and the ExecuTorch thread pool)")
flags.DEFINE_integer("repeats", 15, "timed repeats per variant (the median is reported)")
flags.DEFINE_integer("warmup", 5, "untimed calls per variant before timing")
flags.DEFINE_float("min_time_s", 0.2, "time one repeat of one variant for about this long")
flags.DEFINE_integer("calib_batches", 4, "random batches (of 64) to calibrate the observers")
flags.DEFINE_boolean("dynamic", True, "dynamic batch programs (1..64); else static per batch")
flags.DEFINE_string("out_dir", "", "where the .pte files go (default: a temporary directory)")
flags.DEFINE_integer("seed", 0, "random seed")

BATCHES = (64, 1)


def _time_ms(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) * 1e3 / calls


def measure(fns: Dict[str, Callable[[], object]]) -> Dict[str, float]:
    """Median ms per call of each function, timed in rotating order."""
    calls = {}
    for name, fn in fns.items():
        est = min(_time_ms(fn, 1) for _ in range(FLAGS.warmup))
        calls[name] = max(1, int(FLAGS.min_time_s * 1e3 / max(est, 1e-3)))
    names, samples = list(fns), {name: [] for name in fns}
    for r in range(FLAGS.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(_time_ms(fns[name], calls[name]))
    return {name: statistics.median(v) for name, v in samples.items()}


def cpu_info() -> str:
    """CPU model and the SIMD features that decide int8 speed (AVX2 madd vs VNNI)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        return "unknown"
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags_ = info.get("flags", "").split()
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags_]
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model "
            f"{info.get('model', '?')}; {' '.join(simd)})")


def main(argv) -> None:
    del argv
    tune_malloc()
    torch.set_num_threads(FLAGS.threads)
    set_runtime_threads(FLAGS.threads)
    torch.manual_seed(FLAGS.seed)
    out_dir = FLAGS.out_dir or tempfile.mkdtemp(prefix="int8_latency-")
    model = create_net("resnet20", num_classes=10, in_channels=3)
    example = torch.randn(64, 3, 32, 32)

    t0 = time.perf_counter()
    qat = prepare_qat(model, example)
    qat.calibrate(torch.randn(64, 3, 32, 32) for _ in range(FLAGS.calib_batches))
    qat.eval()
    int8 = convert_int8(qat)
    model.eval()
    t1 = time.perf_counter()
    programs, sizes = {}, {}
    for bs in BATCHES if not FLAGS.dynamic else (max(BATCHES),):
        for kind, net in (("fp32", model), ("int8", int8)):
            path = path_of(os.path.join(out_dir, f"resnet20_{kind}_b{bs}"), "pte")
            sizes[kind] = export_pte(net, example, path, quantized=kind == "int8", max_batch=bs,
                                     dynamic=FLAGS.dynamic)
            programs[(kind, bs)] = PteModel(path)
    t2 = time.perf_counter()
    print(f"prepare+calibrate+convert {t1 - t0:.1f} s, lowering {t2 - t1:.1f} s; "
          f".pte sizes: fp32 {sizes['fp32'] / 1e3:.0f} kB, int8 {sizes['int8'] / 1e3:.0f} kB "
          f"({sizes['fp32'] / sizes['int8']:.2f}x smaller); threads={FLAGS.threads}, "
          f"{'dynamic' if FLAGS.dynamic else 'static'} batch, files in {out_dir}\nCPU: {cpu_info()}")

    results = {}
    scale = output_scale(int8)
    for bs in BATCHES:
        x = torch.randn(bs, 3, 32, 32)
        key = max(BATCHES) if FLAGS.dynamic else bs
        pte32, pte8 = programs[("fp32", key)], programs[("int8", key)]
        with torch.inference_mode():
            eager = model(x)
            ref8 = int8(x)
        fp32_diff = (pte32(x) - eager).abs().max().item()
        int8_steps = ((pte8(x) - ref8).abs() / scale)
        top1 = (pte8(x).argmax(1) == eager.argmax(1)).float().mean().item()

        def eager_fp32(x=x):
            with torch.inference_mode():
                return model(x)

        ms = measure({"eager_fp32": eager_fp32, "pte_fp32": lambda: pte32(x), "pte_int8": lambda: pte8(x)})
        results[f"bs{bs}"] = {
            "eager_fp32_ms": round(ms["eager_fp32"], 3), "pte_fp32_ms": round(ms["pte_fp32"], 3),
            "pte_int8_ms": round(ms["pte_int8"], 3),
            "int8_vs_fp32_pte": round(ms["pte_fp32"] / ms["pte_int8"], 2),
            "int8_pte_vs_eager_fp32": round(ms["eager_fp32"] / ms["pte_int8"], 2),
            "fp32_pte_vs_eager_fp32": round(ms["eager_fp32"] / ms["pte_fp32"], 2),
            "fp32_pte_max_abs_diff": float(f"{fp32_diff:.3g}"),
            "int8_pte_vs_converted_within_1_step": round((int8_steps <= 1 + 1e-3).float().mean().item(), 4),
            "int8_top1_agreement_with_fp32": round(top1, 4)}

    print(f"\n{'batch':>5} | {'eager fp32 ms':>13} | {'pte fp32 ms':>11} | {'pte int8 ms':>11} | "
          f"{'int8/fp32 pte':>13} | {'int8 pte/eager':>14} | {'fp32 pte/eager':>14}")
    for bs in BATCHES:
        r = results[f"bs{bs}"]
        print(f"{bs:>5} | {r['eager_fp32_ms']:>13.3f} | {r['pte_fp32_ms']:>11.3f} | "
              f"{r['pte_int8_ms']:>11.3f} | {r['int8_vs_fp32_pte']:>12.2f}x | "
              f"{r['int8_pte_vs_eager_fp32']:>13.2f}x | {r['fp32_pte_vs_eager_fp32']:>13.2f}x")
    results.update(cpu=cpu_info(), threads=FLAGS.threads, dynamic_batch=FLAGS.dynamic,
                   pte_fp32_bytes=sizes["fp32"], pte_int8_bytes=sizes["int8"], goal_bs64_ratio=2.3,
                   goal_met=results["bs64"]["int8_vs_fp32_pte"] >= 2.3)
    print(json.dumps(results))


if __name__ == "__main__":
    app.run(main)
