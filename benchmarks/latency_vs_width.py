"""When does a thinned model run as fast as its FLOPs say? Eager thinned / full latency of
ResNet-20 at several widths and input sizes, every width kept at ``--keep`` (about 45 % of
the FLOPs), with exact counts and with counts rounded to this CPU's SIMD block.

A residual-mode thinning of a ResNet (``--cpr_prune_residual``, every width pruned alike) is a
narrower ResNet of the same depth: no channel picks, no scatters (``benchmarks/
thinned_latency.py`` shows the digits run's model). So both models here are built directly,
``nets.models.resnet_cifar.ResNetCifar(widths=...)``, from the full widths ``--multipliers`` x
(16, 32, 64) and the thinned widths ``round(keep x width)``, exact (``exact``) or rounded by
``compression.channel_selection.round_to_multiple`` with ``-cpu_channel_block()`` (``block``:
the rule of ``--cpr_channel_multiple=-1``). Random weights: latency does not depend on them.
Both models eval mode, BatchNorm folded (``compression.inference.fold_batchnorm``), 1-channel
inputs; each pair timed side by side (``utils.model_stats.time_side_by_side``: alternating
rounds) at batch 64 and 1, with ``--threads`` intra-op threads each; the repeats of a pair are
chosen so that each model runs about ``--seconds`` per batch size.

Prints a table, then, as the LAST line, one JSON object:
{"cpu_block", "keep", "rows": [{"image_size", "multiplier", "rule", "widths_full",
 "widths_thinned", "flops_ratio", "threads", "full_ms": {"bs64", "bs1"},
 "ratio": {"bs64", "bs1"}}]}

    python benchmarks/latency_vs_width.py [--multipliers=1,2,4] [--image_sizes=16,32]
        [--threads=1,2] [--keep=0.67] [--seconds=1.5]
"""
from __future__ import annotations

import json
import time

import bench_common  # noqa: F401  (tunes malloc before anything allocates)
import torch
from absl import app, flags

from compression.channel_selection import cpu_channel_block, round_to_multiple
from compression.inference import fold_batchnorm
from nets.models.resnet_cifar import ResNetCifar
from utils.model_stats import count_flops, time_side_by_side

flags.DEFINE_list("multipliers", ["1", "2", "4"], "full widths: multiplier x (16, 32, 64)")
flags.DEFINE_list("image_sizes", ["16", "32"], "square input sizes (1 channel)")
flags.DEFINE_list("threads", ["1", "2"], "intra-op thread counts timed")
flags.DEFINE_list("rules", ["exact", "block"], "thinned widths: exact, or the SIMD-block rule")
flags.DEFINE_float("keep", 0.67, "kept fraction of every width (0.67: about 45 % of the FLOPs)")
flags.DEFINE_float("seconds", 1.5, "about this long per model and batch size")
flags.DEFINE_integer("rounds", 5, "alternating rounds per pair")
FLAGS = flags.FLAGS
BATCHES = (64, 1)


def thinned_widths(full: list[int], rule: str) -> list[int]:
    multiple = -cpu_channel_block() if rule == "block" else 1
    return [round_to_multiple(max(1, round(FLAGS.keep * w)), w, multiple) for w in full]


def model(widths: list[int]) -> torch.nn.Module:
    return fold_batchnorm(ResNetCifar(20, 10, 1, tuple(widths)).eval())


def repeats_for(models: dict, shape: tuple, batch: int) -> int:
    """Calls per model that take about ``--seconds`` (from one timed call of the slowest)."""
    x = torch.randn(batch, *shape)
    with torch.inference_mode():
        slowest = 0.0
        for m in models.values():
            m(x)
            start = time.perf_counter()
            m(x)
            slowest = max(slowest, time.perf_counter() - start)
    return max(FLAGS.rounds, int(FLAGS.seconds / max(slowest, 1e-6)))


def one_row(size: int, multiplier: int, rule: str, threads: int) -> dict:
    full_w = [16 * multiplier, 32 * multiplier, 64 * multiplier]
    thin_w = thinned_widths(full_w, rule)
    shape = (1, size, size)
    models = {"full": model(full_w), "thinned": model(thin_w)}
    ms = {}
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for batch in BATCHES:
            timed = time_side_by_side(models, shape, (batch,), threads, warmup=2,
                                      repeats=repeats_for(models, shape, batch),
                                      rounds=FLAGS.rounds)
            ms[batch] = {name: t[f"bs{batch}"] for name, t in timed.items()}
    return {"image_size": size, "multiplier": multiplier, "rule": rule, "widths_full": full_w,
            "widths_thinned": thin_w, "threads": threads,
            "flops_ratio": round(count_flops(models["thinned"], shape)
                                 / count_flops(models["full"], shape), 4),
            "full_ms": {f"bs{b}": round(ms[b]["full"], 3) for b in BATCHES},
            "ratio": {f"bs{b}": round(ms[b]["thinned"] / ms[b]["full"], 3) for b in BATCHES}}


def main(argv: list) -> None:
    del argv
    rows = []
    print(f"{'size':>4} {'mult':>4} {'rule':>6} {'thinned widths':>16} {'FLOPs':>6} {'thr':>3} "
          f"{'full ms 64':>10} {'1':>6} {'ratio 64':>8} {'1':>6}", flush=True)
    for size in map(int, FLAGS.image_sizes):
        for multiplier in map(int, FLAGS.multipliers):
            for rule in FLAGS.rules:
                for threads in map(int, FLAGS.threads):
                    r = one_row(size, multiplier, rule, threads)
                    rows.append(r)
                    print(f"{size:>4} {multiplier:>4} {rule:>6} {str(r['widths_thinned']):>16} "
                          f"{r['flops_ratio']:>6.3f} {threads:>3} {r['full_ms']['bs64']:>10.2f} "
                          f"{r['full_ms']['bs1']:>6.2f} {r['ratio']['bs64']:>8.3f} "
                          f"{r['ratio']['bs1']:>6.3f}", flush=True)
    print(json.dumps({"cpu_block": cpu_channel_block(), "keep": FLAGS.keep, "rows": rows}))


if __name__ == "__main__":
    app.run(main)
