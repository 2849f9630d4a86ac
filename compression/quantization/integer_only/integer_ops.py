"""Integer-only execution of an ``IntegerProgram``: int64 tensors in, int64 tensors out.

Every value is an int64 tensor of codes; no float tensor is created (the tests run the program
under a ``TorchFunctionMode`` that rejects any). Per op, with ``x = q_in - zp_in``:

- conv2d: im2col (zero padding of ``x``, i.e. padding with the zero point) and an integer
  matmul per group, ``acc = sum(x * w) + bias``; ``q = clamp(zp_out + requantize(acc, M0[c],
  shift[c]), lo, hi)``; gather layers first ``index_select`` their input channels;
- linear: the same with ``acc = x @ w^T + bias``;
- add: ``a = requantize(x_a << left_shift, M0_a, shift_a)``, same for ``b``, then
  ``q = clamp(zp_out + requantize(a + b, M0, shift), lo, hi)``;
- avg_pool: ``acc`` = window sums of ``x`` (zero padding), ``q = clamp(zp_out +
  requantize(acc, M0, shift), lo, hi)`` with ``M = s_in / (s_out * count)``;
- max_pool (on the codes; padding never wins), flatten, clamp: codes kept, scale unchanged.
Accumulators must fit int32 (checked; ``fixed_point.IntegerOverflowError`` otherwise).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from compression.quantization.integer_only.fixed_point import requantize


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int64 (batched) matmul; numpy's integer kernel is about twice torch's on CPU."""
    if a.dtype != torch.int64 or b.dtype != torch.int64:
        raise TypeError(f"int_matmul takes int64 tensors, got {a.dtype} and {b.dtype}")
    return torch.from_numpy(np.matmul(a.contiguous().numpy(), b.contiguous().numpy()))


def _windows(x: torch.Tensor, kernel, stride, padding, dilation=(1, 1)) -> torch.Tensor:
    """``[N, C, OH, OW, kh, kw]`` sliding windows of ``x`` padded with integer zeros."""
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    (kh, kw), (dh, dw) = kernel, dilation
    cols = x.unfold(2, dh * (kh - 1) + 1, stride[0]).unfold(3, dw * (kw - 1) + 1, stride[1])
    return cols[..., ::dh, ::dw]


def conv2d_int(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation,
               groups: int) -> torch.Tensor:
    """Integer convolution (no bias) of int64 ``x`` [N, C, H, W] and ``weight`` [O, C/g, kh, kw]."""
    n, c = x.shape[:2]
    out_c, cg, kh, kw = weight.shape
    cols = _windows(x, (kh, kw), stride, padding, dilation)
    oh, ow = cols.shape[2:4]
    cols = cols.reshape(n, groups, cg, oh, ow, kh, kw).permute(0, 1, 3, 4, 2, 5, 6)
    cols = cols.reshape(n, groups, oh * ow, cg * kh * kw)
    w = weight.reshape(groups, out_c // groups, cg * kh * kw).transpose(1, 2)
    acc = int_matmul(cols, w)                              # [N, G, OH*OW, O/G]
    return acc.permute(0, 1, 3, 2).reshape(n, out_c, oh, ow)


def _finish(node, acc: torch.Tensor, rounding: str, conv: bool = False) -> torch.Tensor:
    m0, shift = node.tensors["m0"], node.tensors["shift"]
    if conv:                                  # per output channel, channels on dim 1
        m0, shift = m0.view(-1, 1, 1), shift.view(-1, 1, 1)
    out = requantize(acc, m0, shift, f"node {node.name!r} accumulator", rounding) + node.out_qparams[1]
    return out.clamp(*node.clamp)


def _weighted(node, x: torch.Tensor, rounding: str) -> torch.Tensor:
    t, a = node.tensors, node.attrs
    if "in_index" in t:
        x = x.index_select(1, t["in_index"])
    x = x - node.in_qparams[0][1]
    if node.op == "conv2d":
        acc = conv2d_int(x, t["weight"], a["stride"], a["padding"], a["dilation"], a["groups"])
        if "bias" in t:
            acc = acc + t["bias"].view(-1, 1, 1)
    else:
        acc = int_matmul(x, t["weight"].t())
        if "bias" in t:
            acc = acc + t["bias"]
    return _finish(node, acc, rounding, conv=node.op == "conv2d")


def _add(node, xa: torch.Tensor, xb: torch.Tensor, rounding: str) -> torch.Tensor:
    t, shift = node.tensors, node.attrs["left_shift"]
    a, b = ((x - zp) << shift for x, (_, zp) in zip((xa, xb), node.in_qparams))
    a = requantize(a, t["m0_a"], t["shift_a"], f"node {node.name!r} input a", rounding)
    b = requantize(b, t["m0_b"], t["shift_b"], f"node {node.name!r} input b", rounding)
    return _finish(node, a + b, rounding)


def _avg_pool(node, x: torch.Tensor, rounding: str) -> torch.Tensor:
    a = node.attrs
    acc = _windows(x - node.in_qparams[0][1], a["kernel"], a["stride"], a["padding"]).sum((-2, -1))
    return _finish(node, acc, rounding)


def int_op(node, xs: list[torch.Tensor], rounding: str = "single") -> torch.Tensor:
    a = node.attrs
    if node.op in ("conv2d", "linear"):
        return _weighted(node, xs[0], rounding)
    if node.op == "add":
        return _add(node, xs[0], xs[1], rounding)
    if node.op == "avg_pool":
        return _avg_pool(node, xs[0], rounding)
    if node.op == "max_pool":
        return F.max_pool2d(xs[0], a["kernel"], a["stride"], a["padding"], a["dilation"])
    if node.op == "flatten":
        return torch.flatten(xs[0], a["start_dim"], a["end_dim"])
    if node.op == "clamp":
        return xs[0].clamp(*node.clamp)
    raise ValueError(f"node {node.name!r}: unknown op {node.op!r}")


@torch.no_grad()
def run_integer(program, codes: torch.Tensor, keep: dict | None = None) -> torch.Tensor:
    if codes.dtype != torch.int64:
        raise TypeError(f"the integer program takes int64 codes, got {codes.dtype} "
                        "(use program.quantize_input for float inputs)")
    env = {program.input_name: codes}
    for node in program.nodes:
        env[node.name] = int_op(node, [env[i] for i in node.inputs], program.rounding)
        if keep is not None:
            keep[node.name] = env[node.name]
    return env[program.output]
