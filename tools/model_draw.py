"""A model's torch.fx graph as Graphviz DOT text, rendered by the ``dot`` program if present.

``to_dot(model, input_shape)`` traces the model (``compression.graph.trace``: an untraceable
model raises its ``GraphError``), propagates one zero input of ``input_shape`` (batch 1)
with ``ShapeProp`` and writes a ``digraph`` with one node per graph node:

- the input (``placeholder``) and the ``output``;
- every module call, labelled ``<qualified name>\\n<class>\\n<output shape>`` (e.g.
  ``layer1.0.conv1\\nConv2d\\n1x16x8x8``);
- every function or method call (``add`` of a residual, ``cat``, ``flatten``, ``relu``...),
  labelled ``<function name>\\n<output shape>``; attribute reads (``get_attr``) by their name;

and one edge per use of a node's output by another node (``node.all_input_nodes``). Node ids
are ``n0``, ``n1``... in graph order; labels are DOT-escaped. Module nodes are boxes filled
by kind (conv, linear, normalisation, other), functions ellipses.

``render(dot_path, fmt)`` runs ``dot -T<fmt>`` (png, svg, pdf...) into ``<dot_path stem>.<fmt>``
atomically; without the ``dot`` program on PATH it raises ``GraphvizUnavailable`` with the
install commands, and the ``.dot`` file stays for later.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Sequence

from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from compression.graph.ops import shaped_graph
from utils.checkpoint import atomic_write_text

INSTALL_HINT = ("install Graphviz: apt-get install graphviz (Debian/Ubuntu), conda install graphviz, "
                "or brew install graphviz (macOS)")
FILL = {"conv": "#cfe2f3", "linear": "#d9ead3", "norm": "#fff2cc", "module": "#eeeeee"}


class GraphvizUnavailable(RuntimeError):
    """The ``dot`` program is not on PATH (the DOT text is still written)."""


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _shape(node: fx.Node) -> str:
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return ""
    if hasattr(meta, "shape"):  # TensorMetadata (itself a NamedTuple)
        return "x".join(map(str, meta.shape))
    if isinstance(meta, (tuple, list)):  # several outputs
        return ", ".join("x".join(map(str, m.shape)) for m in meta if hasattr(m, "shape"))
    return ""


def _module_kind(module: nn.Module) -> str:
    if isinstance(module, _ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (_BatchNorm, nn.LayerNorm, nn.GroupNorm)):
        return "norm"
    return "module"


def _node_style(node: fx.Node, modules: dict) -> tuple[str, str]:
    """(label lines joined by \\n, extra DOT attributes) of one node."""
    shape = _shape(node)
    if node.op == "placeholder":
        return f"input\n{shape}", 'shape=invhouse, style=filled, fillcolor="#f4cccc"'
    if node.op == "output":
        return "output", 'shape=house, style=filled, fillcolor="#f4cccc"'
    if node.op == "call_module":
        module = modules[node.target]
        label = f"{node.target}\n{type(module).__name__}\n{shape}"
        return label, f'shape=box, style="rounded,filled", fillcolor="{FILL[_module_kind(module)]}"'
    if node.op == "get_attr":
        return f"{node.target}\n{shape}", "shape=note"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__",
                                                                      str(node.target))
    return f"{name}\n{shape}", "shape=ellipse"


def to_dot(model: nn.Module, input_shape: Sequence[int], name: str = "model") -> str:
    """DOT text of ``model``'s fx graph (see the module docstring)."""
    graph_module = shaped_graph(model, input_shape)
    modules = dict(graph_module.named_modules())
    ids = {node: f"n{i}" for i, node in enumerate(graph_module.graph.nodes)}
    lines = [f'digraph "{_escape(name)}" {{', "  rankdir=TB;",
             '  node [fontname="Helvetica", fontsize=10];', '  edge [color="#555555"];']
    for node in graph_module.graph.nodes:
        label, style = _node_style(node, modules)
        text = _escape(label.strip()).replace("\n", "\\n")  # DOT's line break
        lines.append(f'  {ids[node]} [label="{text}", {style}];')
    for node in graph_module.graph.nodes:
        for source in node.all_input_nodes:
            lines.append(f"  {ids[source]} -> {ids[node]};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(model: nn.Module, input_shape: Sequence[int], path: str, name: str = "model") -> str:
    """``to_dot`` written atomically to ``path``; returns the DOT text."""
    text = to_dot(model, input_shape, name)
    atomic_write_text(path, text)
    return text


def count_nodes_edges(text: str) -> tuple[int, int]:
    """(nodes, edges) of DOT text written by ``to_dot``."""
    lines = [line.strip() for line in text.splitlines()]
    return (sum(bool(re.match(r"n\d+ \[", line)) for line in lines),
            sum(bool(re.match(r"n\d+ -> n\d+;", line)) for line in lines))


def render(dot_path: str, fmt: str = "png", out_path: str | None = None) -> str:
    """``dot -T<fmt> dot_path`` into ``out_path`` (default: the .dot path with suffix ``.fmt``)."""
    out_path = out_path or os.path.splitext(dot_path)[0] + f".{fmt}"
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizUnavailable(f"rendering {out_path} needs Graphviz's `dot` program, which is not "
                                  f"on PATH: {INSTALL_HINT}. The DOT file {dot_path} is written; render "
                                  f"it later with: dot -T{fmt} {dot_path} -o {out_path}")
    directory = os.path.dirname(os.path.abspath(out_path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f".{fmt}", dir=directory)
    os.close(fd)
    try:
        result = subprocess.run([exe, f"-T{fmt}", dot_path, "-o", tmp], capture_output=True, text=True)
        if result.returncode != 0:
            raise GraphvizUnavailable(f"dot -T{fmt} {dot_path} failed (exit {result.returncode}): "
                                      f"{result.stderr.strip()}")
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out_path
