"""Deployment formats: how a model becomes a file for a runtime, and how that file is run.

``FORMATS`` maps a name to a :class:`DeployFormat`; ``--export_format`` picks ``onnx``,
``pte``, ``both``, ``none`` or ``auto`` (ONNX when it is installed). Each format exports two
kinds of model:

- ``fp32``: a float ``nn.Module`` (full precision, thinned, sparse, or weights already on a
  quantization grid);
- ``fakequant``: a float model whose activations are rounded to a few levels by float ops
  (DoReFa / PACT of the ``schedule`` learner): exported as ``fp32``, checked like ``int8``;
- ``int8``: the converted int8 model of ``compression.quantization.int8_qat`` (uniform-tf), whose
  quantize/dequantize ops become XNNPACK int8 kernels in a ``.pte`` and
  QuantizeLinear/DequantizeLinear pairs (QDQ) in an ``.onnx``, with the trained scales.

A format whose packages are missing is refused up front with the command that installs them.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from utils.checkpoint import CheckpointError

EXPORT_CHOICES = ("auto", "none", "onnx", "pte", "both")
KINDS = ("fp32", "fakequant", "int8")


class FormatUnavailable(CheckpointError):
    """The packages of an export format are not installed (the message says how to)."""


@dataclass(frozen=True)
class DeployFormat:
    name: str
    suffix: str
    runtime: str
    needs: dict  # kind -> modules that must import
    install: str
    # (model, example inputs, path, kind, max_batch: the largest batch a static-memory
    # runtime plans for) -> bytes written
    export: Callable[[nn.Module, torch.Tensor, str, str, int], int]

    def missing(self, kind: str = "fp32") -> list[str]:
        return [m for m in self.needs[kind] if importlib.util.find_spec(m) is None]

    def require(self, kinds=KINDS) -> None:
        missing = sorted({m for kind in kinds for m in self.missing(kind)})
        if missing:
            raise FormatUnavailable(f"export format {self.name!r} ({self.runtime}) needs "
                                    f"{', '.join(missing)}, not installed: {self.install}")


def _float_for_export(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Thinned layers pick their channels by one-hot matrices in deployed files (the same
    outputs; no gather between the runtime's fused kernels)."""
    from compression.surgery.thinning import gathers_as_matrices

    return gathers_as_matrices(model, tuple(example.shape[1:]))


def _export_onnx(model: nn.Module, example: torch.Tensor, path: str, kind: str,
                 max_batch: int) -> int:
    from deployment.onnx_export import export_onnx, export_onnx_program

    if kind == "int8":
        from deployment.pte import export_int8_program

        export_onnx_program(export_int8_program(model, example, max(max_batch, 1024)), path)
    else:
        export_onnx(_float_for_export(model, example), tuple(example.shape[1:]), path)
    return os.path.getsize(path)


def _export_pte(model: nn.Module, example: torch.Tensor, path: str, kind: str,
                max_batch: int) -> int:
    from deployment.pte import export_pte

    if kind != "int8":
        model = _float_for_export(model, example)
    return export_pte(model, example, path, quantized=kind == "int8", max_batch=max_batch)


FORMATS: dict[str, DeployFormat] = {
    "onnx": DeployFormat("onnx", ".onnx", "onnxruntime",
                         {"fp32": ("onnx", "onnxruntime"), "fakequant": ("onnx", "onnxruntime"),
                          "int8": ("onnx", "onnxruntime", "onnxscript", "torchao")},
                         "pip install -e .[onnx]  (onnx, onnxruntime, onnxscript)", _export_onnx),
    "pte": DeployFormat("pte", ".pte", "executorch",
                        {"fp32": ("executorch",), "fakequant": ("executorch",),
                         "int8": ("executorch", "torchao")},
                        "pip install -e .[int8]  (executorch==1.5.*, which brings torchao)",
                        _export_pte),
}


def formats_for(choice: str, kinds=("fp32",)) -> list[DeployFormat]:
    """The formats ``--export_format=choice`` selects; an explicit choice must be installed
    (else :class:`FormatUnavailable`), ``auto`` is ONNX when installed, else nothing."""
    if choice not in EXPORT_CHOICES:
        raise FormatUnavailable(f"unknown export format {choice!r}; valid: {', '.join(EXPORT_CHOICES)}")
    if choice == "auto":
        onnx = FORMATS["onnx"]
        return [onnx] if not any(onnx.missing(k) for k in kinds) else []
    names = {"none": [], "both": ["pte", "onnx"]}.get(choice, [choice])
    chosen = [FORMATS[n] for n in names]
    for fmt in chosen:
        fmt.require(kinds)
    return chosen
