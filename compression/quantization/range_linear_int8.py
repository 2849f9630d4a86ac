"""Lowering a range-linear (Distiller) fake-quantized model to a real int8 program.

PT2E with ExecuTorch's XNNPACK quantizer (per-channel symmetric int8 weights in [-127, 127],
per-tensor asymmetric int8 activations), BN folded into the convolutions, then the learned ranges
imposed on the observers:
- weights: the baked fake-quantized values k * step_c (per output channel, symmetric). BN
  folding scales a channel's step by gamma_c / sigma_c and keeps k, and the weight observer
  computes step_c = max|w_c| / 127, so ``SYMMETRIC_RESTRICTED`` weights (|k| <= 127) lower
  exactly; ``SYMMETRIC`` (Distiller's n = 127.5) puts a channel's largest weight at |k| = 128,
  which is clamped to 127 first (one step, counted in ``moved_weights``);
- activations: each ReLU output quantizer (scale s, zero point z, Distiller's q = round(s x - z))
  becomes the observer of that ReLU's output with scale 1 / s and zero point -128 - z_u (z_u: z of
  the unsigned grid), the same grid in int8; the model's input quantizer likewise (symmetric
  input: zero point 0, q clamped to [-128, 127]);
- every other point the int8 program quantizes and Distiller leaves in float (a conv + BN output
  before a residual sum, the classifier's output, the pooling) gets ranges calibrated on
  ``batches`` (min/max): the int8 program differs there from the fake-quantized model, and the
  parity check (``deployment.verify``) compares the two on real inputs.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from compression.quantization.int8_qat import batch_of, quiet, torchao_api
from compression.quantization.range_linear import (INPUTS, _quantize_inputs, range_quantizers_of,
                                                   weight_params, weight_quantizers_of)


def _torch_qparams(q) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) of PyTorch's convention for a FakeLinearQuant's grid in int8."""
    scale = 1.0 / q.scale.detach().float().cpu().reshape(1)
    z = q.zero_point.detach().cpu().reshape(1)
    if q.mode == "ASYMMETRIC_SIGNED":
        z = z - 2 ** (q.bits - 1)
    if q.mode.startswith("SYMMETRIC"):
        zero = torch.full((1,), -128 if q.relu else 0, dtype=torch.int32)
    else:
        zero = (-128 - z).round().to(torch.int32)
    return scale, zero


@torch.no_grad()
def int8_weights(model: nn.Module) -> int:
    """In place (on a copy: the parametrized classes are shared with the original, so the
    modules are rebuilt, not un-parametrized): bake the range-quantized weights, their codes
    clamped to [-127, 127]; returns how many weights moved by the clamp (Distiller's
    SYMMETRIC reaches 128)."""
    moved, baked = 0, {}
    for key, quantizer in weight_quantizers_of(model).items():
        name, _, tensor = key.rpartition(".")
        raw = model.get_submodule(name).parametrizations[tensor].original
        scale, zp = weight_params(raw, quantizer.bits, quantizer.mode, quantizer.per_channel)
        codes = torch.round(scale * raw - zp)
        clamped = codes.clamp(-127, 127) if tensor == "weight" else codes
        moved += int((clamped != codes).sum())
        baked.setdefault(name, {})[tensor] = (clamped + zp) / scale
    for name, values in baked.items():
        module = model.get_submodule(name)
        for tensor in ("weight", "bias"):
            if tensor not in values and tensor in module.parametrizations:
                values[tensor] = getattr(module, tensor).detach()
        plain = module.__class__.__bases__[0].__new__(module.__class__.__bases__[0])
        plain.__dict__.update(module.__dict__)
        plain._modules = {k: v for k, v in module._modules.items() if k != "parametrizations"}
        plain._parameters = dict(module._parameters)
        for tensor, value in values.items():
            plain._parameters[tensor] = nn.Parameter(value.clone())
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)
    return moved


def _strip(model: nn.Module) -> dict[str, tuple]:
    """In place: every activation quantizer back to its ReLU (input quantizer removed);
    returns module name -> int8 (scale, zero point)."""
    ranges = {}
    for name, q in range_quantizers_of(model).items():
        ranges[name] = _torch_qparams(q)
        if name != INPUTS:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, nn.ReLU())
    if hasattr(model, INPUTS):
        delattr(model, INPUTS)
        for key, hook in list(model._forward_pre_hooks.items()):
            if hook is _quantize_inputs:
                del model._forward_pre_hooks[key]
    return ranges


def _module_of(node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("[", ".").replace("]", "")


def lower_int8(model: nn.Module, example: torch.Tensor, batches) -> tuple[nn.Module, dict]:
    """The converted int8 PT2E model of a range-linear fake-quantized ``model`` (unchanged) and
    figures: moved weights, observers set from learned ranges and calibrated ones."""
    api = torchao_api()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    plain = copy.deepcopy(model).cpu().eval()
    moved = int8_weights(plain)
    ranges = _strip(plain)
    x = example.cpu() if example.shape[0] > 1 else batch_of(example.cpu(), 2)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with quiet():
        dims = ({0: torch.export.Dim("batch", min=1)},)
        graph = torch.export.export(plain, (x,), dynamic_shapes=dims).module()
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for inputs in batches:
                prepared(inputs.cpu())
        learned, calibrated = [], []
        for node in prepared.graph.nodes:
            if node.op != "call_module" or "activation_post_process" not in str(node.target):
                continue
            source = node.args[0]
            name = INPUTS if source.op == "placeholder" else (
                _module_of(source) if "relu" in str(source.target) else None)
            observer = prepared.get_submodule(node.target)
            if name in ranges:
                scale, zero = ranges[name]
                observer.calculate_qparams = lambda s=scale, z=zero: (s.clone(), z.clone())
                learned.append(name)
            elif source.op == "call_function":
                calibrated.append(str(source.name))
        converted = api.convert(prepared)
    missing = sorted(set(ranges) - set(learned))
    return converted, {"moved_weights": moved, "learned_ranges": sorted(set(learned)),
                       "calibrated_points": calibrated, "unmatched_quantizers": missing}
