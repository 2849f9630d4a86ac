"""Channel selection speed and quality on a real layer of ResNet-20 trained on digits.

1. One layer problem (``--layer``): torch ISTA with its penalty search vs scikit-learn's
   ``Lasso`` (plain, and with its Gram matrix precomputed, its fastest mode here) with the same
   search (double the penalty until at most k channels remain, then
   narrow the interval until exactly k do). A fair baseline gets ISTA's start and stopping rule
   mapped to its own penalty (``alpha = gamma * s / n``, ``s = ||A'A||_F``, ``n`` rows: the same
   problem, see ``compression.selection.ista``) and the more economical sequential bisection. Both
   selections are refitted by the same least squares and the relative reconstruction error of
   the layer output is compared. ``--unmapped_start`` also times the earlier baseline, which
   started at ``alpha = 1e-4`` (far below the answer, so it spent most of its time doubling).
2. Whole-network selection time of chn-pruned-rmt (all layers, default settings).

Uses the digits model at ``--model`` (trained with full-prec first if missing).
Each side is timed with the building of its own problem from the sampled patches. Prints a
table, then one JSON line: {"ista_s", "sklearn_s", "speedup", "ista_error", "sklearn_error",
"error_ratio", "same_selection", "sklearn_gram_s", "speedup_vs_gram", "same_selection_gram",
"network_selection_s"} (+ "sklearn_unmapped_s",
"speedup_unmapped" with ``--unmapped_start``).

    python benchmarks/channel_selection.py [--layer=layer3.1.conv1] [--ratio=0.5] [--unmapped_start]
"""
from __future__ import annotations

import copy
import json
import os
import time

import torch
from absl import app, flags

from lasso_baseline import alpha_for_gamma, sklearn_select  # sibling module (run as a script)

from compression.selection.criteria import SelectionOptions, select_channels
from compression.graph.layers import choose_layers
from compression.budget.counts import counts_for_ratios, nb_kept
from compression.graph.layers import analyse
from compression.selection.ista import normalised_problem, select_exact
from compression.selection.sampling import collect, gram_and_corr, layer_weight, normal_equations
from compression.selection.lstsq import reconstruction_error, refit_closed
from learners.launch import build
from learners.launch import define_flags as define_run_flags
from nets.resnet_at_digits import ModelHelper
from compression.artifacts import load_model
from utils.multi_gpu_wrapper import SingleProcess

flags.DEFINE_string("model", "./models_eval/model.ckpt", "pre-trained digits ResNet-20 artifact")
flags.DEFINE_string("layer", "layer3.1.conv1", "layer whose selection problem is timed")
flags.DEFINE_float("ratio", 0.5, "fraction of input channels removed")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
flags.DEFINE_bool("unmapped_start", False, "also time scikit-learn from alpha=1e-4 (the earlier, "
                  "unfair baseline)")
FLAGS = flags.FLAGS


def main(_) -> None:
    torch.set_num_threads(FLAGS.threads)
    fv = flags.FlagValues()
    define_run_flags(fv, ModelHelper)
    fv(["prog", "--learner=chn-pruned-rmt", f"--save_path_eval={FLAGS.model}", "--log_dir=",
        "--report_latency=false"])
    runner, learner = build(ModelHelper, fv.flag_values_dict(), SingleProcess())
    full, _ = runner.load_pretrained() if not os.path.isfile(FLAGS.model) else load_model(FLAGS.model)
    full.eval()
    batches = [b for b in learner.calibration_batches(5000)]
    gen = torch.Generator().manual_seed(0)
    patches, targets = collect(full, full, FLAGS.layer, batches, 10, gen)
    weight = layer_weight(full.get_submodule(FLAGS.layer))
    nb_keep = nb_kept(weight.shape[1], FLAGS.ratio)

    start = time.perf_counter()
    normal_eqs = normal_equations(patches, targets)
    gram, corr = gram_and_corr(*normal_eqs, weight)
    gram, corr, scale = normalised_problem(gram=gram, corr=corr)
    keep_ista, info = select_exact(gram, corr, nb_keep)
    ista_s = time.perf_counter() - start
    gamma_init, gamma_tol = 0.1, 1e-8   # select_exact's defaults

    to_alpha = alpha_for_gamma(1.0, float(scale), patches.shape[0] * weight.shape[0])  # gamma -> alpha

    def sklearn(alpha: float, tol: float, gram: bool = False) -> tuple[torch.Tensor, int, float]:
        """scikit-learn's search, timed with the building of its own problem (as ISTA's is)."""
        start = time.perf_counter()
        design = torch.einsum("mik,oik->moi", patches.double(), weight.double()).reshape(
            -1, weight.shape[1])
        keep, fits = sklearn_select(design, targets.double().reshape(-1), nb_keep, alpha, tol, gram)
        return keep, fits, time.perf_counter() - start

    keep_sk, fits, sklearn_s = sklearn(gamma_init * to_alpha, gamma_tol * to_alpha)
    keep_gram, fits_gram, gram_s = sklearn(gamma_init * to_alpha, gamma_tol * to_alpha, gram=True)
    unmapped = {}
    if FLAGS.unmapped_start:
        _, unmapped_fits, unmapped_s = sklearn(1e-4, 1e-10)
        unmapped = {"sklearn_unmapped_s": round(unmapped_s, 4), "sklearn_unmapped_fits": unmapped_fits,
                    "speedup_unmapped": round(unmapped_s / ista_s, 2)}

    def error(keep):
        refit = refit_closed(*normal_eqs, keep, weight.shape[2])
        full_w = torch.zeros_like(weight)
        full_w[:, keep] = refit
        return reconstruction_error(patches, targets, full_w, keep)

    ista_err, sk_err = error(keep_ista), error(keep_sk)

    layers = choose_layers(analyse(full, ModelHelper().input_shape), True, False, [])
    start = time.perf_counter()
    select_channels(full, copy.deepcopy(full), layers,
                    counts_for_ratios(layers, {layer.name: FLAGS.ratio for layer in layers}),
                    batches, SelectionOptions())
    network_s = time.perf_counter() - start

    print(f"layer {FLAGS.layer}: {patches.shape[0]} rows x {weight.shape[0]} outputs, "
          f"keep {nb_keep}/{weight.shape[1]}; both searches start at gamma {gamma_init} "
          f"(alpha {gamma_init * to_alpha:.3g}) and stop at an interval of {gamma_tol:g}")
    print(f"{'method':<32}{'seconds':>10}{'rel. error':>12}{'probes':>8}")
    print(f"{'torch ISTA (batched)':<32}{ista_s:>10.3f}{ista_err:>12.4f}{info['rounds']:>8}")
    print(f"{'scikit-learn Lasso (same start)':<32}{sklearn_s:>10.3f}{sk_err:>12.4f}{fits:>8}")
    print(f"{'  with its Gram precomputed':<32}{gram_s:>10.3f}{error(keep_gram):>12.4f}{fits_gram:>8}")
    if unmapped:
        print(f"{'scikit-learn from alpha=1e-4':<32}{unmapped['sklearn_unmapped_s']:>10.3f}"
              f"{'':>12}{unmapped['sklearn_unmapped_fits']:>8}")
    print(f"whole ResNet-20 selection ({len(layers)} layers): {network_s:.1f} s")
    print(json.dumps({"ista_s": round(ista_s, 4), "sklearn_s": round(sklearn_s, 4),
                      "speedup": round(sklearn_s / ista_s, 2), "ista_error": round(ista_err, 5),
                      "sklearn_error": round(sk_err, 5), "error_ratio": round(ista_err / sk_err, 4),
                      "same_selection": bool(torch.equal(keep_ista.cpu(), keep_sk)),
                      "sklearn_gram_s": round(gram_s, 4), "speedup_vs_gram": round(gram_s / ista_s, 2),
                      "same_selection_gram": bool(torch.equal(keep_ista.cpu(), keep_gram)),
                      **unmapped, "network_selection_s": round(network_s, 2)}))


if __name__ == "__main__":
    app.run(main)
