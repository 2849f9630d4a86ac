"""Channel selection speed and quality on a real layer of ResNet-20 trained on digits.

1. One layer problem (``--layer``): torch ISTA with its penalty search vs scikit-learn's
   ``Lasso`` with the same search over alpha (doubling, then bisection until exactly k
   channels remain); both selections are refitted by the same least squares, and the relative
   reconstruction error of the layer output is compared.
2. Whole-network selection time of chn-pruned-rmt (all layers, default settings).

Uses the digits model at ``--model`` (trained with full-prec first if missing).
Prints a table, then one JSON line: {"ista_s", "sklearn_s", "speedup", "ista_error",
"sklearn_error", "error_ratio", "network_selection_s"}.

    python benchmarks/channel_selection.py [--layer=layer3.1.conv1] [--ratio=0.5]
"""
from __future__ import annotations

import copy
import json
import os
import time

import torch
from absl import app, flags

from compression.channel_selection import (SelectionSettings, choose_layers, counts_for_ratios,
                                           nb_kept, select_channels)
from compression.graph import analyse
from compression.ista import normalised_problem, select_exact
from compression.layer_sampling import collect, gram_and_corr, layer_weight, normal_equations
from compression.lstsq import reconstruction_error, refit_closed
from learners.launch import build_learner
from learners.launch import define_flags as define_run_flags
from nets.resnet_at_digits import ModelHelper
from utils.model_io import load_model
from utils.multi_gpu_wrapper import SingleProcess

flags.DEFINE_string("model", "./models_eval/model.ckpt", "pre-trained digits ResNet-20 artifact")
flags.DEFINE_string("layer", "layer3.1.conv1", "layer whose selection problem is timed")
flags.DEFINE_float("ratio", 0.5, "fraction of input channels removed")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS


def sklearn_select(design, target, nb_keep: int) -> tuple[torch.Tensor, int]:
    """The same exact-count search as select_exact, each probe a scikit-learn Lasso fit."""
    from sklearn.linear_model import Lasso

    x, y = design.numpy(), target.numpy()

    def support(alpha: float):
        coef = Lasso(alpha=alpha, fit_intercept=False, max_iter=1000, tol=1e-4).fit(x, y).coef_
        return coef, int((coef != 0).sum())

    alpha, low, fits = 1e-4, 0.0, 0
    while True:
        coef, nnz = support(alpha)
        fits += 1
        if nnz <= nb_keep:
            break
        low, alpha = alpha, alpha * 2
    high, best = alpha, coef
    while nnz != nb_keep and high - low > 1e-10:
        mid = 0.5 * (low + high)
        coef, nnz = support(mid)
        fits += 1
        if nnz > nb_keep:
            low, best = mid, coef
        elif nnz < nb_keep:
            high = mid
    if nnz != nb_keep:
        coef = best
    keep = torch.from_numpy(abs(coef)).topk(nb_keep).indices.sort().values
    return keep, fits


def main(_) -> None:
    torch.set_num_threads(FLAGS.threads)
    fv = flags.FlagValues()
    define_run_flags(fv, ModelHelper)
    fv(["prog", "--learner=chn-pruned-rmt", f"--save_path_eval={FLAGS.model}", "--log_dir=",
        "--report_latency=false"])
    learner = build_learner(ModelHelper, fv.flag_values_dict(), SingleProcess())
    full, _ = learner.load_pretrained() if not os.path.isfile(FLAGS.model) else load_model(FLAGS.model)
    full.eval()
    batches = [b for b in learner.calibration_batches(5000)]
    gen = torch.Generator().manual_seed(0)
    patches, targets = collect(full, full, FLAGS.layer, batches, 10, gen)
    weight = layer_weight(full.get_submodule(FLAGS.layer))
    nb_keep = nb_kept(weight.shape[1], FLAGS.ratio)

    start = time.perf_counter()
    normal_eqs = normal_equations(patches, targets)
    gram, corr = gram_and_corr(*normal_eqs, weight)
    gram, corr, _ = normalised_problem(gram=gram, corr=corr)
    keep_ista, info = select_exact(gram, corr, nb_keep)
    ista_s = time.perf_counter() - start

    start = time.perf_counter()
    design = torch.einsum("mik,oik->moi", patches.double(), weight.double()).reshape(-1, weight.shape[1])
    keep_sk, fits = sklearn_select(design, targets.double().reshape(-1), nb_keep)
    sklearn_s = time.perf_counter() - start

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
                    batches, SelectionSettings())
    network_s = time.perf_counter() - start

    print(f"layer {FLAGS.layer}: {patches.shape[0]} rows x {weight.shape[0]} outputs, "
          f"keep {nb_keep}/{weight.shape[1]}")
    print(f"{'method':<24}{'seconds':>10}{'rel. error':>12}{'probes':>8}")
    print(f"{'torch ISTA (batched)':<24}{ista_s:>10.3f}{ista_err:>12.4f}{info['rounds']:>8}")
    print(f"{'scikit-learn Lasso':<24}{sklearn_s:>10.3f}{sk_err:>12.4f}{fits:>8}")
    print(f"whole ResNet-20 selection ({len(layers)} layers): {network_s:.1f} s")
    print(json.dumps({"ista_s": round(ista_s, 4), "sklearn_s": round(sklearn_s, 4),
                      "speedup": round(sklearn_s / ista_s, 2), "ista_error": round(ista_err, 5),
                      "sklearn_error": round(sk_err, 5), "error_ratio": round(ista_err / sk_err, 4),
                      "network_selection_s": round(network_s, 2)}))


if __name__ == "__main__":
    app.run(main)
