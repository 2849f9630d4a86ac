"""Parity of a deployment artifact with the PyTorch model it claims to be, in its own runtime.

- ``fp32`` artifacts: max |artifact - torch| over real inputs <= ``atol`` (1e-4 by default)
  times the largest |output| when that exceeds 1 (float32 rounding grows with the values: a
  barely trained net with logits of 400 differs by ~2e-4 in any second runtime);
- ``int8`` artifacts: accuracy within ``max_drop`` points (0.5) of the int8 PyTorch model on
  the same inputs (the runtimes' int8 kernels may round a few values differently, so values
  are compared through what they decide); max |diff| and top-1 agreement are reported too;
- ``fakequant`` artifacts (float ops rounding activations to a few levels) as ``int8``: a
  runtime's conv may differ from torch's in the last bit, which moves an activation lying on a
  rounding boundary to the next level (~1 % of inputs of a DoReFa W4A4 net), so the values
  cannot match to 1e-4 while the decisions do.

Anything else (an input or output shape the model does not have, values or accuracy off) is
an :class:`ArtifactMismatch` naming both files and the figures.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
from torch import nn

from utils.checkpoint import CheckpointError
from deployment.runners import runner_for
from utils.model_stats import OutputShapeMismatch, compare_runners

ATOL = 1e-4
INT8_MAX_DROP = 1.0  # points of accuracy (1 point: integer rounding moves a few samples)


class ArtifactMismatch(CheckpointError):
    """A deployment artifact does not reproduce the model it was made from."""


class ParityFailure(RuntimeError):
    """Deployment files of a finished run do not reproduce its model; every output and the
    report (``report``, with its ``parity`` section) are already written."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


def parity_section(deployed: dict) -> dict:
    """The report's ``parity``: ``ok`` and each file that failed its check, with its figures."""
    failed = [{"file": figures.get("path"), "check": key,
               "max_abs_diff": figures.get("max_abs_diff"),
               "accuracy": figures.get("accuracy"), "accuracy_torch": figures.get("accuracy_torch"),
               "reason": figures.get("mismatch")}
              for key, figures in deployed.items() if figures.get("parity_ok") is False]
    return {"ok": not failed, "failed": failed}


def parity_failure(section: dict, report: dict) -> ParityFailure:
    """The error a run ends with when files in ``section`` (``parity_section``) failed."""
    files = "; ".join(f["reason"] or str(f["file"]) for f in section["failed"])
    return ParityFailure(
        f"{len(section['failed'])} deployment file(s) do not reproduce the model: {files}. "
        "Every output and report.json are written (report['parity']); pass "
        "--allow_parity_failure (allow_parity_failure=True in the Python API) to accept them",
        report)


def reference_of(model: nn.Module) -> Callable:
    """A float32 CPU eval-mode copy of ``model`` as ``x -> logits`` (an int8 program as is)."""
    if isinstance(model, torch.fx.GraphModule):
        return model  # an exported (int8) program: no train/eval mode, on the CPU already
    return copy.deepcopy(model).cpu().float().eval()


def verify_artifact(path: str, model: nn.Module, batches: Iterable, kind: str = "fp32",
                    atol: float = ATOL, max_drop: float = INT8_MAX_DROP, max_batches: int = 0,
                    nb_threads: int | None = None, strict: bool = True) -> dict:
    """Run the artifact at ``path`` in its runtime against ``model``: the figures with
    ``parity_ok`` (and ``mismatch``, the reason, when not). ``strict``: a file that does not
    reproduce the model raises :class:`ArtifactMismatch` instead. A file that cannot run the
    model's inputs, or gives outputs of another shape, always raises."""
    runner = runner_for(path, nb_threads)
    batches = list(batches)
    shape = tuple(batches[0][0].shape[1:])
    if runner.input_shape is not None and tuple(runner.input_shape) != shape:
        raise ArtifactMismatch(f"{path} takes inputs [b, {', '.join(map(str, runner.input_shape))}]"
                               f" but the model takes [b, {', '.join(map(str, shape))}]: it is "
                               "not an export of this model")
    try:
        figures = compare_runners(runner, reference_of(model), batches, max_batches)
    except OutputShapeMismatch as exc:
        raise ArtifactMismatch(f"{path}: {exc}: it is not an export of this model") from None
    except (RuntimeError, ValueError) as exc:  # the runtime refused the model's inputs
        raise ArtifactMismatch(f"{path} cannot run the model's inputs {list(shape)}: {exc}") from exc
    figures.update(path=path, runtime=runner.runtime, kind=kind, parity_ok=True)
    problem = None
    tolerance = atol * max(1.0, figures["max_abs_output"])
    if kind == "fp32" and figures["max_abs_diff"] > tolerance:
        problem = (
            f"{path} does not match the model: max |{runner.runtime} - torch| = "
            f"{figures['max_abs_diff']:.3g} > {tolerance:.3g} on {figures['nb_samples']} real inputs "
            f"(top-1 agreement {100 * figures['top1_agreement']:.1f} %)")
    drop = 100 * (figures["accuracy_torch"] - figures["accuracy"])
    if kind in ("int8", "fakequant") and abs(drop) > max_drop:
        problem = (
            f"{path} does not match the {kind} model: accuracy {100 * figures['accuracy']:.2f} % in "
            f"{runner.runtime} vs {100 * figures['accuracy_torch']:.2f} % in PyTorch on "
            f"{figures['nb_samples']} inputs (allowed: {max_drop} points)")
    if problem and strict:
        raise ArtifactMismatch(problem)
    if problem:
        figures.update(parity_ok=False, mismatch=problem)
    return figures
