"""Draw a saved model's torch.fx graph: Graphviz DOT text, rendered by ``dot`` (``tools.model_draw``).

    python -m tools.draw --model=models_eval/model.ckpt [--helper=resnet_at_digits | --input_shape=1,8,8]
        [--out=model.dot] [--formats=png,svg]

Always writes the ``.dot`` file (``--out``; default: beside the model, ``<model>.dot``), then
renders it into ``<out stem>.<format>`` for each of ``--formats`` with the ``dot`` program of
Graphviz. Without ``--formats`` it renders a PNG when ``dot`` is installed, and otherwise stops
after the DOT file (exit 0, with the install commands). ``--formats`` given explicitly without
``dot`` on PATH: the DOT file is kept and the tool exits with status 2 and the install commands.
"""
from __future__ import annotations

import os
import shutil

from absl import flags

from tools.common import (base_from_flags, check_writable, define_input_flags, helper_from_flags,
                          load_artifact, resolve_input_shape, run_tool)
from tools.model_draw import INSTALL_HINT, GraphvizUnavailable, count_nodes_edges, render, write_dot

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "model artifact (a learner's --*_save_path_eval)")
flags.DEFINE_string("out", "", "the .dot file to write (default: <model without extension>.dot)")
flags.DEFINE_list("formats", ["png"], "formats rendered by Graphviz's dot (png, svg, pdf...; "
                  "empty: only the .dot file); when not given, png only if dot is installed")
define_input_flags(FLAGS)
flags.mark_flag_as_required("model")


def main() -> None:
    values = FLAGS.flag_values_dict()
    out = FLAGS.out or os.path.splitext(FLAGS.model)[0] + ".dot"
    check_writable(out)
    helper = helper_from_flags(values)   # first: its module registers the user's nets
    model, obj = load_artifact(FLAGS.model, helper, base_from_flags(values))
    shape = resolve_input_shape(FLAGS.input_shape, helper, obj.get("meta"),
                                FLAGS.model)
    nb_nodes, nb_edges = count_nodes_edges(write_dot(model, shape, out, name=os.path.basename(FLAGS.model)))
    print(f"wrote {out} ({nb_nodes} nodes, {nb_edges} edges)")
    if not FLAGS["formats"].present and shutil.which("dot") is None:
        print(f"not rendered: Graphviz's dot is not installed ({INSTALL_HINT}); then run "
              f"dot -Tpng {out} -o {os.path.splitext(out)[0]}.png")
        return
    for fmt in FLAGS.formats:
        print(f"wrote {render(out, fmt)}")


def cli() -> None:
    """``pocketflow-draw``: the same as ``python -m tools.draw``."""
    run_tool(__name__, main, errors=(GraphvizUnavailable,))


if __name__ == "__main__":
    cli()
