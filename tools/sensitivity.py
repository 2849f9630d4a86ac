"""Per-layer pruning sensitivity of a saved model (``compression.sparsity.sensitivity``), from the shell.

    python -m tools.sensitivity --model=./models_eval/model.ckpt --helper=resnet_at_digits \
        --granularity=element --ratios=0.25,0.5,0.75 --max_drop=1.0 --split=val \
        --max_batches=10 --output_dir=./sensitivity [--layers=layer3,fc] \
        [--helper_config=image_size=8,batch_size_eval=200]

Each conv/linear layer (or those whose name contains one of ``--layers``) is pruned ALONE at
each ratio (``element``: smallest weights, ``filter``: output channels, ``channel``: input
channels) and the model is evaluated on the first ``--max_batches`` batches (0: all) of the
helper's held-out training split (``val``) or test set (``eval``). Written to ``--output_dir``
(each file atomically, after everything is computed):

- ``sensitivity_<granularity>.csv``: ``layer,ratio,accuracy,loss,drop,pruned,total`` per layer
  and ratio; accuracy is a fraction, ``drop`` is in accuracy POINTS (percent) below the
  unpruned accuracy, ``pruned``/``total`` count the units zeroed / in the layer;
- ``sensitivity_<granularity>.png``: accuracy vs ratio, one curve per layer;
- ``suggested_<granularity>.list``: per layer, the largest ratio dropping at most
  ``--max_drop`` points (``compression.sparsity.sensitivity.write_suggestion`` says what each
  granularity's file holds; the ``channel`` one feeds ``--learner=channel
  --cp_prune_option=list --cp_prune_list_file=<file>``).

The model is a learner's artifact (``tools.common.load_artifact``: training checkpoints are
refused); the helper is its default config with ``--helper_config=name=value,...`` overrides
(``tools.common.make_helper``), and is refused when its input shape differs from the one the
artifact records (e.g. a model trained with ``--image_size=8`` needs
``--helper_config=image_size=8``). Prints a table, the timing line
``sensitivity: N layers x M ratios in S s`` (S: wall time from flag parsing to the written
files: loading, data, every trial, outputs; not the interpreter's imports) and, as the
LAST line, one JSON object: {"granularity", "split", "nb_samples", "baseline", "layers",
"ratios", "max_drop", "suggestion", "files", "analysis_s", "wall_s"}. Bad input: one
``error: ...`` line on stderr, exit status 2, nothing written.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time

from absl import flags

from compression.sparsity.sensitivity import (GRANULARITIES, analyse_sensitivity, check_granularity,
                                              check_ratios, make_evaluator, select_layers,
                                              suggest_ratios, suggestion_layers, write_suggestion)
from tools.common import (ToolError, check_writable, load_artifact, make_helper, resolve_helper,
                          resolve_input_shape, run_tool)
from utils.checkpoint import atomic_write, atomic_write_text

flags.DEFINE_string("model", None, "model artifact (a learner's --*_save_path_eval)")
flags.DEFINE_string("helper", "resnet_at_digits",
                    "ModelHelper: a nets/ module name (resnet_at_digits) or 'pkg.module:Class'")
flags.DEFINE_list("helper_config", [], "name=value options of the helper's Config "
                  "(e.g. image_size=8,batch_size_eval=200)")
flags.DEFINE_string("granularity", "element", f"what is pruned: {', '.join(GRANULARITIES)}")
flags.DEFINE_list("ratios", ["0.25", "0.5", "0.75"], "pruning ratios in [0, 1)")
flags.DEFINE_float("max_drop", 1.0, "largest accepted accuracy drop, in POINTS (percent)")
flags.DEFINE_string("split", "val", "val (held-out training data) or eval (the test set)")
flags.DEFINE_integer("max_batches", 10, "evaluation batches per trial (0: the whole split)")
flags.DEFINE_string("output_dir", None, "directory for the CSV, the PNG and the suggestion")
flags.DEFINE_list("layers", [], "only layers whose name contains one of these substrings")
FLAGS = flags.FLAGS


def parse_ratios(texts: list[str]) -> list[float]:
    values = []
    for text in texts:
        try:
            values.append(float(text))
        except ValueError:
            raise ToolError(f"--ratios: {text!r} is not a number") from None
    try:
        return check_ratios(values)
    except ValueError as exc:
        raise ToolError(f"--ratios: {exc}") from None


def check_values(values: dict) -> list[float]:
    """Every flag that needs no file; returns the sorted ratios."""
    if not values["model"]:
        raise ToolError("--model is required (a model artifact, e.g. ./models_eval/model.ckpt)")
    if not values["output_dir"]:
        raise ToolError("--output_dir is required")
    if not values["helper"]:
        raise ToolError("--helper is required (the evaluation data comes from it)")
    try:
        check_granularity(values["granularity"])
    except ValueError as exc:
        raise ToolError(f"--granularity: {exc}") from None
    ratios = parse_ratios(values["ratios"])
    if not values["max_drop"] >= 0:
        raise ToolError(f"--max_drop: must be >= 0 accuracy points, got {values['max_drop']}")
    if values["split"] not in ("val", "eval"):
        raise ToolError(f"--split: must be val or eval, got {values['split']!r}")
    if values["max_batches"] < 0:
        raise ToolError(f"--max_batches: must be >= 0 (0: all), got {values['max_batches']}")
    return ratios


def csv_text(result) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["layer", "ratio", "accuracy", "loss", "drop", "pruned", "total"],
                            lineterminator="\n")
    writer.writeheader()
    for row in result.rows():
        writer.writerow({**row, **{k: f"{row[k]:.6f}" for k in ("accuracy", "loss", "drop")}})
    return out.getvalue()


def png_bytes(result, title: str) -> bytes:
    """Accuracy (%) vs ratio, one curve per layer, the unpruned accuracy dashed (Agg backend)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = matplotlib.colormaps["tab20"].colors
    for i, (name, trials) in enumerate(result.layers.items()):
        ax.plot(list(trials), [100 * t["accuracy"] for t in trials.values()], marker="o",
                markersize=3, label=name, color=colors[i % len(colors)],
                linestyle=("-", "--", ":", "-.")[i // len(colors) % 4])
    ax.axhline(100 * result.baseline["accuracy"], color="black", linestyle="--", label="unpruned")
    ax.set_xlabel(f"pruning ratio ({result.granularity})")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if len(result.layers) > 12 else 1, loc="center left",
              bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def print_table(result, suggestion: dict) -> None:
    head = f"{'layer':<28}" + "".join(f"{r:>16g}" for r in result.ratios) + f"{'suggested':>11}"
    print(f"unpruned: accuracy {100 * result.baseline['accuracy']:.2f}%, "
          f"loss {result.baseline['loss']:.4f}; cells: accuracy % (drop in points)")
    print(head)
    for name, trials in result.layers.items():
        cells = "".join(f"{100 * t['accuracy']:>8.2f} ({result.drop(name, r):>5.2f})"
                        for r, t in trials.items())
        print(f"{name:<28}{cells}{suggestion[name]:>11g}")


def run(values: dict) -> dict:
    start = time.perf_counter()
    ratios = check_values(values)
    granularity = values["granularity"]
    helper = make_helper(resolve_helper(values["helper"]), values["helper_config"])
    model, saved = load_artifact(values["model"], helper)
    input_shape = resolve_input_shape(None, helper, saved.get("meta"), values["model"])
    try:
        layers = select_layers(model, values["layers"] or None)
    except ValueError as exc:
        raise ToolError(f"--layers: {exc}") from None
    names = suggestion_layers(model, granularity, input_shape)  # a GraphError comes before the work
    files = {"csv": os.path.join(values["output_dir"], f"sensitivity_{granularity}.csv"),
             "png": os.path.join(values["output_dir"], f"sensitivity_{granularity}.png"),
             "list": os.path.join(values["output_dir"], f"suggested_{granularity}.list")}
    for path in files.values():
        check_writable(path)
    evaluate = make_evaluator(helper, values["split"], values["max_batches"])
    result = analyse_sensitivity(model, evaluate, ratios, granularity, values["layers"] or None)
    suggestion = suggest_ratios(result, values["max_drop"])
    title = (f"{helper.model_name} on {helper.dataset_name}: {granularity} sensitivity "
             f"({values['split']}, {evaluate.nb_samples} samples)")
    csv_data, png_data = csv_text(result), png_bytes(result, title)
    atomic_write_text(files["csv"], csv_data)
    atomic_write(files["png"], lambda handle: handle.write(png_data))
    write_suggestion(files["list"], result, suggestion, names, values["max_drop"])
    print_table(result, suggestion)
    wall = time.perf_counter() - start
    print(f"sensitivity: {len(layers)} layers x {len(ratios)} ratios in {wall:.1f} s")
    return {"granularity": granularity, "split": values["split"],
            "nb_samples": evaluate.nb_samples, "baseline": result.baseline,
            "layers": len(layers), "ratios": ratios, "max_drop": values["max_drop"],
            "suggestion": suggestion, "files": files, "analysis_s": round(result.wall_s, 3),
            "wall_s": round(wall, 3)}


def main() -> None:
    print(json.dumps(run(FLAGS.flag_values_dict())))


def cli() -> None:
    """``pocketflow-sensitivity``: the same as ``python -m tools.sensitivity``."""
    run_tool(__name__, main, errors=(ValueError, OSError))


if __name__ == "__main__":
    cli()
