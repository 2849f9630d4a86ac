"""When does a thinned model run as fast as its FLOPs say? Eager thinned / full latency of
ResNet-20 at several widths and input sizes, every width kept at ``--keep`` (about 45 % of
the FLOPs), with exact counts and with counts rounded to this CPU's SIMD block.

A residual-mode thinning of a ResNet (``--cpr_prune_residual``, every width pruned alike) is a
narrower ResNet of the same depth: no channel picks, no scatters (``benchmarks/
thinned_latency.py`` shows the digits run's model). So both models here are built directly,
``nets.models.resnet_cifar.ResNetCifar(widths=...)``, from the full widths ``--multipliers`` x
(16, 32, 64) and the thinned widths ``round(keep x width)``, exact (``exact``) or rounded by
``compression.budget.counts.round_to_multiple`` with ``-cpu_channel_block()`` (``block``:
the rule of ``--cpr_channel_multiple=-1``). Random weights: latency does not depend on them.
Both models eval mode, BatchNorm folded (``compression.surgery.inference.fold_batchnorm``), 1-channel
inputs; each pair timed side by side (``utils.model_stats.time_side_by_side``: alternating
rounds) at batch 64 and 1, with ``--threads`` intra-op threads each; the repeats of a pair are
chosen so that each model runs about ``--seconds`` per batch size.

``--convs_only`` (default on) asks what the convolutions alone allow: every convolution of each
model timed alone at batch 64 on an input of its shape (found in one pass), with oneDNN's direct
kernel and with torch's im2col + GEMM kernel (oneDNN off), the faster of the two taken per
convolution, summed per model (no BN, ReLU, sum, pooling or call overhead).
``convs_only_ratio`` is the thinned sum over the full sum: the ratio of the two models if
nothing but their convolutions cost and each ran its fastest torch kernel; ``gemm_convs``
counts the convolutions where GEMM was the faster.

``--search`` asks whether another allocation of the same FLOPs would run faster: every
combination of block-rule stage widths (an eighth to all of each width) whose FLOPs ratio lies
inside ``--search_flops`` is timed against the full model at batch 64 (shorter, ``
--search_seconds``), and the fastest gets a full row (rule ``search``).

Prints a table, then, as the LAST line, one JSON object:
{"cpu_block", "keep", "rows": [{"image_size", "multiplier", "rule", "widths_full",
 "widths_thinned", "flops_ratio", "threads", "full_ms": {"bs64", "bs1"},
 "ratio": {"bs64", "bs1"}, "convs_only_ratio", "convs_only_ms": {"full", "thinned"},
 "gemm_convs": {"full", "thinned"}}], "search": [{"image_size", "multiplier", "threads",
 "allocations": [{"widths_thinned", "flops_ratio", "ratio_bs64"}]}]}

    python benchmarks/latency_vs_width.py [--multipliers=1,2,4] [--image_sizes=16,32]
        [--threads=1,2] [--keep=0.67] [--seconds=1.5] [--search [--search_flops=0.42,0.50]]
"""
from __future__ import annotations

import itertools
import json
import time

import bench_common  # noqa: F401  (tunes malloc before anything allocates)
import torch
from absl import app, flags

from compression.budget.simd import cpu_channel_block
from compression.budget.counts import round_to_multiple
from compression.surgery.inference import fold_batchnorm
from nets.models.resnet_cifar import ResNetCifar
from utils.model_stats import count_flops, time_side_by_side

flags.DEFINE_list("multipliers", ["1", "2", "4"], "full widths: multiplier x (16, 32, 64)")
flags.DEFINE_list("image_sizes", ["16", "32"], "square input sizes (1 channel)")
flags.DEFINE_list("threads", ["1", "2"], "intra-op thread counts timed")
flags.DEFINE_list("rules", ["exact", "block"], "thinned widths: exact, or the SIMD-block rule")
flags.DEFINE_float("keep", 0.67, "kept fraction of every width (0.67: about 45 % of the FLOPs)")
flags.DEFINE_float("seconds", 1.5, "about this long per model and batch size")
flags.DEFINE_integer("rounds", 5, "alternating rounds per pair")
flags.DEFINE_bool("search", False, "also time every block-rule allocation of stage widths "
                  "inside --search_flops at batch 64, then the fastest as a row (rule 'search')")
flags.DEFINE_list("search_flops", ["0.42", "0.50"], "FLOPs-ratio range of --search")
flags.DEFINE_float("search_seconds", 0.4, "about this long per model and allocation in --search")
flags.DEFINE_bool("convs_only", True, "also time every convolution alone (the kernel bound)")
FLAGS = flags.FLAGS
BATCHES = (64, 1)


def thinned_widths(full: list[int], rule: str) -> list[int]:
    multiple = -cpu_channel_block() if rule == "block" else 1
    return [round_to_multiple(max(1, round(FLAGS.keep * w)), w, multiple) for w in full]


def model(widths: list[int]) -> torch.nn.Module:
    return fold_batchnorm(ResNetCifar(20, 10, 1, tuple(widths)).eval())


def repeats_for(models: dict, shape: tuple, batch: int, seconds: float | None = None) -> int:
    """Calls per model that take about ``seconds`` (``--seconds``; from one timed call of the
    slowest)."""
    x = torch.randn(batch, *shape)
    with torch.inference_mode():
        slowest = 0.0
        for m in models.values():
            m(x)
            start = time.perf_counter()
            m(x)
            slowest = max(slowest, time.perf_counter() - start)
    return max(FLAGS.rounds, int((seconds or FLAGS.seconds) / max(slowest, 1e-6)))


def conv_inputs(model: torch.nn.Module, shape: tuple) -> list:
    """(conv, the shape of one sample of its input) for every convolution of ``model``."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append((mod, args[0].shape[1:])))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            model(torch.randn(1, *shape))
    finally:
        for h in hooks:
            h.remove()
    return seen


def gemm_kernel(conv: torch.nn.Module):
    """``conv`` through torch's im2col + GEMM kernel (oneDNN off for the call)."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.backends.mkldnn.flags(enabled=False):
            return conv(x)
    return forward


def convs_only(model: torch.nn.Module, shape: tuple, threads: int, batch: int = 64) -> tuple:
    """Sum over ``model``'s convolutions of the faster kernel's ms, and how many took GEMM."""
    total, gemm = 0.0, 0
    for conv, conv_shape in conv_inputs(model, shape):
        kernels = {"onednn": conv, "gemm": gemm_kernel(conv)}
        probe = repeats_for(kernels, tuple(conv_shape), batch)
        timed = time_side_by_side(kernels, tuple(conv_shape), (batch,), threads, warmup=2,
                                  repeats=min(probe, 60), rounds=3)
        best = min(timed, key=lambda k: timed[k][f"bs{batch}"])
        total += timed[best][f"bs{batch}"]
        gemm += best == "gemm"
    return total, gemm


def full_widths(multiplier: int) -> list[int]:
    return [16 * multiplier, 32 * multiplier, 64 * multiplier]


def stage_choices(width: int) -> list[int]:
    """Block-rule widths from an eighth to all of ``width`` (``--search``)."""
    return sorted({round_to_multiple(max(1, round(f * width)), width, -cpu_channel_block())
                   for f in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)})


def search(size: int, multiplier: int, threads: int) -> list[dict]:
    """Every block-rule allocation of stage widths with a FLOPs ratio inside ``--search_flops``,
    each timed side by side with the full model at batch 64; fastest first."""
    low, high = (float(v) for v in FLAGS.search_flops)
    shape, full_w = (1, size, size), full_widths(multiplier)
    full = model(full_w)
    full_flops = count_flops(full, shape)
    torch.set_num_threads(threads)
    found = []
    for widths in itertools.product(*(stage_choices(w) for w in full_w)):
        thinned = model(list(widths))
        flops = count_flops(thinned, shape) / full_flops
        if not low <= flops <= high:
            continue
        pair = {"full": full, "thinned": thinned}
        with torch.inference_mode():
            timed = time_side_by_side(pair, shape, (64,), threads, warmup=2,
                                      repeats=repeats_for(pair, shape, 64, FLAGS.search_seconds),
                                      rounds=FLAGS.rounds)
        found.append({"widths_thinned": list(widths), "flops_ratio": round(flops, 4),
                      "ratio_bs64": round(timed["thinned"]["bs64"] / timed["full"]["bs64"], 3)})
    return sorted(found, key=lambda r: r["ratio_bs64"])


def one_row(size: int, multiplier: int, rule: str, threads: int, thin_w: list | None = None) -> dict:
    full_w = full_widths(multiplier)
    thin_w = thin_w or thinned_widths(full_w, rule)
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
        bound = {name: convs_only(m, shape, threads) for name, m in models.items()} \
            if FLAGS.convs_only else {}
    extra = {"convs_only_ratio": round(bound["thinned"][0] / bound["full"][0], 3),
             "convs_only_ms": {name: round(b[0], 3) for name, b in bound.items()},
             "gemm_convs": {name: b[1] for name, b in bound.items()}} if bound else {}
    return {**extra, "image_size": size, "multiplier": multiplier, "rule": rule, "widths_full": full_w,
            "widths_thinned": thin_w, "threads": threads,
            "flops_ratio": round(count_flops(models["thinned"], shape)
                                 / count_flops(models["full"], shape), 4),
            "full_ms": {f"bs{b}": round(ms[b]["full"], 3) for b in BATCHES},
            "ratio": {f"bs{b}": round(ms[b]["thinned"] / ms[b]["full"], 3) for b in BATCHES}}


def main(argv: list) -> None:
    del argv
    rows, searched = [], []
    print(f"{'size':>4} {'mult':>4} {'rule':>6} {'thinned widths':>16} {'FLOPs':>6} {'thr':>3} "
          f"{'full ms 64':>10} {'1':>6} {'ratio 64':>8} {'1':>6} {'convs only 64':>13}", flush=True)
    for size in map(int, FLAGS.image_sizes):
        for multiplier in map(int, FLAGS.multipliers):
            for rule in FLAGS.rules:
                for threads in map(int, FLAGS.threads):
                    rows.append(one_row(size, multiplier, rule, threads))
                    print_row(rows[-1])
            for threads in map(int, FLAGS.threads) if FLAGS.search else ():
                found = search(size, multiplier, threads)
                searched.append({"image_size": size, "multiplier": multiplier,
                                 "threads": threads, "allocations": found})
                for r in found:
                    print(f"  search {r['widths_thinned']}: FLOPs {r['flops_ratio']:.3f}, "
                          f"bs64 ratio {r['ratio_bs64']:.3f}", flush=True)
                if found:
                    rows.append(one_row(size, multiplier, "search", threads,
                                        found[0]["widths_thinned"]))
                    print_row(rows[-1])
    print(json.dumps({"cpu_block": cpu_channel_block(), "keep": FLAGS.keep, "rows": rows,
                      "search": searched}))


def print_row(r: dict) -> None:
    print(f"{r['image_size']:>4} {r['multiplier']:>4} {r['rule']:>6} "
          f"{str(r['widths_thinned']):>16} {r['flops_ratio']:>6.3f} {r['threads']:>3} "
          f"{r['full_ms']['bs64']:>10.2f} {r['full_ms']['bs1']:>6.2f} {r['ratio']['bs64']:>8.3f} "
          f"{r['ratio']['bs1']:>6.3f} {r.get('convs_only_ratio', float('nan')):>13.3f}", flush=True)


if __name__ == "__main__":
    app.run(main)
