"""ONNX export with a parity check in onnxruntime (``pip install -e .[onnx]``)."""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from typing import Iterator, Sequence

import torch
from torch import nn

from compression.artifacts import suffix
from utils.model_stats import compare_runners


class ExportUnavailable(RuntimeError):
    """onnx / onnxruntime are not installed."""


def export_onnx(model: nn.Module, input_shape: Sequence[int], path: str, opset: int = 17) -> str:
    """Export ``model`` (eval mode, dynamic batch) to ``path`` atomically; returns the path.
    Layers that compute a few channels of a wider tensor (``Scatter*``) are written as the
    layer and a one-hot 1x1 conv (``index_copy`` would become a dozen shape ops)."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ExportUnavailable("ONNX export needs onnx and onnxruntime: pip install -e .[onnx]") from exc
    from compression.surgery.picks import is_scatter, scatters_as_products

    if any(is_scatter(m) for m in model.modules()):
        model = scatters_as_products(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix("onnx"), dir=directory)
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


def export_onnx_program(program, path: str) -> str:
    """An exported program (e.g. the int8 model of ``compression.quantization.int8_qat``, whose
    quantize/dequantize ops become QuantizeLinear/DequantizeLinear: a QDQ model with the very
    scales and zero points it was trained with) to ``path`` atomically, through the dynamo
    exporter (needs ``onnxscript``)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportUnavailable("exporting an int8 program to ONNX needs onnx, onnxruntime and "
                                "onnxscript: pip install -e .[onnx]") from exc
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix("onnx"), dir=directory)
    os.close(fd)
    try:
        with warnings.catch_warnings(), _quiet_logs("torch.onnx", "onnxscript", "onnx_ir"):
            warnings.simplefilter("ignore")
            exported = torch.onnx.export(program, (), dynamo=True, verbose=False, optimize=True,
                                         input_names=["input"], output_names=["logits"])
        proto = exported.model_proto
        for node in proto.graph.node:  # the exporter's per-node stack traces: not deployed
            del node.metadata_props[:]
            node.doc_string = ""
        _activations_to_uint8(proto)
        del proto.graph.value_info[:]  # intermediate shapes: onnxruntime infers them (~10 %)
        _short_names(proto)
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _activations_to_uint8(proto) -> None:
    """Per-tensor int8 activations -> uint8 with the zero point + 128: the same values (q_u8 =
    q_s8 + 128, both saturating at the same reals), in the u8-activation / s8-weight form whose
    QLinearConv / QLinearMatMul kernels onnxruntime runs fastest on x86. Weights (constant
    inputs of DequantizeLinear) stay int8. The graph's inferred intermediate types are stale
    afterwards: the caller drops them."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    converted: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            continue  # a weight
        zp = inits.get(node.input[2])
        if zp is None or zp.data_type != TensorProto.INT8 or list(zp.dims):
            continue
        if node.input[2] not in converted:
            value = numpy_helper.to_array(zp).astype("int16") + 128
            name = node.input[2] + "_u8"
            proto.graph.initializer.append(numpy_helper.from_array(value.astype("uint8"), name))
            converted[node.input[2]] = name
        node.input[2] = converted[node.input[2]]
    used = {name for node in proto.graph.node for name in node.input}
    keep = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)


def _short_names(proto) -> None:
    """Drop node names and give every internal tensor a short name (the exporter's long names,
    one per tensor and node, were ~10 % of a small int8 model); graph inputs and outputs keep
    theirs."""
    graph = proto.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]


@contextlib.contextmanager
def _quiet_logs(*names: str) -> Iterator[None]:
    """Only errors from these loggers for the duration (the dynamo exporter's progress)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


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


# -- exporting saved artifacts (tools/export_onnx.py) --------------------------------------------
class NotExportable(ValueError):
    """The model holds parts that have no ONNX export (yet)."""


def check_exportable(spec: dict) -> None:
    """Refuse a spec whose transforms have no ONNX export: activation fake-quantizers
    (``act_quant``) run as forward hooks with custom rounding that no ONNX op reproduces."""
    kinds = [entry.get("type") for entry in (spec or {}).get("transforms", [])]
    if "act_quant" in kinds:
        raise NotExportable("the model has activation fake-quantizers (an 'act_quant' transform): "
                            "activation fake-quantizers have no ONNX export yet; export the weight-"
                            "only model (activation bits 32) or the int8 .pte of int8-qat instead")


def onnx_session(path: str, nb_threads: int | None = None):
    """An onnxruntime CPU session (``intra_op_num_threads = nb_threads`` when given)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportUnavailable("running an .onnx needs onnxruntime: pip install -e .[onnx]") from exc
    options = ort.SessionOptions()
    if nb_threads:
        options.intra_op_num_threads = int(nb_threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def run_session(session, inputs: torch.Tensor) -> torch.Tensor:
    """The session's first output for a float32 CPU copy of ``inputs``."""
    name = session.get_inputs()[0].name
    array = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
    return torch.from_numpy(session.run(None, {name: array})[0])


def session_input_shape(session) -> tuple | None:
    """The input shape without batch recorded in the graph (None if any dim is symbolic)."""
    dims = session.get_inputs()[0].shape[1:]
    return tuple(dims) if all(isinstance(d, int) for d in dims) else None


def compare_outputs(session, model: nn.Module, batches, max_batches: int = 0) -> dict:
    """onnxruntime vs a float32 CPU copy of ``model`` over ``(inputs, labels)`` batches
    (``labels`` None: no accuracy): ``{"max_abs_diff", "nb_samples", "accuracy_torch",
    "accuracy_onnx"}`` (accuracies: argmax of the logits == label)."""
    reference = copy.deepcopy(model).cpu().float().eval()
    figures = compare_runners(lambda x: run_session(session, x), reference, batches, max_batches)
    return {"max_abs_diff": figures["max_abs_diff"], "nb_samples": figures["nb_samples"],
            "accuracy_torch": figures["accuracy_torch"], "accuracy_onnx": figures["accuracy"]}
