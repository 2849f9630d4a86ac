"""Speed and accuracy of the training loop's opt-in flags: --channels_last, --amp_dtype=bfloat16,
--compile (docs/speed.md).

    python benchmarks/training_flags.py [--steps=120] [--repeats=5] [--threads=2] [--cold_compile]

Every configuration is ``benchmarks/loop_overhead.py``'s framework run (ResNet-20, 1 channel,
10 classes, digits 16x16 with pad-and-crop augmentation, batch 64, momentum SGD, weight decay,
cosine LR with warm-up, the real ``training.trainer.Trainer`` with a full-precision run's
callbacks) with the Trainer's options of that configuration, for ``--steps`` steps on the CPU
with ``--threads`` intra-op threads; the trained model is then evaluated in float32 on the
digits test split (not timed).

* Phase 1: plain, channels_last, amp_bf16, compile. Repeat ``r`` trains every configuration from
  seed ``r`` (same weights, same batches), the order rotated by one each repeat. One untimed
  warm-up run of each configuration first: the compile one compiles, with ``--cold_compile``
  (default) into an empty inductor cache, so its seconds are what a first run pays for this
  model (later models of the same architecture reuse the compiled code; the timed runs do not
  include compilation).
* A flag *wins* when its median images/s is more than 1.05x plain's and its accuracy (mean over
  the repeats' seeds) is at most 0.3 point below plain's.
* Phase 2, when two or more win: their combination (after its own warm-up run) and plain
  again, alternated, same seeds.

Ratios are medians over the repeats against plain's runs of the same phase, in the same
process. The last line printed is one JSON object with every ratio and accuracy.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import torch
from absl import app, flags

import training.trainer
from datasets.digits import load_digits_splits
from loop_overhead import BATCH_SIZE, IMAGE_SIZE, SEED, run_framework
from loop_overhead import start as start_benchmark
from utils.data_loading import make_eval_loader

FLAGS = flags.FLAGS   # loop_overhead's flags, with this benchmark's defaults
FLAGS.set_default("steps", 120)        # the fixed short schedule of every run
FLAGS.set_default("repeats", 5)        # seeds: the accuracy is a mean over them
FLAGS.set_default("threads", 2)
FLAGS.set_default("warmup_steps", 10)  # of each configuration, untimed
flags.DEFINE_bool("cold_compile", True, "compile into a fresh, empty inductor cache directory "
                                        "(TORCHINDUCTOR_CACHE_DIR), as a first run does")

SINGLE = {"plain": {}, "channels_last": {"channels_last": True},
          "amp_bf16": {"amp_dtype": torch.bfloat16}, "compile": {"compile": True}}
MIN_RATIO, MAX_ACCURACY_DROP = 1.05, 0.003


@torch.no_grad()
def accuracy(model: torch.nn.Module, test) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in make_eval_loader(test, 512))
    return correct / len(test)


def measure(configs: dict, train, test, steps: int, repeats: int) -> dict:
    """``{name: (images/s per repeat, accuracy per repeat)}``, runs alternated, order rotated."""
    names = list(configs)
    results = {name: ([], []) for name in names}
    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in order:
            seconds, model = run_framework(train, steps, SEED + repeat, **configs[name])
            results[name][0].append(steps * BATCH_SIZE / seconds)
            results[name][1].append(accuracy(model, test))
        print(f"  repeat {repeat + 1}: " + ", ".join(
            f"{name} {results[name][0][-1]:.0f} img/s {100 * results[name][1][-1]:.2f} %"
            for name in order), flush=True)
    return results


def summary(results: dict) -> dict:
    """``{name: {images_per_s, ratio, accuracy}}`` against this phase's plain runs."""
    plain = statistics.median(results["plain"][0])
    return {name: {"images_per_s": statistics.median(speeds),
                   "ratio": statistics.median(speeds) / plain,
                   "accuracy": statistics.mean(accs)} for name, (speeds, accs) in results.items()}


def main(argv) -> None:
    start_benchmark(argv)
    if FLAGS.cold_compile:   # removed when main returns
        cold_cache = tempfile.TemporaryDirectory(prefix="inductor_cold_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold_cache.name
    splits = load_digits_splits(seed=SEED, image_size=IMAGE_SIZE)
    train, test = splits["train"], splits["test"]
    load_before = os.getloadavg()[0]
    print(f"resnet20 on digits {IMAGE_SIZE}x{IMAGE_SIZE} ({len(train)} training, {len(test)} test "
          f"images), batch {BATCH_SIZE}, {FLAGS.steps} steps per run, {FLAGS.repeats} repeats, "
          f"{FLAGS.threads} thread(s), torch {torch.__version__}", flush=True)

    warmup_s = {}
    for name, options in SINGLE.items():
        start = time.perf_counter()
        run_framework(train, FLAGS.warmup_steps, **options)
        warmup_s[name] = time.perf_counter() - start
    failure = training.trainer._compile_failure
    cache = ", empty inductor cache" if FLAGS.cold_compile else ""
    print(f"warm-up ({FLAGS.warmup_steps} steps{cache}): " + ", ".join(
        f"{name} {seconds:.1f} s" for name, seconds in warmup_s.items())
        + (f"; compile FAILED, eager instead: {failure}" if failure else ""), flush=True)

    print("phase 1: each flag alone", flush=True)
    table = summary(measure(SINGLE, train, test, FLAGS.steps, FLAGS.repeats))
    plain_acc = table["plain"]["accuracy"]
    winners = [name for name in SINGLE if name != "plain" and table[name]["ratio"] > MIN_RATIO
               and table[name]["accuracy"] >= plain_acc - MAX_ACCURACY_DROP]
    combo = "+".join(winners)
    if len(winners) >= 2:
        print(f"phase 2: plain and {combo}", flush=True)
        options = {key: value for name in winners for key, value in SINGLE[name].items()}
        start = time.perf_counter()
        run_framework(train, FLAGS.warmup_steps, **options)   # compiles again (new strides/dtypes)
        print(f"warm-up of {combo}: {time.perf_counter() - start:.1f} s", flush=True)
        second = summary(measure({"plain": {}, combo: options}, train, test, FLAGS.steps,
                                 FLAGS.repeats))
        table[combo] = second[combo]
        table[combo]["plain_images_per_s"] = second["plain"]["images_per_s"]

    print(f"{'configuration':<34}{'img/s':>8}{'ratio':>8}{'accuracy %':>12}")
    for name, row in table.items():
        note = f" (plain of phase 2: {row['plain_images_per_s']:.0f} img/s)" \
            if "plain_images_per_s" in row else ""
        print(f"{name:<34}{row['images_per_s']:>8.0f}{row['ratio']:>8.3f}"
              f"{100 * row['accuracy']:>12.2f}{note}")
    print(f"winners (ratio > {MIN_RATIO}, accuracy at most {100 * MAX_ACCURACY_DROP:.1f} point "
          f"below plain's): "
          f"{combo or 'none'}; 1-min load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after", flush=True)
    print(json.dumps({"threads": FLAGS.threads, "steps": FLAGS.steps, "repeats": FLAGS.repeats,
                      "ratios": {name: round(row["ratio"], 3) for name, row in table.items()},
                      "accuracy": {name: round(row["accuracy"], 4) for name, row in table.items()},
                      "images_per_s": {name: round(row["images_per_s"], 1)
                                       for name, row in table.items()},
                      "winners": winners, "compile_warmup_s": round(warmup_s["compile"], 1),
                      "compile_failure": failure}), flush=True)


if __name__ == "__main__":
    app.run(main)
