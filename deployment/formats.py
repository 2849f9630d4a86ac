"""Deployment formats: how a model becomes a file for a runtime, and how that file is run.

``FORMATS`` maps a name to a :class:`DeployFormat`; ``--export_format`` picks ``onnx``,
``pte``, ``both``, ``none``, ``auto`` (ONNX when it is installed) or the name of a format
added with :func:`register_format` (``export_choices()``). A format's file suffix and runtime
are its row of ``compression.artifacts.files``. Each format exports these kinds of model:

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

from compression.artifacts import FLOAT_TWIN, ArtifactFile, artifact_file, check_file, register_file
from utils.checkpoint import CheckpointError

CHOICES = ("auto", "none", "onnx", "pte", "both")   # the built-in --export_format values
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
    what: str = ""       # how messages name its files ("an ExecuTorch program")
    # (path, threads or None) -> ``x -> outputs``: runs a file of a registered format
    # (``deployment.runners.runner_for``); the built-in runtimes have their own
    load: Callable[[str, int | None], Callable] | None = None

    def missing(self, kind: str = "fp32") -> list[str]:
        return [m for m in self.needs[kind] if importlib.util.find_spec(m) is None]

    def require(self, kinds=KINDS) -> None:
        unsupported = [kind for kind in kinds if kind not in self.needs]
        if unsupported:
            raise FormatUnavailable(f"export format {self.name!r} ({self.runtime}) does not export "
                                    f"{', '.join(unsupported)} models; it exports "
                                    f"{', '.join(self.needs)}")
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


def _builtin(name: str, needs: dict, install: str, export: Callable) -> DeployFormat:
    row = artifact_file(name)
    return DeployFormat(name, row.suffix, row.runtime, needs, install, export, row.what)


FORMATS: dict[str, DeployFormat] = {
    "onnx": _builtin("onnx", {"fp32": ("onnx", "onnxruntime"), "fakequant": ("onnx", "onnxruntime"),
                              "int8": ("onnx", "onnxruntime", "onnxscript", "torchao")},
                     "pip install -e .[onnx]  (onnx, onnxruntime, onnxscript)", _export_onnx),
    "pte": _builtin("pte", {"fp32": ("executorch",), "fakequant": ("executorch",),
                            "int8": ("executorch", "torchao")},
                    "pip install -e .[int8]  (executorch==1.5.*, which brings torchao)", _export_pte),
}


def register_format(fmt: DeployFormat) -> DeployFormat:
    """Add a runtime: ``--export_format=<fmt.name>`` then exports to it (``formats_for``), and
    its files (``<stem><fmt.suffix>``, and the float twin of an int8 result) join the table of
    ``compression.artifacts.files``: removed when their run is redone, refused as a model
    artifact, run by ``deployment.runners.runner_for`` through ``fmt.load``. Registering a name
    again replaces it; a built-in choice or a suffix of another file is refused."""
    if fmt.name in CHOICES:
        raise ValueError(f"export format {fmt.name!r} is built in; choose another name")
    what = fmt.what or f"a {fmt.runtime} program"
    rows = [ArtifactFile(fmt.name, fmt.suffix, "deployment", what, fmt.runtime),
            ArtifactFile(fmt.name + FLOAT_TWIN, FLOAT_TWIN + fmt.suffix, "deployment",
                         f"{what} (the float twin of an int8 result)", fmt.runtime)]
    for row in rows:
        check_file(row)
    for row in rows:
        register_file(row)
    FORMATS[fmt.name] = fmt
    return fmt


def export_choices() -> tuple[str, ...]:
    """The values ``--export_format`` accepts: the built-in ones, then every registered format."""
    return (*CHOICES, *(name for name in FORMATS if name not in CHOICES))


def loadable_format(path: str) -> DeployFormat | None:
    """The registered format that runs the file ``path`` (``fmt.load``), None if none does."""
    lowered = str(path).lower()
    return next((f for f in FORMATS.values() if f.load is not None and lowered.endswith(f.suffix)),
                None)


def formats_for(choice: str, kinds=("fp32",)) -> list[DeployFormat]:
    """The formats ``--export_format=choice`` selects; an explicit choice must be installed
    (else :class:`FormatUnavailable`), ``auto`` is ONNX when installed, else nothing."""
    choices = export_choices()
    if choice not in choices:
        raise FormatUnavailable(f"unknown export format {choice!r}; valid: {', '.join(choices)}")
    if choice == "auto":
        onnx = FORMATS["onnx"]
        return [onnx] if not any(onnx.missing(k) for k in kinds) else []
    names = {"none": [], "both": ["pte", "onnx"]}.get(choice, [choice])
    chosen = [FORMATS[n] for n in names]
    for fmt in chosen:
        fmt.require(kinds)
    return chosen
