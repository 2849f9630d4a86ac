"""8-bit quantization-aware training that ends in a real int8 ExecuTorch (XNNPACK) program.

torchao PT2E + ExecuTorch (``torch.ao.quantization`` is deprecated)::

    qat = prepare_qat(model, example_inputs)   # export (dynamic batch) + fake quant
    ... train qat like any nn.Module ...       # train()/eval() switch BN and observers
    int8 = convert_int8(qat)                   # q/dq reference model (eager), BN folded
    deployment.pte.export_pte(int8, example_inputs, "m.pte", quantized=True)
    logits = deployment.pte.PteModel("m.pte")(images)   # ExecuTorch runtime only

XNNPACK quantizer: symmetric per-output-channel int8 weights ([-127, 127]), per-tensor affine
int8 activations, moving-average fake quant; conv and BN stay separate during QAT (BN trains,
running stats update) and are folded at conversion. A ``.pte`` takes float inputs and returns
float logits (quantize/dequantize run inside the delegate). ExecuTorch plans memory for an
upper bound, so its batch is dynamic in ``[1, max_batch]`` (default) or static; the constant
methods ``max_batch`` / ``dynamic_batch`` record which, and :class:`PteModel` splits larger
batches (and pads smaller ones for a static program).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from types import SimpleNamespace
from typing import Iterable, Iterator, Optional

import torch
from torch import nn


__all__ = ["Int8ExportUnavailable", "QatModel", "prepare_qat", "convert_int8", "output_scale"]

INSTALL_HINT = "pip install executorch==1.5.1 (it brings torchao)"
# Known noise of torch 2.13 / torchao 0.18 / executorch 1.5.1, silenced only around our calls.
_NOISY_WARNINGS = (
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated"),    # torchao import
    (DeprecationWarning, r"(read_text|open_text|read_binary) is deprecated"),  # executorch
    (Warning, r"This API is experimental and subject to change"),  # executorch pybindings
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),  # exir deepcopy
)
_NOISY_LOGS = {  # logger name -> message prefixes (logged once, at import)
    "torchao": ("Failed to load",),                 # CUDA-only kernel libraries
    "torchao.kernel.intmm": ("Warning: Detected no triton",),
    "torch.utils._pytree": ("<enum 'KernelPreference'> is an Enum subclass",),
}


class Int8ExportUnavailable(ImportError):
    """torchao / executorch (needed for int8 QAT and ``.pte`` export) cannot be imported."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence exactly the known noisy warnings and log lines listed above."""
    filters = [(logging.getLogger(name), lambda r, p=p: not str(r.getMessage()).startswith(p))
               for name, p in _NOISY_LOGS.items()]
    for logger, flt in filters:
        logger.addFilter(flt)
    try:
        with warnings.catch_warnings():
            for category, message in _NOISY_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for logger, flt in filters:
            logger.removeFilter(flt)


_API: Optional[SimpleNamespace] = None


def torchao_api() -> SimpleNamespace:
    """Import torchao's PT2E flow and ExecuTorch's XNNPACK lowering once (lazily)."""
    global _API
    if _API is None:
        try:
            with quiet():
                import torchao.quantization.pt2e as pt2e
                import torchao.quantization.pt2e.qat_utils as qat_utils
                from executorch.backends.xnnpack.partition import xnnpack_partitioner as xp
                from executorch.backends.xnnpack.quantizer import xnnpack_quantizer as xq
                from executorch.exir import to_edge_transform_and_lower
                from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
        except ImportError as exc:
            raise Int8ExportUnavailable(f"int8 QAT/export needs torchao and executorch: "
                                        f"{INSTALL_HINT} ({exc})") from exc
        _API = SimpleNamespace(pt2e=pt2e, qat_utils=qat_utils, partitioner=xp.XnnpackPartitioner,
                               quantizer=xq.XNNPACKQuantizer, lower=to_edge_transform_and_lower,
                               config=xq.get_symmetric_quantization_config, convert=convert_pt2e,
                               prepare_qat=prepare_qat_pt2e)
    return _API


@contextlib.contextmanager
def _only_present_conv_patterns() -> Iterator[None]:
    """Speed-up: torchao fuses/folds conv-BN by exporting 24 pattern graphs for each of conv1d,
    conv2d, conv_transpose1d/2d (~30 s on 2 cores); run only the kinds the graph contains."""
    qat_utils = torchao_api().qat_utils
    names = [n for n in ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper") if hasattr(qat_utils, n)]
    saved = {n: getattr(qat_utils, n) for n in names}

    def skip_absent(helper):
        def wrapper(m, conv_fn, *args, **kwargs):
            packet = getattr(torch.ops.aten, getattr(conv_fn, "__name__", ""), None)
            if packet is not None and not any(getattr(n.target, "overloadpacket", None) is packet
                                              for n in m.graph.nodes):
                return m
            return helper(m, conv_fn, *args, **kwargs)
        return wrapper

    for n in names:
        setattr(qat_utils, n, skip_absent(saved[n]))
    try:
        yield
    finally:
        for n in names:
            setattr(qat_utils, n, saved[n])


@contextlib.contextmanager
def no_batch_size_guards() -> Iterator[None]:
    """Disable NNPACK/oneDNN while lowering: their conv backend choice tests ``batch >= 16`` on
    the fake tensors, which narrows the program's batch range to one side of 16."""
    nnpack = torch.backends.nnpack.set_flags(False)[0]
    mkldnn = torch.backends.mkldnn.set_flags(False, None, None, None)[0]
    try:
        yield
    finally:
        torch.backends.nnpack.set_flags(nnpack)
        torch.backends.mkldnn.set_flags(mkldnn, None, None, None)


def batch_of(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` repeated/truncated along dim 0 to ``n`` rows (example inputs for export)."""
    reps = -(-n // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n].contiguous()


class QatModel(nn.Module):
    """A PT2E fake-quant GraphModule usable like an nn.Module in a training loop.

    ``train()`` / ``eval()`` rewrite BN (and dropout) in the exported graph between training
    and inference behaviour and enable / disable the observers (as TF's training / eval
    graphs: eval uses the learned ranges without updating them)."""

    def __init__(self, prepared: nn.Module, input_shape: tuple) -> None:
        super().__init__()
        self.prepared = prepared
        self.input_shape = tuple(input_shape)
        self.observers_frozen = False
        self.bn_frozen = False   # BN on its running statistics also in training mode
        self._graph_mode = True  # prepare_qat exports in training mode
        self.train(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prepared(x)

    def train(self, mode: bool = True) -> "QatModel":
        api = torchao_api().pt2e
        graph_mode = mode and not self.bn_frozen
        if graph_mode != self._graph_mode:  # the graph rewrite costs ~1 s: only on a change
            with quiet():
                (api.move_exported_model_to_train if graph_mode
                 else api.move_exported_model_to_eval)(self.prepared)
            self._graph_mode = graph_mode
        self.prepared.apply(api.enable_observer if mode and not self.observers_frozen
                            else api.disable_observer)
        for module in self.modules():  # no recursion through the graph's disallowed train()
            module.training = mode
        return self

    def freeze_observers(self) -> None:
        """Stop updating quantization ranges (also in train mode), e.g. late in training."""
        self.observers_frozen = True
        self.prepared.apply(torchao_api().pt2e.disable_observer)

    def freeze_bn(self) -> None:
        """BN uses (and stops updating) its running statistics, also in training mode
        (TensorFlow's ``freeze_bn_delay``); the exported graph switches dropout with it."""
        self.bn_frozen = True
        self.train(self.training)

    def fake_quant(self, enabled: bool) -> None:
        """Quantize weights and activations in the forward pass, or pass them through as
        floats while the observers keep tracking ranges (TensorFlow's ``quant_delay``)."""
        api = torchao_api().pt2e
        self.prepared.apply(api.enable_fake_quant if enabled else api.disable_fake_quant)

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor]) -> None:
        """Update the observers on ``batches`` with BN in inference mode (PTQ-style)."""
        mode = self.training
        self.train(False)
        self.prepared.apply(torchao_api().pt2e.enable_observer)
        for x in batches:
            self.prepared(x)
        self.train(mode)


def _qat_config(api: SimpleNamespace):
    """XNNPACK's QAT config (per-channel symmetric int8 weights), with the weights' fake quant
    made non-fused. The fused per-channel kernel (torchao 0.18 / torch 2.13) does not clamp a
    channel's running min to <= 0: a channel whose (BN-folded) weights are all positive gets an
    affine zero point of -127 although the scheme is symmetric. QAT then trains with it, the
    converted PyTorch model keeps it, and XNNPACK, which takes symmetric weights to have zero
    point 0, computes that channel wrongly (seen on a trained digits ResNet-20's stem: the
    .pte lost 1.1 points against the int8 PyTorch model). ``FakeQuantize`` with the same
    moving-average observer computes symmetric scales and zero point 0 as the scheme says."""
    import dataclasses

    from torchao.quantization.pt2e.fake_quantize import FakeQuantize

    config = api.config(is_per_channel=True, is_qat=True)
    observer = config.weight.observer_or_fake_quant_ctr.p.keywords["observer"]
    weight = dataclasses.replace(config.weight, observer_or_fake_quant_ctr=FakeQuantize.with_args(
        eps=2 ** -12, observer=observer))
    return dataclasses.replace(config, weight=weight)


def prepare_qat(model: nn.Module, example_inputs: torch.Tensor) -> QatModel:
    """Export a copy of ``model`` (training mode, dynamic batch) and insert int8 fake quant
    (XNNPACK quantizer, per-channel symmetric weights, QAT config). ``model`` is unchanged."""
    api = torchao_api()
    model = copy.deepcopy(model).train()
    x = example_inputs if example_inputs.shape[0] > 1 else batch_of(example_inputs, 2)
    quantizer = api.quantizer().set_global(_qat_config(api))
    with quiet(), _only_present_conv_patterns():
        dims = ({0: torch.export.Dim("batch", min=1)},)
        graph = torch.export.export(model, (x,), dynamic_shapes=dims).module()
        prepared = api.prepare_qat(graph, quantizer)
    return QatModel(prepared, tuple(x.shape[1:]))


def _trained_qparams(fake_quant: nn.Module):
    """``calculate_qparams`` returning the scale / zero point the fake quant applied in
    training. torchao's fused per-channel symmetric kernel stores scales that differ by a
    factor 1 +- 1/256 from what its observer recomputes at conversion (torchao 0.18), which
    shifts ~5 % of the int8 weights by one step; converting with the trained ones keeps the
    int8 model equal to the fake-quant one."""
    return lambda: (fake_quant.scale.detach().clone(), fake_quant.zero_point.detach().clone())


def convert_int8(qat: QatModel) -> nn.Module:
    """The converted int8 model on the CPU (quantize/dequantize ops around float kernels, BN
    folded into the conv weights) from a copy of ``qat``'s eval-mode graph; ``qat`` stays
    trainable."""
    api = torchao_api()
    with quiet(), _only_present_conv_patterns():
        prepared = copy.deepcopy(qat.prepared).cpu()
        if qat.training:
            api.pt2e.move_exported_model_to_eval(prepared)
        for module in prepared.modules():
            if isinstance(module, api.pt2e.FakeQuantizeBase) and hasattr(module, "zero_point"):
                module.calculate_qparams = _trained_qparams(module)
        return api.convert(prepared)


def output_scale(converted: nn.Module) -> float:
    """Quantization step of the converted model's (first) output: the scale of its last
    ``dequantize_per_tensor`` (the final linear's output quantizer)."""
    out = next(n for n in converted.graph.nodes if n.op == "output")
    node = out.args[0][0] if isinstance(out.args[0], (tuple, list)) else out.args[0]
    if node.op != "call_function" or "dequantize_per_tensor" not in str(node.target):
        raise ValueError(f"the model output comes from {node.target}, not a dequantize op")
    scale = node.args[1]
    return float(converted.get_buffer(scale.target) if isinstance(scale, torch.fx.Node) else scale)


def is_quantized(model: nn.Module) -> bool:
    graph = getattr(model, "graph", None)
    return graph is not None and any("quantize_per" in str(n.target) for n in graph.nodes)
