"""The float reference of an ``IntegerProgram``: same scales, float32 math, quantize-dequantize
at the same points.

For each node the inputs are the dequantized values ``s_in * (q - zp_in)``; conv/linear use the
dequantized weights ``s_w[c] * w_q`` and biases ``s_in * s_w[c] * b_q`` in float32 convolutions
/ matmuls, add sums the two dequantized inputs, avg_pool averages (``F.avg_pool2d`` with the
program's kernel and count); the result ``y`` is quantized as
``q = clamp(round_half_away(y / s_out) + zp_out, lo, hi)`` and dequantized again. The only
differences from the integer program are float rounding and the fixed-point multipliers, so
the output codes agree within one LSB almost everywhere (``evaluate.agreement``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compression.quantization.integer_only.fixed_point import round_half_away
from compression.quantization.integer_only.program import IntegerProgram, QNode


def _quantize(y: torch.Tensor, node: QNode) -> torch.Tensor:
    scale, zero_point = node.out_qparams
    return (round_half_away(y / scale) + zero_point).clamp(*node.clamp)


class FakeQuantModel(nn.Module):
    """``forward(x)``: float logits dequantized from the output codes; ``codes(x)``: the output
    codes (int64); ``codes(x, keep)`` also stores every node's codes in ``keep``."""

    def __init__(self, program: IntegerProgram) -> None:
        super().__init__()
        self.program = program
        self.consts: dict[str, dict[str, torch.Tensor]] = {}
        for node in program.nodes:
            if node.op in ("conv2d", "linear"):
                w_scale = node.weight_scale
                view = (-1,) + (1,) * (node.tensors["weight"].dim() - 1)
                entry = {"weight": (node.tensors["weight"].double() * w_scale.view(view)).float()}
                if "bias" in node.tensors:
                    entry["bias"] = (node.tensors["bias"].double() * node.in_qparams[0][0]
                                     * w_scale).float()
                self.consts[node.name] = entry

    def _op(self, node: QNode, xs: list[torch.Tensor]) -> torch.Tensor:
        """Codes (float32 holding integers) of one node from its inputs' codes."""
        deq = [s * (x - zp) for x, (s, zp) in zip(xs, node.in_qparams)]
        a, t = node.attrs, node.tensors
        if node.op in ("conv2d", "linear"):
            x = deq[0] if "in_index" not in t else deq[0].index_select(1, t["in_index"])
            c = self.consts[node.name]
            if node.op == "conv2d":
                y = F.conv2d(x, c["weight"], c.get("bias"), a["stride"], a["padding"], a["dilation"],
                             a["groups"])
            else:
                y = F.linear(x, c["weight"], c.get("bias"))
        elif node.op == "add":
            y = deq[0] + deq[1]
        elif node.op == "avg_pool":
            y = F.avg_pool2d(deq[0], a["kernel"], a["stride"], a["padding"], divisor_override=a["count"])
        elif node.op == "max_pool":
            return F.max_pool2d(xs[0], a["kernel"], a["stride"], a["padding"], a["dilation"])
        elif node.op == "flatten":
            return torch.flatten(xs[0], a["start_dim"], a["end_dim"])
        else:  # clamp
            return xs[0].clamp(*node.clamp)
        return _quantize(y, node)

    @torch.no_grad()
    def codes(self, x: torch.Tensor, keep: dict | None = None) -> torch.Tensor:
        program = self.program
        env = {program.input_name: program.quantize_input(x).float()}
        for node in program.nodes:
            env[node.name] = self._op(node, [env[i] for i in node.inputs])
            if keep is not None:
                keep[node.name] = env[node.name].to(torch.int64)
        return env[program.output].to(torch.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program.dequantize(self.codes(x))
