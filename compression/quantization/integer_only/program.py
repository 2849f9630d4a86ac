"""The integer program: quantized nodes built from a float model and calibration batches.

``build_program(model, batches, weight_bits=8, act_bits=8)``:
1. ``lowering.lower`` -> float ops (BN folded, ReLU/ReLU6 fused where alone on their input);
2. calibration: min/max of the input and of every node's output over ``batches`` (float model);
3. quantization of every node:
   - activations: per tensor, asymmetric unsigned ``act_bits`` codes ``q`` in
     ``[0, 2^act_bits - 1]``, real value ``scale * (q - zero_point)``, range widened to hold 0;
     ``max_pool``, ``flatten`` and ``clamp`` keep their input's scale and zero point;
   - conv/linear weights: symmetric per output channel, codes in ``[-(2^(b-1)-1), 2^(b-1)-1]``
     (``b = weight_bits``); bias: int32 at scale ``s_in * s_w[c]``;
   - requantization multipliers as ``(M0, shift)`` pairs (``fixed_point``):
     conv/linear ``M[c] = s_in * s_w[c] / s_out``; avg_pool ``M = s_in / (s_out * count)``;
     add: both inputs ``(q - zp) << left_shift`` scaled by ``s_x / (2 max(s_a, s_b))``, their sum
     by ``2 max(s_a, s_b) / (2^left_shift * s_out)`` (TFLite's ADD);
   - ``clamp = [lo, hi]`` in codes: ``[0, 2^act_bits - 1]``, ``lo = zp`` for ReLU,
     ``hi = zp + round(6 / s)`` for ReLU6.
``IntegerProgram.run(codes)`` executes it with integer ops only (``integer_ops``; ``rounding``:
the ``fixed_point`` requantization mode); ``quantize_input`` / ``dequantize`` are the float
boundaries around it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from compression.quantization.integer_only.fixed_point import (INT32_MAX, INT32_MIN,
                                                               IntegerOverflowError,
                                                               activation_qparams, check_bits,
                                                               check_rounding, quantize_multiplier,
                                                               quantize_weight, round_half_away)
from compression.quantization.integer_only.lowering import (WEIGHTED, FloatNode, UnsupportedOpError,
                                                            lower, run_float)

ADD_LEFT_SHIFT = 20
OPS = ("conv2d", "linear", "add", "avg_pool", "max_pool", "flatten", "clamp")


@dataclass
class QNode:
    """One quantized op. ``tensors`` holds int64 tensors (``weight``, ``bias``, ``in_index``,
    ``m0``/``shift`` and for ``add`` also ``m0_a``, ``shift_a``, ``m0_b``, ``shift_b``);
    ``in_qparams`` one ``(scale, zero_point)`` per input; ``shapes`` per-sample, batch dim
    excluded; ``weight_scale`` (float64 per output channel) only describes the weight codes."""

    name: str
    op: str
    inputs: list[str]
    attrs: dict
    in_qparams: list[tuple[float, int]]
    out_qparams: tuple[float, int]
    clamp: tuple[int, int]
    in_shapes: list[list[int]]
    out_shape: list[int]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    weight_scale: torch.Tensor | None = None


@dataclass
class IntegerProgram:
    act_bits: int
    weight_bits: int
    input_name: str
    input_qparams: tuple[float, int]
    input_shape: list[int]
    output: str
    nodes: list[QNode]
    rounding: str = "single"

    @property
    def output_qparams(self) -> tuple[float, int]:
        if self.output == self.input_name:
            return self.input_qparams
        return next(n.out_qparams for n in self.nodes if n.name == self.output)

    @property
    def qmax(self) -> int:
        return 2 ** self.act_bits - 1

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Float input -> int64 codes (the float boundary in front of the program)."""
        scale, zero_point = self.input_qparams
        codes = round_half_away(x.detach().to(torch.float64) / scale) + zero_point
        return codes.clamp(0, self.qmax).to(torch.int64)

    def run(self, codes: torch.Tensor, keep: dict | None = None) -> torch.Tensor:
        """int64 input codes -> int64 output codes, integer arithmetic only; every node's
        output is stored in ``keep`` (by name) when given."""
        from compression.quantization.integer_only.integer_ops import run_integer

        return run_integer(self, codes, keep)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """Output codes -> float32 values ``scale * (q - zero_point)``."""
        scale, zero_point = self.output_qparams
        return (scale * (codes.to(torch.float64) - zero_point)).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(self.quantize_input(x))


class _RangeObserver:
    def __init__(self) -> None:
        self.ranges: dict[str, list[float]] = {}
        self.shapes: dict[str, list[list[int]]] = {}

    def __call__(self, name: str, inputs: list[torch.Tensor], out: torch.Tensor) -> None:
        lo, hi = float(out.min()), float(out.max())
        old = self.ranges.get(name)
        self.ranges[name] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]
        self.shapes[name] = [list(t.shape[1:]) for t in (*inputs, out)]


def calibrate(nodes: list[FloatNode], input_name: str,
              batches: Iterable[torch.Tensor]) -> _RangeObserver:
    observer = _RangeObserver()
    count = 0
    for x in batches:
        run_float(nodes, input_name, x.detach().float().cpu(), observer)
        count += 1
    if not count:
        raise ValueError("calibration needs at least one batch")
    return observer


def _act_clamp(act: str | None, scale: float, zero_point: int, qmax: int) -> tuple[int, int]:
    lo, hi = 0, qmax
    if act in ("relu", "relu6"):
        lo = zero_point
    if act == "relu6":
        hi = min(qmax, zero_point + round(6.0 / scale))
    return lo, hi


def _multipliers(reals: Iterable[float]) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [quantize_multiplier(float(m)) for m in reals]
    return (torch.tensor([p[0] for p in pairs], dtype=torch.int64),
            torch.tensor([p[1] for p in pairs], dtype=torch.int64))


def _quantize_weighted(node: FloatNode, in_q: tuple[float, int], out_q: tuple[float, int],
                       weight_bits: int) -> dict:
    codes, w_scale = quantize_weight(node.weight, weight_bits)
    tensors = {"weight": codes}
    if node.bias is not None:
        bias = round_half_away(node.bias.double() / (in_q[0] * w_scale))
        if bias.numel() and (bias.max() > INT32_MAX or bias.min() < INT32_MIN):
            raise IntegerOverflowError(f"node {node.name!r}: its bias does not fit int32 at scale s_in * s_w")
        tensors["bias"] = bias.to(torch.int64)
    tensors["m0"], tensors["shift"] = _multipliers(in_q[0] * w_scale / out_q[0])
    if node.in_index is not None:
        tensors["in_index"] = node.in_index.clone()
    return {"tensors": tensors, "weight_scale": w_scale}


def _pool_attrs(node: FloatNode, in_shape: list[int]) -> dict:
    """Fixed kernel/stride/padding (adaptive pools resolved on the calibrated shape) + count."""
    attrs = dict(node.attrs)
    if "output_size" in attrs:
        (h, w), (oh, ow) = in_shape[-2:], attrs.pop("output_size")
        if h % oh or w % ow:
            raise UnsupportedOpError(f"node {node.name!r}: adaptive average pooling of {h}x{w} to "
                                     f"{oh}x{ow} needs uneven windows (not supported)")
        attrs.update(kernel=[h // oh, w // ow], stride=[h // oh, w // ow], padding=[0, 0], divisor=None)
    divisor = attrs.pop("divisor", None)
    attrs["count"] = int(divisor or attrs["kernel"][0] * attrs["kernel"][1])
    return attrs


@torch.no_grad()
def build_program(model: nn.Module, batches: Iterable[torch.Tensor], weight_bits: int = 8,
                  act_bits: int = 8, rounding: str = "single") -> IntegerProgram:
    """Quantize an eval-mode float ``model`` calibrated on ``batches`` (see the docstring);
    ``rounding``: how ``requantize`` rounds (``fixed_point.ROUNDINGS``)."""
    check_rounding(rounding)
    check_bits("weight_bits", weight_bits)
    check_bits("act_bits", act_bits)
    nodes, input_name, output = lower(model)
    stats = calibrate(nodes, input_name, batches)
    qmax = 2 ** act_bits - 1
    qparams = {input_name: activation_qparams(*stats.ranges[input_name], act_bits)}
    program_nodes = []
    for node in nodes:
        in_q = [qparams[i] for i in node.inputs]
        *in_shapes, out_shape = stats.shapes[node.name]
        if node.op in ("max_pool", "flatten", "clamp"):
            out_q = in_q[0]
        else:
            out_q = activation_qparams(*stats.ranges[node.name], act_bits)
        qparams[node.name] = out_q
        q = QNode(node.name, node.op, list(node.inputs), dict(node.attrs), in_q, out_q,
                  _act_clamp(node.act, *out_q, qmax), in_shapes, out_shape)
        if node.op in WEIGHTED:
            extra = _quantize_weighted(node, in_q[0], out_q, weight_bits)
            q.tensors, q.weight_scale = extra["tensors"], extra["weight_scale"]
        elif node.op == "avg_pool":
            q.attrs = _pool_attrs(node, in_shapes[0])
            q.tensors["m0"], q.tensors["shift"] = _multipliers([in_q[0][0] / (out_q[0] * q.attrs["count"])])
        elif node.op == "add":
            twice_max = 2.0 * max(in_q[0][0], in_q[1][0])
            q.attrs = {"left_shift": ADD_LEFT_SHIFT}
            for key, (scale, _) in zip("ab", in_q):
                q.tensors[f"m0_{key}"], q.tensors[f"shift_{key}"] = _multipliers([scale / twice_max])
            q.tensors["m0"], q.tensors["shift"] = _multipliers(
                [twice_max / (2 ** ADD_LEFT_SHIFT * out_q[0])])
        program_nodes.append(q)
    input_shape = stats.shapes[input_name][-1]
    return IntegerProgram(act_bits, weight_bits, input_name, qparams[input_name], input_shape,
                          output, program_nodes, rounding)
