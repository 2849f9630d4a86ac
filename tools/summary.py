"""Per-layer summary of a saved model: shapes, parameters, MACs and sparsity (``utils.model_summary``).

    python -m tools.summary --model=models_eval/model.ckpt [--helper=resnet_at_digits
        [--helper_config=image_size=8] | --input_shape=1,8,8] [--csv=out.csv] [--xlsx=out.xlsx]

Prints the aligned table (one row per conv / linear / batch norm, then the total and the
FLOPs = 2 x MACs line); ``--csv`` / ``--xlsx`` also write it (same cells; xlsx needs openpyxl:
``pip install -e .[tools]``). The input shape defaults to the one the artifact records.
"""
from __future__ import annotations

from absl import flags

from tools.common import (base_from_flags, check_writable, define_input_flags, helper_from_flags,
                          load_artifact, resolve_input_shape, run_tool)
from utils.model_summary import XlsxUnavailable, format_table, summarize, write_csv, write_xlsx

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "model artifact (a learner's --*_save_path_eval)")
flags.DEFINE_string("csv", "", "write the table as CSV here")
flags.DEFINE_string("xlsx", "", "write the table as an Excel sheet here (needs openpyxl)")
define_input_flags(FLAGS)
flags.mark_flag_as_required("model")


def main() -> None:
    values = FLAGS.flag_values_dict()
    for path in (FLAGS.csv, FLAGS.xlsx):
        if path:
            check_writable(path)
    if FLAGS.xlsx:
        try:
            import openpyxl  # noqa: F401
        except ImportError as exc:
            raise XlsxUnavailable("--xlsx needs openpyxl: pip install -e .[tools]") from exc
    helper = helper_from_flags(values)   # first: its module registers the user's nets
    model, obj = load_artifact(FLAGS.model, helper, base_from_flags(values))
    shape = resolve_input_shape(FLAGS.input_shape, helper, obj.get("meta"),
                                FLAGS.model)
    summary = summarize(model, shape)
    print(f"{FLAGS.model}: {type(model).__name__}")
    print(format_table(summary))
    if FLAGS.csv:
        print(f"wrote {write_csv(summary, FLAGS.csv)}")
    if FLAGS.xlsx:
        print(f"wrote {write_xlsx(summary, FLAGS.xlsx)}")


def cli() -> None:
    """``pocketflow-summary``: the same as ``python -m tools.summary``."""
    run_tool(__name__, main, errors=(XlsxUnavailable,))


if __name__ == "__main__":
    cli()
