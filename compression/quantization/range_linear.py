"""Distiller's range-based linear quantization (``QuantAwareTrainRangeLinearQuantizer`` and
``PostTrainLinearQuantizer`` of a schedule), written from its formulas.

Parameters (Distiller ``distiller/quantization/q_utils.py``), ``k`` bits:
- symmetric (``symmetric_linear_quantization_params``): n = (2^k - 1) / 2 (``SYMMETRIC``) or
  2^(k-1) - 1 (``SYMMETRIC_RESTRICTED``); scale = n / max|x| (max|x| = 0: scale 1); zero point 0;
- asymmetric (``asymmetric_linear_quantization_params``): min <- min(min, 0), max <- max(max, 0),
  n = 2^k - 1, scale = n / (max - min) (0: scale 1), zero point = round(scale * min), plus
  2^(k-1) when signed (``ASYMMETRIC_SIGNED``);
- quantize: q = round(scale * x - zero_point); dequantize: (q + zero_point) / scale, with a
  straight-through gradient (``LinearQuantizeSTE``).
Weights (``linear_quantize_param``): min/max (or max|w|) of the whole tensor or of each output
channel (``per_channel_wts``, 2-D / 4-D weights), recomputed at every forward, no clamp.
Activations (``FakeLinearQuantization``): the min and max of each training batch tracked by an
exponential moving average with bias correction: biased = decay * biased + (1 - decay) * value,
tracked = biased / (1 - decay^step); the input is clamped to [tracked_min, tracked_max] (symmetric:
[-m, m], m = max(|min|, |max|)) and fake-quantized with the scale of those ranges; in eval mode
the ranges (and scale) stay as training left them. A post-training quantizer gives the module
fixed ranges (``set_range``) and no training.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from compression.quantization.dorefa_pact import RELUS, _replace_relus
from compression.quantization.quantizers import bake_parametrizations, parametrizations_of
from compression.sparsity.masks import maskable_layers, parametrize_weights
from utils.model_io import register_spec_transform

MODES = ("SYMMETRIC", "SYMMETRIC_RESTRICTED", "ASYMMETRIC_UNSIGNED", "ASYMMETRIC_SIGNED")
ENTRY_TYPE = "range_linear_act_quant"


def symmetric_params(bits: int, saturation: torch.Tensor, restrict: bool = False):
    """(scale, zero point) of the range [-saturation, saturation] (tensors, element-wise)."""
    sat = torch.as_tensor(saturation, dtype=torch.float32).clone()
    n = 2 ** (bits - 1) - 1 if restrict else (2 ** bits - 1) / 2
    sat[sat == 0] = n
    scale = n / sat
    return scale, torch.zeros_like(scale)


def asymmetric_params(bits: int, low: torch.Tensor, high: torch.Tensor, signed: bool = False):
    """(scale, zero point) of the range [low, high] widened to include 0."""
    low = torch.minimum(torch.as_tensor(low, dtype=torch.float32), torch.zeros(()))
    high = torch.maximum(torch.as_tensor(high, dtype=torch.float32), torch.zeros(()))
    n = 2 ** bits - 1
    diff = (high - low).clone()
    diff[diff == 0] = n
    scale = n / diff
    zero_point = torch.round(scale * low)
    if signed:
        zero_point = zero_point + 2 ** (bits - 1)
    return scale, zero_point


def params_of(bits: int, mode: str, low: torch.Tensor, high: torch.Tensor):
    """(scale, zero point) of ``mode`` for the range [low, high]."""
    if mode.startswith("SYMMETRIC"):
        return symmetric_params(bits, torch.maximum(torch.as_tensor(low).abs(), torch.as_tensor(high).abs()),
                                restrict=mode == "SYMMETRIC_RESTRICTED")
    return asymmetric_params(bits, low, high, signed=mode == "ASYMMETRIC_SIGNED")


def quantize(x: torch.Tensor, scale, zero_point) -> torch.Tensor:
    return torch.round(scale * x - zero_point)


def dequantize(q: torch.Tensor, scale, zero_point) -> torch.Tensor:
    return (q + zero_point) / scale


class _LinearSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point):
        return dequantize(quantize(x, scale, zero_point), scale, zero_point)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def fake_quantize(x: torch.Tensor, scale, zero_point) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        return _LinearSTE.apply(x, scale, zero_point)
    return dequantize(quantize(x, scale, zero_point), scale, zero_point)


def weight_params(weight: torch.Tensor, bits: int, mode: str, per_channel: bool):
    """(scale, zero point) of a weight, per output channel (shaped to broadcast) or per tensor."""
    w = weight.detach()
    if per_channel and w.dim() in (2, 4):
        flat = w.reshape(w.shape[0], -1)
        scale, zp = params_of(bits, mode, flat.min(dim=1)[0], flat.max(dim=1)[0])
        shape = [w.shape[0]] + [1] * (w.dim() - 1)
        return scale.view(shape), zp.view(shape)
    return params_of(bits, mode, w.min(), w.max())


class RangeLinearWeight(nn.Module):
    """Weight fake quantizer (a parametrization): Distiller's range formulas, STE gradient."""

    def __init__(self, bits: int, mode: str, per_channel: bool) -> None:
        super().__init__()
        self.bits, self.mode, self.per_channel = bits, mode, per_channel

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale, zp = weight_params(weight, self.bits, self.mode, self.per_channel)
        return fake_quantize(weight, scale.to(weight), zp.to(weight))

    @torch.no_grad()
    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The integer levels q of ``weight`` (what ``forward`` dequantizes)."""
        scale, zp = weight_params(weight, self.bits, self.mode, self.per_channel)
        return quantize(weight, scale.to(weight), zp.to(weight))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}, per_channel={self.per_channel}"


class FakeLinearQuant(nn.Module):
    """Activation fake quantizer with EMA-tracked (bias-corrected) ranges; ``relu``: apply the
    ReLU it replaces first (Distiller's ``FakeQuantizationWrapper`` around a ReLU)."""

    def __init__(self, bits: int, mode: str, ema_decay: float = 0.999, relu: bool = True) -> None:
        super().__init__()
        self.bits, self.mode, self.relu = bits, mode, relu
        self.ema_decay = float(ema_decay)
        self.fixed = False                # PTQ: ranges set once, never tracked
        for name in ("tracked_min_biased", "tracked_min", "tracked_max_biased", "tracked_max",
                     "iter_count", "zero_point"):
            self.register_buffer(name, torch.zeros(1))
        self.register_buffer("scale", torch.ones(1))

    @torch.no_grad()
    def _track(self, x: torch.Tensor) -> None:
        decay = self.ema_decay
        self.iter_count += 1
        for side, value in (("min", x.min()), ("max", x.max())):
            biased = getattr(self, f"tracked_{side}_biased")
            biased.mul_(decay).add_((1 - decay) * value)
            getattr(self, f"tracked_{side}").copy_(biased / (1 - decay ** self.iter_count))
        self._update_params()

    @torch.no_grad()
    def _update_params(self) -> None:
        scale, zp = params_of(self.bits, self.mode, self.tracked_min, self.tracked_max)
        self.scale.copy_(scale)
        self.zero_point.copy_(zp)

    @torch.no_grad()
    def set_range(self, low: float, high: float) -> None:
        """Fixed ranges (post-training quantization)."""
        self.tracked_min.fill_(low)
        self.tracked_max.fill_(high)
        self.iter_count.fill_(1)
        self.fixed = True
        self._update_params()

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode.startswith("SYMMETRIC"):
            peak = torch.maximum(self.tracked_min.abs(), self.tracked_max.abs())
            return -peak, peak
        return self.tracked_min, self.tracked_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu:
            x = torch.relu(x)
        if self.training and not self.fixed:
            self._track(x)
        low, high = self.clip_range()
        x = torch.minimum(torch.maximum(x, low), high)
        return fake_quantize(x, self.scale, self.zero_point)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, mode={self.mode}, ema_decay={self.ema_decay}, relu={self.relu}, "
                f"range=[{float(self.tracked_min):.4g}, {float(self.tracked_max):.4g}]")


INPUTS = "inputs_quant"


def _quantize_inputs(model: nn.Module, args: tuple) -> tuple:
    return (getattr(model, INPUTS)(args[0]), *args[1:])


def attach_input_quant(model: nn.Module, bits: int, mode: str, ema_decay: float) -> FakeLinearQuant:
    """Distiller's ``quantize_inputs``: the model's input fake-quantized (a forward pre-hook)."""
    module = FakeLinearQuant(bits, mode, ema_decay, relu=False).train(model.training)
    param = next(model.parameters(), None)
    setattr(model, INPUTS, module.to(param.device) if param is not None else module)
    model.register_forward_pre_hook(_quantize_inputs)
    return module


def attach_range_linear(model: nn.Module, weights: dict[str, int], acts: dict[str, int],
                        mode: dict[str, str], per_channel: bool, ema_decay: float,
                        input_bits: int | None = None, quantize_bias: bool = False) -> None:
    """In place: conv/linear layer -> weight bits, ReLU module -> activation bits; ``mode``:
    ``{"weights": ..., "activations": ...}``; ``input_bits``: quantize the model's input."""
    layers = maskable_layers(model)
    unknown = [n for n in weights if n not in layers]
    if unknown:
        raise ValueError(f"not conv/linear layers of the model: {', '.join(unknown)}")
    for bits in sorted(set(weights.values())):
        names = [n for n, b in weights.items() if b == bits]
        parametrize_weights(model, names, lambda name, module, b=bits: RangeLinearWeight(
            b, mode["weights"], per_channel))
        if quantize_bias:
            for name in names:
                if layers[name].bias is not None:
                    parametrize.register_parametrization(layers[name], "bias", RangeLinearWeight(
                        bits, mode["weights"], False))
    for name, bits in acts.items():
        _replace_relus(model, [name], lambda b=bits: FakeLinearQuant(b, mode["activations"], ema_decay))
    if input_bits is not None:
        attach_input_quant(model, input_bits, mode["activations"], ema_decay)


def range_quantizers_of(model: nn.Module) -> dict[str, FakeLinearQuant]:
    return {name: m for name, m in model.named_modules() if isinstance(m, FakeLinearQuant)}


def weight_quantizers_of(model: nn.Module) -> dict[str, RangeLinearWeight]:
    """``"layer.weight"`` / ``"layer.bias"`` -> its RangeLinearWeight."""
    return parametrizations_of(model, RangeLinearWeight)


def bake_range_weights(model: nn.Module) -> nn.Module:
    """In place: every range-quantized weight / bias becomes its fake-quantized values."""
    return bake_parametrizations(model, RangeLinearWeight)


def range_linear_entry(model: nn.Module) -> dict:
    """The spec transform entry recording the activation quantizers (ranges: state dict)."""
    return {"type": ENTRY_TYPE, "modules": {
        name: {"bits": m.bits, "mode": m.mode, "ema_decay": m.ema_decay, "relu": m.relu}
        for name, m in range_quantizers_of(model).items()}}


@register_spec_transform(ENTRY_TYPE)
def _rebuild(model: nn.Module, entry: dict) -> nn.Module:
    for name, item in entry["modules"].items():
        if name == INPUTS:
            module = attach_input_quant(model, item["bits"], item["mode"], item["ema_decay"])
        else:
            _replace_relus(model, [name], lambda i=item: FakeLinearQuant(
                i["bits"], i["mode"], i["ema_decay"]))
            module = model.get_submodule(name)
        module.fixed = True
    return model


def relu_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and isinstance(m, RELUS)]
