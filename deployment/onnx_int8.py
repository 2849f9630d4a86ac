"""Int8 QDQ ONNX: a float ONNX model statically quantized by onnxruntime's quantizer.

``quantize_qdq(fp32_path, out_path, calibration)`` inserts QuantizeLinear/DequantizeLinear
pairs in the QDQ format every ONNX runtime understands: weights int8 per output channel
(symmetric), activations uint8 per tensor with ranges from ``calibration`` (batches of inputs,
the MinMax calibrator). onnxruntime on CPU then runs the convolutions and matrix products in
int8. The file is written atomically; the pre-processing (shape inference) that the quantizer
recommends is applied first.
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterable

import torch

from deployment.onnx_export import ExportUnavailable


def quantize_qdq(fp32_path: str, out_path: str, calibration: Iterable[torch.Tensor],
                 per_channel: bool = True) -> str:
    try:
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ExportUnavailable("int8 ONNX needs onnxruntime: pip install -e .[onnx]") from exc
    batches = [{"input": inputs.detach().cpu().float().numpy()} for inputs in calibration]
    if not batches:
        raise ValueError("int8 ONNX quantization needs at least one calibration batch")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(batches)

        def get_next(self):
            return next(self._items, None)

    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".tmp-int8-") as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        quantized = os.path.join(tmp, "int8.onnx")
        quantize_static(prepared, quantized, Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=per_channel)
        os.replace(quantized, out_path)
    return out_path
