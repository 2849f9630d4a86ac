"""Overhead of the framework's training loop against a bare PyTorch loop doing the same work.

    python benchmarks/loop_overhead.py [--steps=200] [--repeats=3] [--threads=1]

Both loops train ResNet-20 (1 channel, 10 classes) on the digits training split at 16x16 with
pad-and-crop augmentation, from the same DataLoader (``utils.data_loading.make_train_loader``,
batch 64, no worker processes), with momentum-0.9 SGD, weight decay and the same per-step
cosine learning rate, for ``--steps`` steps on the CPU with ``--threads`` intra-op threads.

* framework: ``training.trainer.Trainer`` with the callbacks a full-precision run has:
  ``LrScheduleCallback``, ``LoggingCallback`` (summ_step=100, no TensorBoard, no progress bar;
  its lines go to /dev/null) and a ``PeriodicCallback`` every 100 steps (a no-op action:
  checkpoints and evaluation are real work a bare loop would not do, so they are left out),
  and ``check_every=SUMM_STEP`` (the NaN/inf check of the losses every summ_step steps that
  real runs do); the loss is the helpers' ``calc_loss`` (cross-entropy plus an accuracy
  metric), as in a real run.
* bare: set the LR, forward, cross-entropy, zero_grad, backward, step; per epoch it calls
  ``set_epoch`` on the sampler and the dataset, as the Trainer does, so both see the same
  batches and augmentations.

Seeds are reset before each run, so the two loops do identical work: the table shows the
largest difference between their final weights (0 when they match bit for bit). After one
short warm-up of each, the runs alternate framework/bare, swapping the order every repeat.
The last line printed is one JSON object with the medians and their ratio (goal: >= 0.95).
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import time

import torch
import torch.nn.functional as F
from absl import app, flags

from datasets.digits import load_digits_splits
from training.callbacks import LoggingCallback, LrScheduleCallback, PeriodicCallback
from learners.launch import seed_everything
from training.trainer import Trainer
from nets.abstract_model_helper import AbstractModelHelper
from nets.registry import create_net
from utils.data_loading import make_train_loader
from utils.lrn_rate import CosineLr

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 200, "optimizer steps per timed run")
flags.DEFINE_integer("repeats", 3, "timed runs of each loop")
flags.DEFINE_integer("threads", 1, "torch intra-op threads (torch.set_num_threads)")
flags.DEFINE_integer("warmup_steps", 20, "steps of the untimed warm-up run of each loop")

BATCH_SIZE = 64
IMAGE_SIZE = 16
SEED = 0
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
SUMM_STEP = SAVE_STEP = 100
DEVICE = torch.device("cpu")


def calc_loss(labels: torch.Tensor, outputs: torch.Tensor):
    """The loss every ModelHelper inherits (it does not use the helper's state)."""
    return AbstractModelHelper.calc_loss(None, labels, outputs)


def setup(dataset, steps: int, seed: int = SEED):
    """Model, optimizer, loader and schedule, built from a fresh seed (same for both loops)."""
    seed_everything(seed)
    model = create_net("resnet20", num_classes=10, in_channels=1).to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    loader = make_train_loader(dataset, BATCH_SIZE, seed=seed, nb_threads=0)
    schedule = CosineLr(LR, steps, warmup_iters=steps // 10)
    return model, optimizer, loader, schedule


def run_framework(dataset, steps: int, seed: int = SEED, **options):
    """``options``: the Trainer's own (``channels_last``, ``amp_dtype``, ``compile``)."""
    model, optimizer, loader, schedule = setup(dataset, steps, seed)
    callbacks = [LrScheduleCallback(schedule),
                 LoggingCallback(SUMM_STEP, BATCH_SIZE, writer=None, progress=False),
                 PeriodicCallback(SAVE_STEP, lambda trainer, step: None)]
    trainer = Trainer(model, optimizer, calc_loss, loader, steps, DEVICE, callbacks,
                      check_every=SUMM_STEP,  # as a real run's fit (check_every=summ_step)
                      **options)
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start, model


def run_bare(dataset, steps: int):
    model, optimizer, loader, schedule = setup(dataset, steps)
    start = time.perf_counter()
    model.train()
    step, epoch = 0, 0
    while step < steps:
        loader.sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for inputs, labels in loader:
            inputs, labels = inputs.to(DEVICE), labels.to(DEVICE)
            for group in optimizer.param_groups:
                group["lr"] = schedule(step)
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step >= steps:
                break
        epoch += 1
    return time.perf_counter() - start, model


def max_weight_diff(model_a, model_b) -> float:
    state_b = model_b.state_dict()
    return max(((v.double() - state_b[k].double()).abs().max().item()
                for k, v in model_a.state_dict().items() if v.is_floating_point()), default=0.0)


def log_to_devnull() -> None:
    """LoggingCallback logs as in a real run, but to /dev/null rather than through the table."""
    log = logging.getLogger("pocketflow")
    log.handlers[:] = [logging.StreamHandler(open(os.devnull, "w"))]
    log.setLevel(logging.INFO)
    log.propagate = False


def start(argv) -> None:
    """The checks and settings both loop benchmarks begin with."""
    if len(argv) > 1:
        raise SystemExit(f"unexpected positional arguments: {' '.join(argv[1:])}")
    if FLAGS.steps < 1 or FLAGS.repeats < 1 or FLAGS.threads < 1:
        raise SystemExit("--steps, --repeats and --threads must be positive")
    torch.set_num_threads(FLAGS.threads)
    log_to_devnull()


def main(argv) -> None:
    start(argv)
    dataset = load_digits_splits(seed=SEED, image_size=IMAGE_SIZE)["train"]
    loops = {"framework": run_framework, "bare": run_bare}
    print(f"resnet20 on digits {IMAGE_SIZE}x{IMAGE_SIZE} ({len(dataset)} training images), "
          f"batch {BATCH_SIZE}, {FLAGS.steps} steps per run, {FLAGS.threads} thread(s), "
          f"torch {torch.__version__}", flush=True)

    if FLAGS.warmup_steps > 0:
        for run in loops.values():
            run(dataset, FLAGS.warmup_steps)

    images = FLAGS.steps * BATCH_SIZE
    speeds = {name: [] for name in loops}
    print(f"{'repeat':>6}  {'order':<16}{'framework img/s':>16}{'bare img/s':>12}"
          f"{'ratio':>8}{'max |dw|':>10}", flush=True)
    for repeat in range(FLAGS.repeats):
        order = ["framework", "bare"] if repeat % 2 == 0 else ["bare", "framework"]
        models = {}
        for name in order:
            seconds, models[name] = loops[name](dataset, FLAGS.steps)
            speeds[name].append(images / seconds)
        framework, bare = speeds["framework"][-1], speeds["bare"][-1]
        diff = max_weight_diff(models["framework"], models["bare"])
        print(f"{repeat + 1:>6}  {'/'.join(order):<16}{framework:>16.1f}{bare:>12.1f}"
              f"{framework / bare:>8.3f}{diff:>10.2g}", flush=True)

    medians = {name: statistics.median(values) for name, values in speeds.items()}
    ratio = medians["framework"] / medians["bare"]
    print(f"{'median':>6}  {'':<16}{medians['framework']:>16.1f}{medians['bare']:>12.1f}"
          f"{ratio:>8.3f}", flush=True)
    print(json.dumps({"framework_images_per_s": round(medians["framework"], 2),
                      "bare_images_per_s": round(medians["bare"], 2),
                      "throughput_ratio": round(ratio, 4)}), flush=True)


if __name__ == "__main__":
    app.run(main)
