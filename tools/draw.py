"""Draw a saved model's torch.fx graph: Graphviz DOT text, rendered by ``dot`` (``utils.model_draw``).

    python -m tools.draw --model=models_eval/model.ckpt [--helper=resnet_at_digits | --input_shape=1,8,8]
        [--out=model.dot] [--formats=png,svg]

Always writes the ``.dot`` file (``--out``; default: beside the model, ``<model>.dot``), then
renders it into ``<out stem>.<format>`` for each of ``--formats`` (empty: DOT only) with the
``dot`` program of Graphviz. Without ``dot`` on PATH the DOT file is kept and the tool exits
with status 2 and the install commands (apt-get / conda / brew install graphviz).
"""
from __future__ import annotations

import os

from absl import app, flags

from tools.common import (check_writable, define_input_flags, helper_from_flags, load_artifact,
                          resolve_input_shape, tool_main)
from utils.model_draw import GraphvizUnavailable, count_nodes_edges, render, write_dot

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "model artifact (a learner's --*_save_path_eval)")
flags.DEFINE_string("out", "", "the .dot file to write (default: <model without extension>.dot)")
flags.DEFINE_list("formats", ["png"], "formats rendered by Graphviz's dot (png, svg, pdf...; "
                  "empty: only the .dot file)")
define_input_flags(FLAGS)
flags.mark_flag_as_required("model")


def main() -> None:
    values = FLAGS.flag_values_dict()
    out = FLAGS.out or os.path.splitext(FLAGS.model)[0] + ".dot"
    check_writable(out)
    model, obj = load_artifact(FLAGS.model)
    shape = resolve_input_shape(FLAGS.input_shape, helper_from_flags(values), obj.get("meta"),
                                FLAGS.model)
    nb_nodes, nb_edges = count_nodes_edges(write_dot(model, shape, out, name=os.path.basename(FLAGS.model)))
    print(f"wrote {out} ({nb_nodes} nodes, {nb_edges} edges)")
    for fmt in FLAGS.formats:
        print(f"wrote {render(out, fmt)}")


if __name__ == "__main__":
    app.run(tool_main(main, errors=(GraphvizUnavailable,)))
