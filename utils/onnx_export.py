"""ONNX export with a parity check in onnxruntime (``pip install -e .[onnx]``)."""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from typing import Sequence

import torch
from torch import nn


class ExportUnavailable(RuntimeError):
    """onnx / onnxruntime are not installed."""


def export_onnx(model: nn.Module, input_shape: Sequence[int], path: str, opset: int = 17) -> str:
    """Export ``model`` (eval mode, dynamic batch) to ``path`` atomically; returns the path."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ExportUnavailable("ONNX export needs onnx and onnxruntime: pip install -e .[onnx]") from exc
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=directory)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(model, (torch.zeros(1, *input_shape, device=device),), tmp,
                              dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        model.train(was_training)
    return path


def onnx_max_abs_diff(path: str, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest |onnxruntime - torch| over ``inputs``, both on the CPU in float32 (a copy of the
    model: on a GPU, TF32 convolutions alone differ by ~1e-3 from any float32 runtime)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportUnavailable("the ONNX check needs onnxruntime: pip install -e .[onnx]") from exc
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    reference = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        expected = reference(inputs.cpu())
    got = session.run(None, {"input": inputs.cpu().numpy()})[0]
    return float((torch.from_numpy(got) - expected).abs().max())
