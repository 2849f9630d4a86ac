"""Is the compressed model fast where users deploy it? chn-pruned-rmt on ResNet-20 / digits:
the README job's model (its defaults), the same with PocketFlow's per-layer selection, the
hand-found allocation and the NetAdapt search under a latency budget, and width-rule and floor
runs: thinned / full latency side by side, in eager torch, onnxruntime and ExecuTorch (.pte),
at batch 64 and 1, with issue 40's ``goals``.

Each run is one ``learners.launch.run`` from the same pre-trained model (trained by the first
run if ``--model`` is missing) with ``--export_format=both``; the full model is exported the
same way (``deployment.pipeline.deploy``). Latency: ``deployment.runners.time_runners``, every
file in each of ``--rounds`` rounds, the starting file rotated; each ratio is the median over
rounds of the ratio within a round; ``--threads`` threads in every runtime; this process's
malloc tuned (``utils.malloc``, as the entry scripts do). Eager torch is timed in
``--eager_processes`` fresh child processes (rounds pooled), with the tuning and again with
``PF_MALLOC_TUNING=0`` (glibc's defaults: the activations' pages mapped and faulted in again on
every pass, the setting of the ratios this project reported before).

Runs (``--runs``): ``readme`` (no flag: the README job), ``readme_per_layer``
(``--cpr_prune_residual=false``), ``netadapt`` (``--cpr_prune_ratio_prtl=netadapt`` under a
latency budget of ``--netadapt_budget`` at batch 64, SIMD-block widths), ``per_layer_x8``
(each layer's own channels, counts multiples of 8: issue 26's case), ``residual_x8``
(``--cpr_prune_residual``: whole residual channels), and ``residual_block`` (also
``--cpr_channel_multiple=-1``: counts up to this CPU's SIMD block exact, larger ones whole
blocks), at ``--ratio``; ``floor`` (residual, ratio 0.9);
``residual_alloc`` (residual, ``--cpr_prune_ratio_prtl=list``: the stage widths
``--alloc_widths``, by default the allocation ``benchmarks/latency_vs_width.py --search``
timed fastest at about 44 % of the FLOPs, written as each reader's kept fraction).

Eager forms (``--eager_forms``, both models alike, tuned malloc): ``folded`` (BatchNorm folded
into its conv, ``compression.surgery.inference.fold_batchnorm``) and ``channels_last``.

Prints a table, the goals, then, as the LAST line, one JSON object:
{"goals", "threads", "rounds", "full_ms": {runtime: {"bs64", "bs1"}}, "full_ms_eager_untuned_malloc",
 "full_ms_eager_forms": {form: {..}}, "runs": {run: {"flags", "flops_ratio",
 "accuracy_before_ft", "accuracy", "widths", "ms": {runtime: {..}},
 "ratio": {runtime: {"bs64", "bs1"}}, "ratio_eager_untuned_malloc": {..},
 "ratio_eager_forms": {form: {..}}}}}

    python benchmarks/thinned_latency.py [--runs=...] [--rounds=9] [--ft_epochs_rat=0.3]
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch
from absl import app, flags
from bench_common import learner_values

from compression.artifacts import load_model
from compression.surgery.inference import fold_batchnorm
from deployment.formats import formats_for
from deployment.pipeline import deploy, eval_batches
from deployment.runners import runner_for, time_runners
from learners.launch import run
from nets.resnet_at_digits import Config, ModelHelper
from utils.model_stats import count_flops

flags.DEFINE_string("model", "./models_eval/model.ckpt",
                    "pre-trained digits ResNet-20 artifact (trained by the first run if missing)")
flags.DEFINE_list("runs", ["readme", "readme_per_layer", "residual_alloc", "netadapt"],
                  "readme, readme_per_layer, netadapt, per_layer_x8, residual_x8, "
                  "residual_block, residual_alloc, floor")
flags.DEFINE_list("alloc_widths", ["6", "16", "64"],
                  "residual_alloc: the kept widths of the three stages (full: 16, 32, 64)")
flags.DEFINE_float("ratio", 0.3, "--cpr_prune_ratio of the three width-rule runs")
flags.DEFINE_float("netadapt_budget", 0.55, "netadapt: the latency budget at batch 64")
flags.DEFINE_float("ft_epochs_rat", 0.3, "--nb_epochs_rat of the fine-tuning")
flags.DEFINE_integer("rounds", 9, "timing rounds (every file in each, the first rotated)")
flags.DEFINE_integer("repeats", 180, "timed calls per file and batch size over all rounds")
flags.DEFINE_integer("threads", 2, "intra-op threads of every runtime")
flags.DEFINE_integer("eager_processes", 3, "fresh processes the eager times come from")
flags.DEFINE_list("eager_forms", ["folded", "channels_last"],
                  "eager forms timed besides the artifact as saved (BN folded into its conv in "
                  "both models; both models channels_last)")
flags.DEFINE_list("time_eager", [], "internal: time these artifacts (eager) and print JSON")
flags.DEFINE_enum("eager_form", "plain", ["plain", "folded", "channels_last"],
                  "internal: the form --time_eager times")
FLAGS = flags.FLAGS
SHAPE = ModelHelper().input_shape
BATCHES = (64, 1)


def write_alloc_list(outdir: str) -> str:
    """The ratio list of ``residual_alloc``: every conv / linear layer reading a stage's
    channels (ResNet-20's stages are 16, 32 and 64 wide) keeps ``--alloc_widths`` of them."""
    kept = dict(zip((16, 32, 64), (int(w) for w in FLAGS.alloc_widths)))
    model = ModelHelper(Config()).build_model()
    reads = {name: getattr(m, "in_channels", getattr(m, "in_features", 0))
             for name, m in model.named_modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    lines = [f"{name} {kept[c] / c:.6f}" for name, c in reads.items() if c in kept]
    path = os.path.join(outdir, "alloc_ratio.list")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def configs(alloc_list: str = "") -> dict:
    r = FLAGS.ratio
    return {"residual_alloc": ["--cpr_prune_residual", "--cpr_prune_ratio_prtl=list",
                               f"--cpr_prune_list_file={alloc_list}"],
            "per_layer_x8": ["--cpr_prune_residual=false", f"--cpr_prune_ratio={r}",
                             "--cpr_channel_multiple=8"],
            "residual_x8": ["--cpr_prune_residual", f"--cpr_prune_ratio={r}",
                            "--cpr_channel_multiple=8"],
            "residual_block": ["--cpr_prune_residual", f"--cpr_prune_ratio={r}",
                               "--cpr_channel_multiple=-1"],
            "floor": ["--cpr_prune_residual", "--cpr_prune_ratio=0.9"],
            "readme": [], "readme_per_layer": ["--cpr_prune_residual=false"],
            "netadapt": ["--cpr_prune_ratio_prtl=netadapt", "--cpr_budget_type=latency",
                         f"--cpr_preserve_ratio={FLAGS.netadapt_budget}",
                         "--cpr_latency_batch=64", "--cpr_channel_multiple=-1"]}


GOALS = {"bs64": 0.60, "bs1": 0.75}    # issue 40: the README job's model, every runtime


def goals(runs: dict) -> dict:
    """Issue 40's goals over the runs there are: the README job's model (``readme``) at most
    ``GOALS`` of the full model's latency in every runtime and within half a point of its
    accuracy; ``netadapt``'s eager batch-64 ratio within 0.02 of the hand-found allocation's
    (``residual_alloc``), measured in the same rounds."""
    out = {}
    if "readme" in runs:
        r = runs["readme"]
        out["readme_fast_everywhere"] = all(r["ratio"][rt][b] <= limit for rt in r["ratio"]
                                            for b, limit in GOALS.items())
        out["readme_within_half_a_point"] = r["accuracy"] >= r["accuracy_full"] - 0.005
    if "netadapt" in runs and "residual_alloc" in runs:
        out["netadapt_within_0.02_of_hand_allocation"] = (
            runs["netadapt"]["ratio"]["eager"]["bs64"]
            <= runs["residual_alloc"]["ratio"]["eager"]["bs64"] + 0.02)
    return out


def widths(model: torch.nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def one_run(name: str, outdir: str) -> dict:
    extra = configs(write_alloc_list(outdir) if name == "residual_alloc" else "")[name]
    values = learner_values(ModelHelper, FLAGS.model, os.path.join(outdir, name), 0,
                            FLAGS.ft_epochs_rat,
                            {"cpr": ("save_path", "save_path_eval", "save_path_ws")},
                            ["--learner=chn-pruned-rmt", "--export_format=both", *extra])
    report = run(ModelHelper, values)
    thinned, _ = load_model(values["cpr_save_path_eval"])
    files = {"eager": values["cpr_save_path_eval"]}
    files.update({entry["runtime"]: entry["path"] for entry in report["deploy"].values()})
    return {"flags": extra, "files": files, "accuracy_full": report["accuracy"]["full"],
            "flops_ratio": round(report["flops"]["compressed"] / report["flops"]["full"], 4),
            "accuracy_before_ft": report["accuracy"]["compressed_before_finetune"],
            "accuracy": report["accuracy"]["compressed"], "widths": widths(thinned)}


def timed_rounds(runners: dict) -> list[dict]:
    """``--rounds`` rounds of ``{name: {"bs64": ms, "bs1": ms}}``, every runner timed in each
    (``--repeats / --rounds`` calls after warm-up), the first one rotated: ratios are taken
    within a round, so a slow spell of the machine (this 2-vCPU guest has them: batch-1 times
    double for seconds at a time) hits both sides of a ratio alike."""
    names, rounds = list(runners), []
    for r in range(FLAGS.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        rounds.append(time_runners({n: runners[n] for n in order}, SHAPE, BATCHES, FLAGS.threads,
                                   repeats=max(1, FLAGS.repeats // FLAGS.rounds), rounds=1))
    return rounds


def median_ms(rounds: list[dict], name) -> dict:
    return {b: statistics.median(r[name][f"bs{b}"] for r in rounds) for b in BATCHES}


def ratios(rounds: list[dict], name, full) -> dict:
    """Median over rounds of the within-round ratio name / full."""
    return {f"bs{b}": round(statistics.median(r[name][f"bs{b}"] / r[full][f"bs{b}"]
                                              for r in rounds), 3) for b in BATCHES}


def eager_rounds(paths: list[str], tuned: bool, form: str = "plain") -> list[dict]:
    """Per-round eager ms of ``paths`` in fresh child processes (``--eager_processes`` of them,
    rounds pooled), in ``form``, with the malloc tuning or glibc's defaults: on this guest a process
    sometimes runs eager batch-1 passes at half speed for its whole life (seen with onnxruntime
    sessions in the process and without), so fresh processes and pooled rounds keep one
    process's state from deciding the eager ratios."""
    return [r for _ in range(FLAGS.eager_processes) for r in _child_rounds(paths, tuned, form)]


def _child_rounds(paths: list[str], tuned: bool, form: str = "plain") -> list[dict]:
    env = {**os.environ, "PF_MALLOC_TUNING": "1" if tuned else "0"}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), f"--rounds={FLAGS.rounds}",
                          f"--repeats={FLAGS.repeats}", f"--threads={FLAGS.threads}",
                          f"--time_eager={','.join(paths)}", f"--eager_form={form}"],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def eager_runner(path: str):
    """``x -> logits`` of the artifact at ``path`` in the ``--eager_form``: as saved, with its
    BatchNorms folded (``compression.surgery.inference.fold_batchnorm``), or channels_last."""
    model, _ = load_model(path)
    model = model.eval()
    if FLAGS.eager_form == "folded":
        model = fold_batchnorm(model)
    to = (lambda x: x.contiguous(memory_format=torch.channels_last)) \
        if FLAGS.eager_form == "channels_last" else (lambda x: x)
    if FLAGS.eager_form == "channels_last":
        model = model.to(memory_format=torch.channels_last)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(to(x))
    return forward


def time_eager_only() -> None:
    print(json.dumps(timed_rounds({path: eager_runner(path) for path in FLAGS.time_eager})))


def main(argv: list) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    if FLAGS.time_eager:
        return time_eager_only()
    with tempfile.TemporaryDirectory(prefix="bench_thinned_") as outdir:
        runs = {name: one_run(name, outdir) for name in FLAGS.runs}
        original, _ = load_model(FLAGS.model)
        batches = eval_batches(ModelHelper(Config()))
        exported = deploy({"fp32": (original, os.path.join(outdir, "full", "model"))},
                          formats_for("both"), batches, batches[0][0][:2])
        full_files = {"eager": FLAGS.model}
        full_files.update({e["runtime"]: e["path"] for e in exported.values()})
        files = {"full": full_files, **{name: r["files"] for name, r in runs.items()}}
        by_path = {paths["eager"]: name for name, paths in files.items()}

        def named(rounds: list[dict]) -> list[dict]:
            return [{f"{by_path[p]}/eager": t for p, t in r.items()} for r in rounds]

        eager = named(eager_rounds(list(by_path), tuned=True))
        untuned_rounds = named(eager_rounds(list(by_path), tuned=False))
        forms = {form: named(eager_rounds(list(by_path), True, form)) for form in FLAGS.eager_forms}
        rounds = timed_rounds({f"{name}/{rt}": runner_for(p, FLAGS.threads)
                               for name, paths in files.items() for rt, p in paths.items()
                               if rt != "eager"})

    def source(rt: str) -> list[dict]:
        return eager if rt == "eager" else rounds

    full_ms = {rt: {f"bs{b}": v for b, v in median_ms(source(rt), f"full/{rt}").items()}
               for rt in full_files}
    untuned = {f"bs{b}": v for b, v in median_ms(untuned_rounds, "full/eager").items()}
    for name, r in runs.items():
        r["ms"] = {rt: {f"bs{b}": v for b, v in median_ms(source(rt), f"{name}/{rt}").items()}
                   for rt in r["files"]}
        r["ratio"] = {rt: ratios(source(rt), f"{name}/{rt}", f"full/{rt}") for rt in r["files"]}
        r["ratio_eager_untuned_malloc"] = ratios(untuned_rounds, f"{name}/eager", "full/eager")
        r["ratio_eager_forms"] = {form: ratios(rs, f"{name}/eager", "full/eager")
                                  for form, rs in forms.items()}
        del r["files"]
    flops_full = count_flops(original, SHAPE)
    print(f"\nfull model: {flops_full:,} FLOPs; ms " + ", ".join(
        f"{rt} {v['bs64']:.3f} / {v['bs1']:.3f}" for rt, v in full_ms.items())
        + f" (bs64 / bs1); untuned-malloc eager {untuned['bs64']:.3f} / {untuned['bs1']:.3f}")
    runtimes = list(full_ms)
    head = "".join(f"{rt + ' 64':>14}{'1':>7}" for rt in runtimes)
    extra = ["untuned", *FLAGS.eager_forms]
    print(f"{'run':<16}{'FLOPs':>7}{'acc':>8}{head}"
          + "".join(f"{e + ' 64':>{max(12, len(e) + 4)}}{'1':>7}" for e in extra) + "  widths")
    for name, r in runs.items():
        cells = "".join(f"{r['ratio'][rt]['bs64']:>14.3f}{r['ratio'][rt]['bs1']:>7.3f}"
                        for rt in runtimes)
        more = [r["ratio_eager_untuned_malloc"], *r["ratio_eager_forms"].values()]
        cells += "".join(f"{m['bs64']:>{max(12, len(e) + 4)}.3f}{m['bs1']:>7.3f}"
                         for e, m in zip(extra, more))
        print(f"{name:<16}{r['flops_ratio']:>7.3f}{r['accuracy']:>8.4f}{cells}  {r['widths']}")
    print("goals:", json.dumps(goals(runs)))
    print(json.dumps({"goals": goals(runs), "threads": FLAGS.threads, "rounds": FLAGS.rounds,
                      "full_ms": full_ms,
                      "full_ms_eager_untuned_malloc": untuned,
                      "full_ms_eager_forms": {form: {f"bs{b}": v for b, v in
                                                     median_ms(rs, "full/eager").items()}
                                              for form, rs in forms.items()},
                      "runs": runs}))


if __name__ == "__main__":
    app.run(main)
