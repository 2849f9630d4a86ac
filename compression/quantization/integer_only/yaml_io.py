"""Self-describing YAML files of an integer program (``export_yaml`` / ``load_yaml``).

Top level (the ``about`` field repeats the arithmetic in words)::

    format: pocketflow-torch/integer-program     version: 1
    act_bits, weight_bits, rounding ("single" | "gemmlowp"), sparse ("dense" | "coo" | "csr")
    input:  {name, shape (per sample, e.g. [1, 8, 8]), scale, zero_point}
    output: {node, scale, zero_point}        # logits = scale * (q - zero_point)
    nodes:  [...]                            # in execution order

Each node: ``name``, ``op`` (conv2d | linear | add | avg_pool | max_pool | flatten | clamp),
``inputs`` (names of earlier nodes or of the input), ``in_shapes`` / ``out_shape`` (per sample,
as calibrated), ``attrs`` (conv: stride, padding, dilation, groups; pools: kernel, stride,
padding, [dilation | count]; add: left_shift; flatten: start_dim, end_dim),
``input_scale`` / ``input_zero_point`` (one per input), ``output_scale`` /
``output_zero_point``, ``clamp: [lo, hi]`` (codes), and where the op has them ``M0`` /
``shift`` (conv/linear: one per output channel; add also ``M0_a``, ``shift_a``, ``M0_b``,
``shift_b``), ``weight``, ``weight_scale`` (per output channel), ``bias`` (int32, scale
``input_scale * weight_scale``), ``in_index`` (gather layers: input channels kept, in order).

``weight`` is ``{layout, shape, ...}``: ``dense`` -> ``values`` (nested lists of ``shape``);
``coo`` -> ``indices`` (ascending positions in the weight flattened row-major) + ``values``;
``csr`` -> over the weight viewed as ``(shape[0], -1)``: ``indptr`` (``shape[0] + 1`` row
starts), ``indices`` (column of each value, ascending within a row) + ``values``.
Files are written atomically (``yaml_text`` writes and reads the long integer lists quickly);
loading validates every field and rebuilds a runnable program.
"""
from __future__ import annotations

import math
import os

import torch
import yaml

from compression.quantization.integer_only.fixed_point import ROUNDINGS
from compression.quantization.integer_only.program import OPS, IntegerProgram, QNode
from compression.quantization.integer_only.yaml_text import FlowList, Literal, dump_text, load_text
from utils.checkpoint import atomic_write_text

FORMAT = "pocketflow-torch/integer-program"
VERSION = 1
LAYOUTS = ("dense", "coo", "csr")
_TENSOR_KEYS = {"m0": "M0", "shift": "shift", "m0_a": "M0_a", "shift_a": "shift_a",
                "m0_b": "M0_b", "shift_b": "shift_b", "bias": "bias", "in_index": "in_index"}
ABOUT = """\
Integer-only inference. Activations are unsigned codes q (real value = scale * (q - zero_point)).
x = q_in - input_zero_point. requantize(acc, M0, shift) = round(acc * M0 * 2^-(31 + shift)):
rounding 'single': RoundingDivideByPOT(acc * M0, 31 + shift) (halves away from zero);
'gemmlowp': RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc << max(-shift, 0), M0),
max(shift, 0)). conv2d/linear: acc = sum(x * weight) + bias (zero padding of x; in_index first
selects input channels); q = clamp(output_zero_point + requantize(acc, M0[c], shift[c]), clamp).
add: a = requantize(x_a << left_shift, M0_a, shift_a), b likewise; q = clamp(output_zero_point +
requantize(a + b, M0, shift)). avg_pool: acc = window sum of x (zero padding), q = clamp(
output_zero_point + requantize(acc, M0, shift)). max_pool / flatten / clamp act on the codes.
"""


class IntegerYamlError(ValueError):
    """An integer-program YAML file is missing, malformed or inconsistent."""


def _flow(values) -> FlowList:
    return FlowList(values.tolist() if torch.is_tensor(values) else values)


def _encode_weight(weight: torch.Tensor, layout: str) -> dict:
    shape = list(weight.shape)
    if layout == "dense":
        return {"layout": "dense", "shape": _flow(shape), "values": _flow(weight)}
    if layout == "coo":
        flat = weight.reshape(-1)
        indices = torch.nonzero(flat, as_tuple=True)[0]
        return {"layout": "coo", "shape": _flow(shape), "indices": _flow(indices),
                "values": _flow(flat[indices])}
    matrix = weight.reshape(shape[0], -1)
    rows, cols = torch.nonzero(matrix, as_tuple=True)
    indptr = torch.zeros(shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    return {"layout": "csr", "shape": _flow(shape), "indptr": _flow(indptr),
            "indices": _flow(cols), "values": _flow(matrix[rows, cols])}


def _node_dict(node: QNode, layout: str) -> dict:
    entry = {"name": node.name, "op": node.op, "inputs": _flow(node.inputs),
             "in_shapes": _flow(node.in_shapes), "out_shape": _flow(node.out_shape),
             "attrs": {k: (_flow(v) if isinstance(v, list) else v) for k, v in node.attrs.items()},
             "input_scale": _flow([float(s) for s, _ in node.in_qparams]),
             "input_zero_point": _flow([int(z) for _, z in node.in_qparams]),
             "output_scale": float(node.out_qparams[0]), "output_zero_point": int(node.out_qparams[1]),
             "clamp": _flow([int(c) for c in node.clamp])}
    for key, name in _TENSOR_KEYS.items():
        if key in node.tensors:
            entry[name] = _flow(node.tensors[key])
    if "weight" in node.tensors:
        entry["weight"] = _encode_weight(node.tensors["weight"], layout)
        entry["weight_scale"] = _flow(node.weight_scale.tolist())
    return entry


def program_dict(program: IntegerProgram, sparse: str = "dense") -> dict:
    if sparse not in LAYOUTS:
        raise ValueError(f"unknown sparse layout {sparse!r}; valid: {', '.join(LAYOUTS)}")
    out_scale, out_zp = program.output_qparams
    return {"format": FORMAT, "version": VERSION, "about": Literal(ABOUT),
            "act_bits": program.act_bits, "weight_bits": program.weight_bits,
            "rounding": program.rounding, "sparse": sparse,
            "input": {"name": program.input_name, "shape": _flow(program.input_shape),
                      "scale": float(program.input_qparams[0]),
                      "zero_point": int(program.input_qparams[1])},
            "output": {"node": program.output, "scale": float(out_scale), "zero_point": int(out_zp)},
            "nodes": [_node_dict(node, sparse) for node in program.nodes]}


def export_yaml(program: IntegerProgram, path: str, sparse: str = "dense") -> int:
    """Write ``program`` to ``path`` atomically; returns the file size in bytes."""
    atomic_write_text(path, dump_text(program_dict(program, sparse)))
    return os.path.getsize(path)


# -- loading -------------------------------------------------------------------------------------
def _get(entry: dict, key: str, where: str):
    if not isinstance(entry, dict) or key not in entry:
        raise IntegerYamlError(f"{where}: missing field {key!r}")
    return entry[key]


def _ints(values, where: str, shape: list[int] | None = None) -> torch.Tensor:
    try:
        tensor = torch.tensor(values, dtype=torch.int64)
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise IntegerYamlError(f"{where}: expected integers ({exc})") from None
    if shape is not None and list(tensor.shape) != list(shape):
        raise IntegerYamlError(f"{where}: shape {list(tensor.shape)}, expected {list(shape)}")
    return tensor


def _check_indices(indices: torch.Tensor, limit: int, where: str) -> None:
    if indices.numel() and (indices.min() < 0 or indices.max() >= limit):
        raise IntegerYamlError(f"{where}: indices must lie in [0, {limit})")


def _decode_weight(entry: dict, where: str) -> torch.Tensor:
    layout = _get(entry, "layout", where)
    shape = [int(d) for d in _get(entry, "shape", where)]
    if layout == "dense":
        return _ints(_get(entry, "values", where), f"{where}.values", shape)
    values = _ints(_get(entry, "values", where), f"{where}.values").reshape(-1)
    indices = _ints(_get(entry, "indices", where), f"{where}.indices").reshape(-1)
    if indices.numel() != values.numel():
        raise IntegerYamlError(f"{where}: {indices.numel()} indices for {values.numel()} values")
    if layout == "coo":
        numel = math.prod(shape)
        _check_indices(indices, numel, f"{where}.indices")
        if bool((indices[1:] <= indices[:-1]).any()):
            raise IntegerYamlError(f"{where}.indices: must be ascending and unique")
        flat = torch.zeros(numel, dtype=torch.int64)
        flat[indices] = values
        return flat.view(shape)
    if layout == "csr":
        rows, cols = shape[0], math.prod(shape[1:])
        indptr = _ints(_get(entry, "indptr", where), f"{where}.indptr", [rows + 1])
        if indptr[0] != 0 or indptr[-1] != values.numel() or bool((indptr[1:] < indptr[:-1]).any()):
            raise IntegerYamlError(f"{where}.indptr: must rise from 0 to the number of values")
        _check_indices(indices, cols, f"{where}.indices")
        matrix = torch.zeros(rows, cols, dtype=torch.int64)
        matrix[torch.repeat_interleave(torch.arange(rows), indptr[1:] - indptr[:-1]), indices] = values
        return matrix.view(shape)
    raise IntegerYamlError(f"{where}: unknown weight layout {layout!r}; valid: {', '.join(LAYOUTS)}")


REQUIRED_ATTRS = {"conv2d": ("stride", "padding", "dilation", "groups"), "linear": (),
                  "add": ("left_shift",), "avg_pool": ("kernel", "stride", "padding", "count"),
                  "max_pool": ("kernel", "stride", "padding", "dilation"),
                  "flatten": ("start_dim", "end_dim"), "clamp": ()}


def _load_node(entry: dict, index: int, known: set) -> QNode:
    where = f"nodes[{index}]"
    name = str(_get(entry, "name", where))
    where = f"node {name!r}"
    op = _get(entry, "op", where)
    if op not in OPS:
        raise IntegerYamlError(f"{where}: unknown op {op!r}; valid: {', '.join(OPS)}")
    inputs = [str(i) for i in _get(entry, "inputs", where)]
    missing = [i for i in inputs if i not in known]
    if missing or len(inputs) != (2 if op == "add" else 1):
        raise IntegerYamlError(f"{where}: bad inputs {inputs} (must name earlier nodes; "
                               f"{'two' if op == 'add' else 'one'} expected)")
    scales, zps = _get(entry, "input_scale", where), _get(entry, "input_zero_point", where)
    if len(scales) != len(inputs) or len(zps) != len(inputs):
        raise IntegerYamlError(f"{where}: one input_scale / input_zero_point per input expected")
    attrs = {k: (list(v) if isinstance(v, list) else v) for k, v in dict(_get(entry, "attrs", where)).items()}
    absent = [a for a in REQUIRED_ATTRS[op] if a not in attrs]
    if absent:
        raise IntegerYamlError(f"{where}: {op} needs attrs {', '.join(absent)}")
    node = QNode(name, op, inputs, attrs, [(float(s), int(z)) for s, z in zip(scales, zps)],
                 (float(_get(entry, "output_scale", where)), int(_get(entry, "output_zero_point", where))),
                 tuple(int(c) for c in _get(entry, "clamp", where)),
                 [list(s) for s in _get(entry, "in_shapes", where)], list(_get(entry, "out_shape", where)))
    for key, field in _TENSOR_KEYS.items():
        if field in entry:
            node.tensors[key] = _ints(entry[field], f"{where}.{field}")
    needed = {"conv2d": ("m0", "shift"), "linear": ("m0", "shift"), "avg_pool": ("m0", "shift"),
              "add": ("m0", "shift", "m0_a", "shift_a", "m0_b", "shift_b")}.get(op, ())
    absent = [_TENSOR_KEYS[k] for k in needed if k not in node.tensors]
    if absent:
        raise IntegerYamlError(f"{where}: missing field(s) {', '.join(absent)}")
    if op in ("conv2d", "linear"):
        weight = _decode_weight(_get(entry, "weight", where), f"{where}.weight")
        if weight.dim() != (4 if op == "conv2d" else 2):
            raise IntegerYamlError(f"{where}.weight: a {op} weight has {4 if op == 'conv2d' else 2} "
                                   f"dimensions, got shape {list(weight.shape)}")
        out_channels = weight.shape[0]
        for key in ("m0", "shift", "bias"):
            if key in node.tensors and list(node.tensors[key].shape) != [out_channels]:
                raise IntegerYamlError(f"{where}.{_TENSOR_KEYS[key]}: one value per output channel "
                                       f"({out_channels}) expected")
        node.tensors["weight"] = weight
        node.weight_scale = torch.tensor(_get(entry, "weight_scale", where), dtype=torch.float64)
    return node


def load_yaml(path: str) -> IntegerProgram:
    """Rebuild the runnable program of a file written by ``export_yaml``."""
    if not os.path.isfile(path):
        raise IntegerYamlError(f"no such file: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = load_text(handle.read())
    except yaml.YAMLError as exc:
        raise IntegerYamlError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IntegerYamlError(f"{path} is not an integer-program file (format must be {FORMAT!r})")
    if data.get("version") != VERSION:
        raise IntegerYamlError(f"{path}: unsupported version {data.get('version')!r} (expected {VERSION})")
    if data.get("rounding") not in ROUNDINGS:
        raise IntegerYamlError(f"{path}: rounding must be one of {', '.join(ROUNDINGS)}")
    inp, out = _get(data, "input", path), _get(data, "output", path)
    known = {str(_get(inp, "name", f"{path}: input"))}
    nodes = []
    for index, entry in enumerate(_get(data, "nodes", path)):
        nodes.append(_load_node(entry, index, known))
        known.add(nodes[-1].name)
    output = str(_get(out, "node", f"{path}: output"))
    if output not in known:
        raise IntegerYamlError(f"{path}: output node {output!r} is not in the graph")
    in_qparams = (float(_get(inp, "scale", path)), int(_get(inp, "zero_point", path)))
    return IntegerProgram(int(_get(data, "act_bits", path)), int(_get(data, "weight_bits", path)),
                          str(inp["name"]), in_qparams, list(_get(inp, "shape", path)), output, nodes,
                          data["rounding"])
