"""Head to head with Torch-Pruning (issue 40): this project's channel learners against
Torch-Pruning's ``MetaPruner`` (L2 magnitude and Taylor importance), at the same FLOPs, with the
same fine-tuning afterwards.

For each net of ``--nets`` (``resnet20``: the README's ResNet-20 on digits 16x16, the
pre-trained ``--model``, trained with ``full-prec`` first when missing; zoo nets of
``tests/zoo/nets.py`` on digits 8x8, trained here with the Python API's ``full-prec``) and each
FLOPs target of ``--flops_kept``:

1. this project: every learner of ``--learners`` (``chn-pruned-rmt``: its defaults, residual
   streams pruned as groups, as Torch-Pruning does; ``chn-pruned-rmt-trained-head``: the same
   with ``refit_output=False``, the classifier keeping its trained weights;
   ``chn-pruned-rmt-per-layer``: each reader of a stream keeps its own channels, PocketFlow's
   selection) through
   ``pocketflow_torch.compress`` under a FLOPs budget (``preserve_ratio``, which counts the FLOPs
   before dead-channel elimination; learners without one: their ``prune_ratio``), searched
   until the thinned model's FLOPs (``utils.model_stats.count_flops``, i.e.
   ``torch.utils.flop_counter``) are within ``--flops_tol`` of the target (relative), else the
   closest one tried. The model taken is the learner's thinned model right after selection
   (``save_path_ws``, ``pf.load_model``): the learner's own fine-tuning is cut to its minimum
   (one step) and its result not used, so every method gets the same fine-tuning below,
   after which the runner's delivery pass is applied as a run would (``fold_gathers``: gathers
   folded where the timer finds that faster; ``gathers_folded`` in the JSON rows);
2. Torch-Pruning: deep copies of the same pre-trained model, ``MetaPruner`` with
   ``GroupMagnitudeImportance(p=2)`` and ``GroupTaylorImportance()`` (gradients summed over
   ``--taylor_batches`` training batches), one ``pruning_ratio`` for every group (local pruning),
   the final classifier ignored, the ratio searched to the same FLOPs by the same counter;
3. the referee: one fine-tuning loop for every pruned model (SGD, momentum 0.9, weight decay
   ``--ft_wd``, cosine LR from ``--ft_lr`` to 0, ``--ft_epochs`` epochs, batch 64, the same seed
   and data order, no augmentation; ``--ft_seeds`` > 1: as many data orders, the accuracy
   after it their mean), accuracy on the digits test split before and after it, and eager
   latency at batch 1 and 64 of the full model and every result of one (net,
   target), side by side (``utils.model_stats.measure_latencies``, ``--threads`` threads;
   ``--latency_runs`` such timings, the least median kept).

Prints a table and, as the LAST line, one JSON object: {"settings": {..}, "rows": [{"net",
"flops_target", "flops_kept", "method", "knob", "acc_full", "acc_before_ft", "acc_after_ft",
"acc_after_ft_seeds", "params", "gathers_folded", "ms_bs1", "ms_bs64"}], "goals":
{"ahead_after_ft_on_3_of_4_nets": bool|null, "ahead_nets": [..], "no_slower": bool,
"worst_latency_ratio": float, "worst_latency_ratio_by_method": {method: float}}}.
``ahead_after_ft_on_3_of_4_nets``: on at least 3/4 of the nets (3 of the 4 defaults), this
project's best accuracy after fine-tuning is >= both Torch-Pruning methods' at every target
<= 0.15 (null when no target is <= 0.15). ``no_slower``: every project result's latency is at
most 1.05x every Torch-Pruning result's of the same (net, target), at batch 1 and 64.

    pip install torch-pruning     # or: pip install -e ".[bench]"
    python benchmarks/vs_torch_pruning.py [--nets=resnet20,inception,se,grouped]
        [--flops_kept=0.30,0.25,0.15,0.105] [--learners=chn-pruned-rmt] [--ft_epochs=10]
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import tempfile
from typing import Callable

import torch
from absl import app, flags
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # noqa: E402,F401  (tunes malloc before anything allocates)
import pocketflow_torch as pf  # noqa: E402
from compression.surgery.passes import PassTimer, fold_gathers  # noqa: E402
from datasets.digits import load_digits_splits  # noqa: E402
from utils.model_stats import count_flops, count_params, measure_latencies  # noqa: E402

ZOO_PICK = ("inception", "se", "grouped")   # concat, SE + depthwise + residual, grouped convs
flags.DEFINE_list("nets", ["resnet20", *ZOO_PICK],
                  "resnet20 (digits 16x16, --model) and zoo nets of tests/zoo/nets.py (digits 8x8)")
flags.DEFINE_list("flops_kept", ["0.30", "0.25", "0.15", "0.105"], "FLOPs targets (kept fraction)")
flags.DEFINE_list("learners", ["chn-pruned-rmt", "chn-pruned-rmt-trained-head",
                               "chn-pruned-rmt-per-layer"],
                  "this project's channel learners: chn-pruned-rmt (its defaults: residual "
                  "streams as groups), chn-pruned-rmt-trained-head (--cpr_refit_output=false), "
                  "chn-pruned-rmt-per-layer (--cpr_prune_residual=false), dis-chn-pruned, "
                  "channel (uniform), chn-pruned-gpu")
flags.DEFINE_string("model", "./models_eval/model.ckpt",
                    "pre-trained digits ResNet-20 artifact (trained with full-prec if missing)")
flags.DEFINE_float("ft_epochs", 10.0, "epochs of the common fine-tuning (may be fractional)")
flags.DEFINE_float("ft_lr", 0.05, "initial learning rate of the common fine-tuning (cosine to "
                   "0; 0.05: the ResNet-20 helper's own fine-tuning rate at batch 64)")
flags.DEFINE_float("ft_wd", 5e-4, "weight decay of the common fine-tuning")
flags.DEFINE_integer("ft_seeds", 3, "fine-tunings of every pruned model (data orders seed, "
                     "seed+1, ...): the accuracy after fine-tuning is their mean (one seed moves "
                     "the zoo nets' accuracy by up to 5 points at <= 15 % of the FLOPs; one "
                     "test image is 0.28 point)")
flags.DEFINE_float("zoo_epochs", 30.0, "full-prec training epochs of a zoo net (lr 0.1)")
flags.DEFINE_float("flops_tol", 0.01, "relative FLOPs tolerance of the bisections")
flags.DEFINE_integer("max_bisect", 8, "most runs of a project learner's bisection")
flags.DEFINE_integer("taylor_batches", 4, "training batches whose gradients Taylor importance sums")
flags.DEFINE_integer("repeats", 70, "timed calls per model and batch size (over the rounds)")
flags.DEFINE_integer("rounds", 7, "alternating timing rounds (the median is kept): the zoo "
                     "models run in 0.2-2 ms, where one round can be off by 50 %")
flags.DEFINE_integer("latency_runs", 2, "side-by-side timings of one (net, target), a model's "
                     "latency the least of their medians (a slow spell of the guest lifted every "
                     "model of one timing by up to 1.5x)")
flags.DEFINE_integer("seed", 0, "seed of the pre-training, the learners and the fine-tuning")
flags.DEFINE_integer("threads", 2, "torch intra-op threads (training and latency)")
FLAGS = flags.FLAGS

BATCH = 64
TP_METHODS = ("tp-l2", "tp-taylor")
# a variant of this project: (learner, FLOPs option, FLOPs grow with it?, other options)
VARIANTS = {
    "chn-pruned-rmt": ("chn-pruned-rmt", "preserve_ratio", True, {}),
    "chn-pruned-rmt-trained-head": ("chn-pruned-rmt", "preserve_ratio", True,
                                    {"refit_output": False}),
    "chn-pruned-rmt-per-layer": ("chn-pruned-rmt", "preserve_ratio", True,
                                 {"prune_residual": False}),
    "dis-chn-pruned": ("dis-chn-pruned", "preserve_ratio", True,
                       {"nb_iters_block": 50, "nb_iters_layer": 30}),
    "channel": ("channel", "preserve_ratio", True, {"prune_option": "uniform"}),
    "chn-pruned-gpu": ("chn-pruned-gpu", "prune_ratio", False, {})}


# -- data and pre-trained nets ---------------------------------------------------------------
def digits(image_size: int) -> dict:
    """The project's digits split (seed 0): ``train`` / ``test`` datasets (the train one
    augments, for the learners) and unaugmented tensors ``x_train, y_train, x_test, y_test``
    (for the referee)."""
    aug = load_digits_splits(seed=0, image_size=image_size)
    plain = load_digits_splits(seed=0, image_size=image_size, augment=False)

    def tensors(ds) -> tuple:
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(xs), torch.as_tensor(ys)

    x_train, y_train = tensors(plain["train"])
    x_test, y_test = tensors(plain["test"])
    return {"train": aug["train"], "test": aug["test"], "x_train": x_train, "y_train": y_train,
            "x_test": x_test, "y_test": y_test, "shape": tuple(x_train.shape[1:])}


def resnet_helper(epochs_rat: float = 1.0):
    from nets.resnet_at_digits import Config, ModelHelper
    return ModelHelper(Config(nb_epochs_rat=epochs_rat), seed=FLAGS.seed)


def pretrained(name: str, data: dict, root: str) -> tuple[nn.Module, str]:
    """(the trained full model, its artifact path): resnet20 from ``--model`` (trained with
    the helper's full-prec schedule when missing), a zoo net trained here."""
    if name == "resnet20":
        if not os.path.isfile(FLAGS.model):
            pf.compress(resnet_helper(), learner="full-prec", full_model=FLAGS.model,
                        out_dir=os.path.join(root, "resnet20_full"), report_latency=False,
                        export_format="none", seed=FLAGS.seed)
        return pf.load_model(FLAGS.model), FLAGS.model
    from tests.zoo.nets import ZOO
    torch.manual_seed(FLAGS.seed)
    full = pf.compress(ZOO[name](), data["train"], data["test"], "full-prec",
                       out_dir=os.path.join(root, name, "full"), epochs=FLAGS.zoo_epochs,
                       lrn_rate_init=0.1, report_latency=False, export_format="none",
                       seed=FLAGS.seed)
    return full.model.eval(), full.artifact


# -- FLOPs matching --------------------------------------------------------------------------
def flops_kept(model: nn.Module, full_flops: int, shape: tuple) -> float:
    return count_flops(model, shape) / full_flops


def bisect(prune: Callable[[float], tuple], target: float, lo: float, hi: float,
           increasing: bool, first: float | None = None, steps: int = 20) -> tuple:
    """Search ``knob`` in [lo, hi] until ``prune(knob) -> (kept, result)`` is within
    ``--flops_tol`` of ``target`` (relative); returns (knob, kept, result) of the closest one
    tried. ``increasing``: kept FLOPs grow with the knob. Regula falsi once the target is
    bracketed (FLOPs are close to linear in a budget, quadratic in a ratio), bisection steps
    otherwise; integer channel counts make the kept FLOPs a step function, so the closest
    step may stay outside the tolerance."""
    best, low, high = None, None, None     # (knob, kept) on each side of the target
    knob = first if first is not None else (lo + hi) / 2
    for _ in range(steps):
        kept, result = prune(knob)
        if best is None or abs(kept - target) < abs(best[1] - target):
            best = (knob, kept, result)
        if abs(kept / target - 1) <= FLAGS.flops_tol:
            break
        if (kept < target) == increasing:
            lo, low = knob, (knob, kept)
        else:
            hi, high = knob, (knob, kept)
        if hi - lo < 1e-4:
            break
        guess = None
        if low is not None and high is not None and high[1] != low[1]:
            guess = low[0] + (target - low[1]) * (high[0] - low[0]) / (high[1] - low[1])
        elif increasing and kept > 0:      # one side known: FLOPs about proportional to it
            guess = knob * target / kept
        margin = 0.05 * (hi - lo)
        knob = guess if guess is not None and lo + margin < guess < hi - margin else (lo + hi) / 2
    return best


# -- this project ----------------------------------------------------------------------------
def project_prune(learner: str, name: str, full: nn.Module, artifact: str, data: dict,
                  target: float, root: str) -> dict:
    """``learner`` at ``target`` FLOPs: the thinned model right after selection, its knob
    value and FLOPs kept."""
    real, option, increasing, extra = VARIANTS[learner]
    full_flops = count_flops(full, data["shape"])
    runs = iter(range(10 ** 6))

    def prune(knob: float) -> tuple:
        out_dir = os.path.join(root, name, f"{learner}_{target}_{next(runs)}")
        # report_latency: a run as users start it, its dead-channel pass timed (passes.py)
        common = {option: round(knob, 6), "report_latency": True, "export_format": "none",
                  "seed": FLAGS.seed, **extra}
        if name == "resnet20":    # the helper's data; its fine-tuning cut to one step
            pf.compress(resnet_helper(1e-6), learner=real, full_model=artifact,
                        out_dir=out_dir, **common)
        else:
            pf.compress(full, data["train"], data["test"], real, out_dir=out_dir,
                        epochs=1e-6, **common)
        model = pf.load_model(os.path.join(out_dir, real, "ws", "model.ckpt"),
                              base=None if name == "resnet20" else full)
        return flops_kept(model, full_flops, data["shape"]), model

    if increasing:    # a FLOPs budget: start at the target itself
        knob, kept, model = bisect(prune, target, 0.0, 1.0, True, first=target,
                                   steps=FLAGS.max_bisect)
    else:             # a pruning ratio: start where uniform input pruning would land
        knob, kept, model = bisect(prune, target, 0.0, 0.99, False,
                                   first=1 - math.sqrt(target), steps=FLAGS.max_bisect)
    return {"method": learner, "model": model, "knob": f"{option}={knob:.4f}", "flops_kept": kept}


# -- Torch-Pruning ---------------------------------------------------------------------------
def classifier(model: nn.Module) -> nn.Module:
    """The final classifier: the last Linear module."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def taylor_grads(model: nn.Module, data: dict) -> None:
    """Sum the loss gradients of ``--taylor_batches`` training batches (eval mode: the BN
    statistics stay those of the trained model)."""
    model.eval()
    model.zero_grad()
    gen = torch.Generator().manual_seed(FLAGS.seed)
    order = torch.randperm(len(data["y_train"]), generator=gen)
    for b in range(FLAGS.taylor_batches):
        idx = order[b * BATCH:(b + 1) * BATCH]
        nn.functional.cross_entropy(model(data["x_train"][idx]), data["y_train"][idx]).backward()


def tp_prune_once(tp, full: nn.Module, method: str, ratio: float, data: dict) -> nn.Module:
    model = copy.deepcopy(full).eval()
    example = torch.zeros(1, *data["shape"])
    importance = tp.importance.GroupMagnitudeImportance(p=2) if method == "tp-l2" else \
        tp.importance.GroupTaylorImportance()
    pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=ratio,
                                  ignored_layers=[classifier(model)], global_pruning=False,
                                  round_to=None)
    if method == "tp-taylor":
        taylor_grads(model, data)
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def tp_prune(tp, method: str, full: nn.Module, data: dict, target: float) -> dict:
    """Torch-Pruning ``method`` at ``target`` FLOPs: the uniform ratio is bisected with L2
    importance (how many channels a group loses does not depend on the importance in local
    pruning), then the model is pruned with ``method`` at that ratio and counted again."""
    full_flops = count_flops(full, data["shape"])

    def prune(ratio: float) -> tuple:
        model = tp_prune_once(tp, full, "tp-l2", ratio, data)
        return flops_kept(model, full_flops, data["shape"]), model

    ratio, kept, model = bisect(prune, target, 0.0, 0.99, False, first=1 - math.sqrt(target))
    if method != "tp-l2":
        model = tp_prune_once(tp, full, method, ratio, data)
        kept = flops_kept(model, full_flops, data["shape"])
    return {"method": method, "model": model, "knob": f"pruning_ratio={ratio:.4f}",
            "flops_kept": kept}


# -- the referee -----------------------------------------------------------------------------
def accuracy(model: nn.Module, data: dict) -> float:
    model.eval()
    with torch.no_grad():
        return (model(data["x_test"]).argmax(1) == data["y_test"]).float().mean().item()


def finetune(model: nn.Module, data: dict, seed: int) -> nn.Module:
    """The common fine-tuning: SGD momentum 0.9, cosine LR from ``--ft_lr``, ``--ft_epochs``
    epochs of batch 64 in an order fixed by ``seed``."""
    x, y = data["x_train"], data["y_train"]
    steps = max(1, math.ceil(FLAGS.ft_epochs * len(y) / BATCH))
    opt = torch.optim.SGD(model.parameters(), lr=FLAGS.ft_lr, momentum=0.9,
                          weight_decay=FLAGS.ft_wd)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    model.train()
    for step in range(steps):
        if len(order) < BATCH:
            order = torch.cat([order, torch.randperm(len(y), generator=gen)])
        idx, order = order[:BATCH], order[BATCH:]
        for group in opt.param_groups:
            group["lr"] = 0.5 * FLAGS.ft_lr * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


# -- one net ---------------------------------------------------------------------------------
def measure_net(tp, name: str, root: str) -> list[dict]:
    data = digits(16 if name == "resnet20" else 8)
    full, artifact = pretrained(name, data, root)
    acc_full = accuracy(full, data)
    rows = []
    for target in (float(t) for t in FLAGS.flops_kept):
        results = []
        for learner in FLAGS.learners:
            try:
                results.append(project_prune(learner, name, full, artifact, data, target, root))
            except Exception as error:   # a learner that cannot prune this net: say why
                rows.append({"net": name, "flops_target": target, "method": learner,
                             "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
        results += [tp_prune(tp, method, full, data, target) for method in TP_METHODS]
        for r in results:
            r["acc_before_ft"] = accuracy(r["model"], data)
            pruned = r["model"]
            r["model"] = finetune(copy.deepcopy(pruned), data, FLAGS.seed)
            seeds = [accuracy(r["model"], data)] + [
                accuracy(finetune(copy.deepcopy(pruned), data, FLAGS.seed + k), data)
                for k in range(1, FLAGS.ft_seeds)]
            r["acc_after_ft"], r["acc_after_ft_seeds"] = sum(seeds) / len(seeds), seeds
            if r["method"] not in TP_METHODS:   # what the runner delivers after fine-tuning
                r["model"], _, record = fold_gathers(r["model"], None, data["shape"], PassTimer(
                    data["shape"], threads=FLAGS.threads))
                r["fold_gathers"] = record and record["kept"]
        runs = [measure_latencies({"full": full, **{r["method"]: r["model"] for r in results}},
                                  data["shape"], (1, BATCH), nb_threads=FLAGS.threads,
                                  repeats=FLAGS.repeats, rounds=FLAGS.rounds)
                for _ in range(max(1, FLAGS.latency_runs))]
        ms = {name: {key: min(run[name][key] for run in runs) for key in runs[0][name]}
              for name in runs[0]}
        for r in results:
            rows.append({"net": name, "flops_target": target,
                         "flops_kept": round(r["flops_kept"], 4), "method": r["method"],
                         "knob": r["knob"], "acc_full": round(acc_full, 4),
                         "acc_before_ft": round(r["acc_before_ft"], 4),
                         "acc_after_ft": round(r["acc_after_ft"], 4),
                         "acc_after_ft_seeds": [round(a, 4) for a in r["acc_after_ft_seeds"]],
                         "params": count_params(r["model"]),
                         "gathers_folded": r.get("fold_gathers"),
                         "ms_bs1": round(ms[r["method"]]["bs1"], 4),
                         "ms_bs64": round(ms[r["method"]]["bs64"], 4),
                         "full_ms_bs1": round(ms["full"]["bs1"], 4),
                         "full_ms_bs64": round(ms["full"]["bs64"], 4)})
    return rows


# -- the verdict -----------------------------------------------------------------------------
def goals(rows: list[dict]) -> dict:
    """The issue's two goals over ``rows`` (see the module's docstring)."""
    rows = [r for r in rows if "error" not in r]
    nets = list(dict.fromkeys(r["net"] for r in rows))
    ahead, judged = [], False
    for net in nets:
        low = sorted({r["flops_target"] for r in rows if r["net"] == net
                      and r["flops_target"] <= 0.15 + 1e-9})
        judged = judged or bool(low)

        def best(target: float, tp_side: bool) -> float:
            return max((r["acc_after_ft"] for r in rows if r["net"] == net
                        and r["flops_target"] == target and (r["method"] in TP_METHODS) == tp_side),
                       default=-1.0)
        if low and all(best(t, False) >= best(t, True) for t in low):
            ahead.append(net)
    by_method: dict[str, float] = {}
    for net, target in {(r["net"], r["flops_target"]) for r in rows}:
        same = [r for r in rows if r["net"] == net and r["flops_target"] == target]
        for p in (r for r in same if r["method"] not in TP_METHODS):
            for t in (r for r in same if r["method"] in TP_METHODS):
                by_method[p["method"]] = max(by_method.get(p["method"], 0.0),
                                             p["ms_bs1"] / t["ms_bs1"], p["ms_bs64"] / t["ms_bs64"])
    worst = max(by_method.values(), default=0.0)
    need = math.ceil(0.75 * len(nets))
    return {"ahead_after_ft_on_3_of_4_nets": len(ahead) >= need if judged else None,
            "ahead_nets": ahead, "nets_needed": need, "no_slower": worst <= 1.05,
            "worst_latency_ratio": round(worst, 3),
            "worst_latency_ratio_by_method": {m: round(v, 3) for m, v in by_method.items()}}


def print_table(rows: list[dict]) -> None:
    print(f"{'net':10} {'target':>6} {'kept':>6} {'method':27} {'acc full':>8} {'before FT':>9} "
          f"{'after FT':>8} {'params':>8} {'bs1 ms':>7} {'bs64 ms':>8}  knob")
    for r in rows:
        if "error" in r:
            print(f"{r['net']:10} {r['flops_target']:6.3f} {'-':>6} {r['method']:27} "
                  f"refused: {r['error']}")
            continue
        print(f"{r['net']:10} {r['flops_target']:6.3f} {r['flops_kept']:6.4f} {r['method']:27} "
              f"{r['acc_full']:8.4f} {r['acc_before_ft']:9.4f} {r['acc_after_ft']:8.4f} "
              f"{r['params']:8d} {r['ms_bs1']:7.3f} {r['ms_bs64']:8.3f}  {r['knob']}")


def main(argv: list) -> None:
    del argv
    try:
        import torch_pruning as tp
    except ImportError:
        sys.exit("torch-pruning is not installed: pip install torch-pruning "
                 "(or pip install -e \".[bench]\")")
    unknown = [n for n in FLAGS.learners if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown learner(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    torch.set_num_threads(FLAGS.threads)
    logging.getLogger("pocketflow").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_vs_tp_") as root:
        for name in FLAGS.nets:
            rows.extend(measure_net(tp, name, root))
    print_table(rows)
    settings = {k: getattr(FLAGS, k) for k in ("nets", "flops_kept", "learners", "ft_epochs",
                                               "ft_lr", "ft_wd", "ft_seeds", "seed", "threads",
                                               "rounds", "latency_runs")}
    settings.update(torch=torch.__version__, torch_pruning=getattr(tp, "__version__", None))
    print(json.dumps({"settings": settings, "rows": rows, "goals": goals(rows)}))


if __name__ == "__main__":
    app.run(main)
