"""Quality of chn-pruned-rmt's channel selection criteria on ResNet-20 trained on digits.

The selection criteria ``ista`` (LASSO path, exact count), ``l1`` (weight magnitude) and
``random`` (``--cpr_selection``) are compared at the same ``--cpr_prune_ratio`` (``--ratio``),
all starting from the SAME pre-trained model (``--model``, passed as ``--save_path_eval``):

* default (full flow): one ``learners.launch.run`` per criterion, each with its own flag values
  and its own temporary output directory (``--save_path``, ``--cpr_save_path``,
  ``--cpr_save_path_eval``, ``--cpr_save_path_ws``), ``--log_dir=``,
  ``--report_latency=false`` and the same ``--seed``. Everything in the table comes from the
  report each run returns: accuracy of the thinned model before fine-tuning
  (``accuracy.compressed_before_finetune``) and after it (``accuracy.compressed``), FLOPs
  kept (``flops.compressed / flops.full``) and the wall time of selection and fine-tuning
  (``wall_s.selection``: graph analysis, loading the calibration batches, selection,
  thinning and saving the selected model; ``wall_s.finetune``).
  Fine-tuning length: ``--ft_epochs_rat`` is passed as ``--nb_epochs_rat`` (a multiplier on
  the helper's 30 epochs). NOTE: that flag also sets the pre-training length when ``--model``
  does not exist, in which case the first run trains the model (full-prec, the learner does it
  automatically) for only ``ft_epochs_rat`` x 30 epochs and the other runs reuse it; point
  ``--model`` at an existing, fully trained model (e.g. from ``nets/resnet_at_digits_run.py``)
  for meaningful numbers.
* ``--selection_only``: no fine-tuning; the learner's pieces are run directly, once per
  criterion, on the same calibration batches: ``compression.artifacts.load_model``,
  ``compression.graph.analyse`` + ``choose_layers``, the learner's ``select`` on a deep copy of
  the full model, ``compression.surgery.thinning.thin``, then ``learner.ctx.accuracy`` of the
  thinned model (the before-fine-tune accuracy). Selection time covers select +
  thin: one untimed warm-up selection first, then ``--rounds`` timed rounds, round ``r``
  starting at criterion ``r mod n`` (no criterion is always first), median over the rounds;
  the fine-tune columns are empty. If ``--model`` is missing it is trained first (as
  above). This is the quick way to compare the criteria before fine-tuning.

Prints a table, then, as the LAST line, one JSON object:
{"ratio", "seed", "selection_only", "full", "before_ft": {method: acc}, "after_ft": {...},
"flops_ratio": {...}, "selection_s": {...}, "finetune_s": {...},
"ista_gt_l1_gt_random_before_ft": bool (null unless all three criteria ran),
"selection_rounds": timed rounds per criterion (1 in the full flow)}.

    python benchmarks/pruning_quality.py [--ratio=0.5] [--ft_epochs_rat=0.3] [--selection_only]
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
import time

import torch
from absl import app, flags

from compression.selection.criteria import SELECTIONS
from compression.graph.layers import choose_layers
from compression.graph.layers import analyse
from compression.surgery.thinning import thin
from learners.launch import build, run, seed_everything, setup_logging
from learners.launch import define_flags as define_run_flags
from nets.resnet_at_digits import ModelHelper
from compression.artifacts import load_model
from utils.model_stats import count_flops
from utils.multi_gpu_wrapper import SingleProcess

flags.DEFINE_string("model", "./models_eval/model.ckpt",
                    "pre-trained digits ResNet-20 artifact (trained by the first run if missing)")
flags.DEFINE_float("ratio", 0.5,
                   "--cpr_prune_ratio: fraction of each layer's input channels removed")
flags.DEFINE_float("ft_epochs_rat", 0.3, "--nb_epochs_rat of the fine-tuning (and of the "
                                         "pre-training when --model is missing)")
flags.DEFINE_integer("seed", 0, "--seed of every run")
flags.DEFINE_boolean("selection_only", False, "skip fine-tuning: select + thin + evaluate only")
flags.DEFINE_list("methods", list(SELECTIONS), "selection criteria to compare")
flags.DEFINE_integer("rounds", 3, "--selection_only: timed rounds per criterion, each starting at "
                                  "the next criterion (median time)", lower_bound=1)
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS


def flag_values(method: str, outdir: str) -> dict:
    """The flat flag values of one chn-pruned-rmt run writing only under ``outdir``."""
    fv = flags.FlagValues()
    define_run_flags(fv, ModelHelper)
    fv(["prog", "--learner=chn-pruned-rmt",
        f"--save_path_eval={FLAGS.model}",
        f"--save_path={os.path.join(outdir, 'models', 'model.ckpt')}",
        f"--cpr_save_path={os.path.join(outdir, 'models_cpr', 'model.ckpt')}",
        f"--cpr_save_path_eval={os.path.join(outdir, 'models_cpr_eval', 'model.ckpt')}",
        f"--cpr_save_path_ws={os.path.join(outdir, 'models_cpr_ws', 'model.ckpt')}",
        "--log_dir=", "--report_latency=false", f"--seed={FLAGS.seed}",
        f"--cpr_prune_ratio={FLAGS.ratio}", f"--cpr_selection={method}",
        f"--nb_epochs_rat={FLAGS.ft_epochs_rat}"])
    return fv.flag_values_dict()


def full_flow(method: str) -> dict:
    """One complete chn-pruned-rmt run (selection, thinning, fine-tuning) -> result row."""
    with tempfile.TemporaryDirectory(prefix=f"pruning_quality_{method}_") as outdir:
        report = run(ModelHelper, flag_values(method, outdir))
    flops = report["flops"]
    return {"full": report["accuracy"]["full"],
            "before_ft": report["accuracy"]["compressed_before_finetune"],
            "after_ft": report["accuracy"]["compressed"],
            "flops_ratio": flops["compressed"] / flops["full"]
            if flops.get("full") and flops.get("compressed") is not None else None,
            "selection_s": report["wall_s"].get("selection"),
            "finetune_s": report["wall_s"].get("finetune")}


def selection_only(methods: list[str]) -> dict:
    """Select + thin + evaluate with the learner's pieces, every criterion on the same batches."""
    rows = {}
    with tempfile.TemporaryDirectory(prefix="pruning_quality_sel_") as outdir:
        setup_logging(True)
        seed_everything(FLAGS.seed)
        runner, base = build(ModelHelper, flag_values(methods[0], outdir), SingleProcess())
        if not os.path.isfile(FLAGS.model):
            runner.load_pretrained()  # full-prec training, nb_epochs_rat = ft_epochs_rat
        full, saved = load_model(FLAGS.model)
        full = full.to(base.ctx.device).eval()
        full_spec = saved.get("spec") or saved.get("meta", {}).get("spec")
        full_acc = base.ctx.accuracy(full)
        full_flops = count_flops(full, base.ctx.helper.input_shape)
        cfg = base.cfg
        layers = analyse(full, base.ctx.helper.input_shape)
        chosen = choose_layers(layers, cfg.skip_frst_layer, cfg.skip_last_layer,
                               cfg.skip_names)
        batches = base.calibration_batches(cfg.nb_smpls)

        def select(method: str) -> tuple:
            seed_everything(FLAGS.seed)
            _, learner = build(ModelHelper, flag_values(method, outdir), SingleProcess())
            start = time.perf_counter()
            pruned = copy.deepcopy(full)
            keep, _ = learner.select(full, pruned, chosen,
                                     learner.kept_counts(full, layers, chosen, {}), batches)
            thinned, _ = thin(pruned, layers, keep, full_spec)
            return learner, thinned, time.perf_counter() - start

        select(methods[0])  # untimed warm-up: no criterion is timed cold
        seconds: dict[str, list[float]] = {method: [] for method in methods}
        results = {}
        for r in range(FLAGS.rounds):
            start = r % len(methods)
            for method in methods[start:] + methods[:start]:
                learner, thinned, took = select(method)
                seconds[method].append(took)
                results.setdefault(method, (learner, thinned))  # seeded: every round selects alike
        for method in methods:
            learner, thinned = results[method]
            thinned = thinned.to(learner.ctx.device)
            rows[method] = {"full": full_acc,
                            "before_ft": learner.ctx.accuracy(thinned),
                            "after_ft": None,
                            "flops_ratio": count_flops(thinned, learner.ctx.helper.input_shape)
                            / full_flops,
                            "selection_s": round(statistics.median(seconds[method]), 2),
                            "finetune_s": None}
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    unknown = [m for m in FLAGS.methods if m not in SELECTIONS]
    if unknown or not FLAGS.methods:
        raise app.UsageError(f"--methods must be among {', '.join(SELECTIONS)}, "
                             f"got {FLAGS.methods}")
    torch.set_num_threads(FLAGS.threads)
    if FLAGS.selection_only:
        rows = selection_only(FLAGS.methods)
    else:
        rows = {method: full_flow(method) for method in FLAGS.methods}

    mode = f"selection only (no fine-tune), time: median of {FLAGS.rounds} rounds after a warm-up" \
        if FLAGS.selection_only else f"fine-tune nb_epochs_rat={FLAGS.ft_epochs_rat}"
    first = rows[FLAGS.methods[0]]
    print(f"\nchn-pruned-rmt on resnet_20 @ digits | prune ratio {FLAGS.ratio} | {mode} | "
          f"seed {FLAGS.seed} | full model {FLAGS.model}: accuracy {first['full']:.4f}")
    print(f"{'method':<10}{'acc before FT':>15}{'acc after FT':>14}{'FLOPs kept':>12}"
          f"{'selection s':>13}{'finetune s':>12}")
    for method, row in rows.items():
        print(f"{method:<10}{_fmt(row['before_ft'], '.4f'):>15}{_fmt(row['after_ft'], '.4f'):>14}"
              f"{_fmt(row['flops_ratio'], '.4f'):>12}{_fmt(row['selection_s'], '.2f'):>13}"
              f"{_fmt(row['finetune_s'], '.2f'):>12}")

    def column(key: str, digits: int = 4) -> dict:
        return {m: None if r[key] is None else round(r[key], digits) for m, r in rows.items()}

    before = column("before_ft")
    ordered = None
    if all(m in rows for m in SELECTIONS):
        ordered = before["ista"] > before["l1"] > before["random"]
    print(json.dumps({"ratio": FLAGS.ratio, "seed": FLAGS.seed,
                      "selection_only": FLAGS.selection_only,
                      "full": round(first["full"], 4), "before_ft": before,
                      "after_ft": column("after_ft"), "flops_ratio": column("flops_ratio"),
                      "selection_s": column("selection_s", 2),
                      "finetune_s": column("finetune_s", 2),
                      "ista_gt_l1_gt_random_before_ft": ordered,
                      "selection_rounds": FLAGS.rounds if FLAGS.selection_only else 1}), flush=True)


if __name__ == "__main__":
    app.run(main)
