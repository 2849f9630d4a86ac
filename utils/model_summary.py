"""Per-layer summary of any ``nn.Module``: shapes, parameters, MACs and sparsity.

One row per convolution (any ``_ConvNd``: grouped, depthwise, transposed, and
``compression.surgery.picks.GatherConv2d``), linear layer (``GatherLinear`` included) and batch
norm, in ``named_modules`` order, then a ``total`` row. Columns (``COLUMNS``):

- ``name``, ``type``, ``weight_shape`` (``16x3x3x3``), ``output_shape`` (for one input,
  batch 1, measured by a forward hook; a module called twice shows its last output);
- ``params``: the module's own parameters (weight and bias; BN: gamma and beta);
- ``macs``: multiply-accumulates for ONE input of ``input_shape``, summed over every call
  of the module: conv ``out_numel * in_channels/groups * prod(kernel)``, transposed conv
  ``in_numel * out_channels/groups * prod(kernel)``, linear ``out_numel * in_features``;
  biases, BN, activations and pooling count 0, so ``FLOPs = 2 * MACs`` is exactly what
  ``utils.model_stats.count_flops`` (``torch.utils.flop_counter``) reports;
- ``element_sparsity``: zero weights / weights (BN: zero gammas / gammas);
- ``filter_sparsity``: fraction of output channels whose weights are all zero;
- ``channel_sparsity``: fraction of input channels whose weights are all zero (of a grouped
  conv, input channel ``c`` is all zero when its slice in its group's filters is);
  BN rows leave both empty (``None``).

The ``total`` row sums ``params`` over the WHOLE model (``utils.model_stats.count_params``:
parameters of other modules too) and ``macs`` over the rows; its sparsities pool the
conv/linear weights, filters and input channels of all rows.
Outputs: ``format_table`` (aligned text), ``write_csv`` (header + rows + total) and
``write_xlsx`` (one sheet, same cells; needs openpyxl: ``pip install -e .[tools]``), both
written atomically.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from utils.checkpoint import atomic_write, atomic_write_text
from utils.model_stats import count_params, probe_forward

COLUMNS = ("name", "type", "weight_shape", "output_shape", "params", "macs",
           "element_sparsity", "filter_sparsity", "channel_sparsity")
XLSX_HINT = "writing .xlsx needs openpyxl: pip install -e .[tools]"


class XlsxUnavailable(ImportError):
    """openpyxl is not installed."""


@dataclass
class LayerRow:
    name: str
    type: str
    weight_shape: tuple
    output_shape: tuple | None
    params: int
    macs: int
    element_sparsity: float | None
    filter_sparsity: float | None
    channel_sparsity: float | None
    # counts behind the sparsities, pooled in the total row
    counts: dict = field(default_factory=dict, repr=False)

    def cells(self) -> list:
        """The row as plain cells in ``COLUMNS`` order (shapes as ``AxB`` strings)."""
        return [self.name, self.type, _shape_text(self.weight_shape), _shape_text(self.output_shape),
                self.params, self.macs, self.element_sparsity, self.filter_sparsity,
                self.channel_sparsity]


@dataclass
class ModelSummary:
    rows: list[LayerRow]
    total: LayerRow
    input_shape: tuple

    @property
    def macs(self) -> int:
        return self.total.macs

    @property
    def flops(self) -> int:
        return 2 * self.total.macs

    def records(self) -> list[list]:
        """Header, one list of cells per row, then the total."""
        return [list(COLUMNS)] + [row.cells() for row in self.rows] + [self.total.cells()]


def _shape_text(shape: tuple | None) -> str:
    return "x".join(str(v) for v in shape) if shape else ""


def is_summarised(module: nn.Module) -> bool:
    return isinstance(module, (_ConvNd, nn.Linear, _BatchNorm))


def _macs(module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> int:
    """Positions x weights: a layer that picks input channels or places its outputs in a
    wider tensor (``compression.surgery.picks``) computes only what its weight holds."""
    if isinstance(module, _ConvTransposeNd):
        return inputs.numel() // inputs.shape[1] * module.weight.numel()
    if isinstance(module, _ConvNd):
        return output.numel() // output.shape[1] * module.weight.numel()
    if isinstance(module, nn.Linear):
        return output.numel() // output.shape[-1] * module.weight.numel()
    return 0


@torch.no_grad()
def _zero_groups(module: nn.Module) -> tuple[int, int, int, int]:
    """(all-zero output channels, output channels, all-zero input channels, input channels)."""
    weight = module.weight.detach()
    zero = weight == 0
    if isinstance(module, nn.Linear):
        return (int(zero.all(1).sum()), weight.shape[0], int(zero.all(0).sum()), weight.shape[1])
    groups = module.groups
    if isinstance(module, _ConvTransposeNd):   # weight: (in, out/groups, k...)
        per_group = zero.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1)
        out_zero = per_group.all(3).all(1)           # (groups, out/groups)
        in_zero = zero.reshape(weight.shape[0], -1).all(1)
    else:                                          # weight: (out, in/groups, k...)
        per_group = zero.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1)
        out_zero = zero.reshape(weight.shape[0], -1).all(1)
        in_zero = per_group.all(3).all(1)            # (groups, in/groups)
    return (int(out_zero.sum()), out_zero.numel(), int(in_zero.sum()), in_zero.numel())


def _row(name: str, module: nn.Module, macs: int, output_shape: tuple | None) -> LayerRow:
    weight = getattr(module, "weight", None)
    params = sum(p.numel() for p in module.parameters(recurse=False))
    if isinstance(module, _BatchNorm):
        if weight is None:  # affine=False
            return LayerRow(name, type(module).__name__, (), output_shape, params, 0, None, None, None)
        zeros = int((weight.detach() == 0).sum())
        return LayerRow(name, type(module).__name__, tuple(weight.shape), output_shape, params, 0,
                        zeros / weight.numel(), None, None)
    zeros = int((weight.detach() == 0).sum())
    out_zero, nb_out, in_zero, nb_in = _zero_groups(module)
    counts = {"zeros": zeros, "numel": weight.numel(), "out_zero": out_zero, "nb_out": nb_out,
              "in_zero": in_zero, "nb_in": nb_in}
    return LayerRow(name, type(module).__name__, tuple(weight.shape), output_shape, params, macs,
                    zeros / weight.numel(), out_zero / nb_out, in_zero / nb_in, counts)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def summarize(model: nn.Module, input_shape: Sequence[int]) -> ModelSummary:
    """Run one zero input of ``input_shape`` (batch 1, eval mode, no grad) through ``model``
    with forward hooks on every conv / linear / BN, and build the rows and the total."""
    layers = {name: m for name, m in model.named_modules() if is_summarised(m)}
    macs = {name: 0 for name in layers}
    shapes: dict[str, tuple] = {}

    def hook_for(name: str):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                shapes[name] = tuple(output.shape)
                macs[name] += _macs(module, args[0], output)
        return hook

    probe_forward(model, input_shape,
                  [m.register_forward_hook(hook_for(name)) for name, m in layers.items()])
    rows = [_row(name, m, macs[name], shapes.get(name)) for name, m in layers.items()]
    pooled = {key: sum(r.counts.get(key, 0) for r in rows)
              for key in ("zeros", "numel", "out_zero", "nb_out", "in_zero", "nb_in")}
    total = LayerRow("total", "", (), None, count_params(model), sum(r.macs for r in rows),
                     _ratio(pooled["zeros"], pooled["numel"]), _ratio(pooled["out_zero"], pooled["nb_out"]),
                     _ratio(pooled["in_zero"], pooled["nb_in"]), pooled)
    return ModelSummary(rows, total, tuple(input_shape))


# -- outputs -------------------------------------------------------------------------------------
def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(summary: ModelSummary) -> str:
    """Aligned text table (numbers right-aligned, sparsities to 4 decimals), then FLOPs."""
    records = summary.records()
    text = [records[0]] + [[_text(v) for v in row] for row in records[1:]]
    widths = [max(len(row[i]) for row in text) for i in range(len(COLUMNS))]
    numeric = [False, False, False, False, True, True, True, True, True]

    def line(row: list) -> str:
        return "  ".join(cell.rjust(w) if num else cell.ljust(w)
                         for cell, w, num in zip(row, widths, numeric)).rstrip()

    rule = "-" * len(line(text[0]))
    body = [line(text[0]), rule] + [line(row) for row in text[1:-1]] + [rule, line(text[-1])]
    body.append(f"input {list(summary.input_shape)}: {summary.macs:,} MACs = {summary.flops:,} FLOPs, "
                f"{summary.total.params:,} parameters")
    return "\n".join(body)


def csv_text(summary: ModelSummary) -> str:
    """CSV of ``records()``: empty cell for None, floats in full precision (``repr``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in summary.records():
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    return out.getvalue()


def write_csv(summary: ModelSummary, path: str) -> str:
    atomic_write_text(path, csv_text(summary))
    return path


def write_xlsx(summary: ModelSummary, path: str, sheet: str = "summary") -> str:
    """One sheet with the same cells as the CSV (numbers as numbers, bold header)."""
    try:
        import openpyxl
        from openpyxl.styles import Font
    except ImportError as exc:
        raise XlsxUnavailable(XLSX_HINT) from exc
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = sheet
    for row in summary.records():
        ws.append(row)
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for cell in ws[ws.max_row]:
        cell.font = Font(bold=True)
    ws.freeze_panes = "A2"
    atomic_write(path, book.save)
    return path
