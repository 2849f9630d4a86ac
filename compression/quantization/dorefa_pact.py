"""DoReFa and PACT quantization-aware training (clipped weights and activations).

k = bits, n = 2^k - 1, quantize_k(y) = round(n * y) / n for y in [0, 1] (round half to even),
always with a straight-through gradient (round -> identity).

DoReFa weights (Zhou et al. 2016), a ``torch.nn.utils.parametrize`` parametrization of a
conv/linear weight (like ``compression.sparsity.masks`` / ``compression.quantization.quantizers``):
  k >= 2: t = tanh(w), w_q = 2 * quantize_k(t / (2 max|t|) + 0.5) - 1, in [-1, 1]; the gradient
          is autograd of the tanh normalisation (max included) with round replaced by the
          identity, i.e. that of tanh(w) / max|tanh(w)| (as the paper and Distiller do);
          an all-zero tensor passes unchanged (max|t| = 0);
  k == 1: w_q = sign(w) * mean|w| (sign(0) = +1), identity gradient.
DoReFa activations (replace a ReLU): a_q = quantize_k(clamp(x, 0, 1)); gradient 1 where
0 <= x <= 1, else 0 (clipped STE).
PACT activations (Choi et al. 2018, replace a ReLU): learnable scalar alpha > 0,
y = clamp(x, 0, alpha), a_q = round(y * n / alpha) * alpha / n; gradients (the paper's STE):
d a_q / dx = 1 where 0 <= x < alpha, d a_q / d alpha = 1 where x >= alpha, else 0.
Both methods quantize weights with DoReFa (as Distiller's PACTQuantizer does).

bits: an int in 1..16; None or >= 32 is full precision: the weight quantizer is the identity,
and an activation module keeps its clip (clamp to [0, 1] / [0, alpha], same gradients) without
rounding, since it stands in for a ReLU. The activation forwards are plain float ops (relu,
min, mul, div, round), so a model with ``bake_weights`` applied exports to ONNX as it is;
``clipped_quant_entry`` records the replacements as the ``clipped_act_quant`` spec transform,
with which ``compression.artifacts.load_model`` rebuilds the model (PACT's alpha is in the state dict).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from compression.sparsity.masks import maskable_layers, parametrize_weights
from compression.quantization.quantizers import (BitsModule, bake_parametrizations, optional_bits,
                                                 parametrizations_of, register_weight_quantizer)
from utils.model_io import register_spec_transform

METHODS = ("dorefa", "pact")
RELUS = (nn.ReLU, nn.ReLU6)
ENTRY_TYPE = "clipped_act_quant"


class _RoundSTE(torch.autograd.Function):
    """quantize_k(y) = round(n * y) / n; gradient unchanged (straight through)."""

    @staticmethod
    def forward(ctx, y, levels):
        return torch.round(y * levels) / levels

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _SignMeanSTE(torch.autograd.Function):
    """sign(w) * mean|w| with sign(0) = +1; gradient unchanged."""

    @staticmethod
    def forward(ctx, w):
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype) * w.abs().mean()

    @staticmethod
    def backward(ctx, grad):
        return grad


def _dorefa_act(x: torch.Tensor, levels: float | None) -> torch.Tensor:
    y = torch.clamp(x, 0.0, 1.0)
    return y if levels is None else torch.round(y * levels) / levels


def _pact_act(x: torch.Tensor, alpha: torch.Tensor, levels: float | None) -> torch.Tensor:
    y = torch.minimum(torch.relu(x), alpha)
    return y if levels is None else torch.round(y * levels / alpha) * alpha / levels


class _DorefaActSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, levels):
        ctx.save_for_backward((x >= 0) & (x <= 1))
        return _dorefa_act(x, levels)

    @staticmethod
    def backward(ctx, grad):
        inside, = ctx.saved_tensors
        return grad * inside, None


class _PactSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, levels):
        ctx.save_for_backward(x, alpha)
        return _pact_act(x, alpha, levels)

    @staticmethod
    def backward(ctx, grad):
        x, alpha = ctx.saved_tensors
        grad_x = grad * ((x >= 0) & (x < alpha))
        grad_alpha = (grad * (x >= alpha)).sum().reshape(alpha.shape)
        return grad_x, grad_alpha, None


def _plain(*tensors: torch.Tensor) -> bool:
    """True when no gradient is needed (or when tracing, e.g. ONNX export): plain ops only."""
    return torch.jit.is_tracing() or not (torch.is_grad_enabled()
                                          and any(t.requires_grad for t in tensors))


@register_weight_quantizer
class DorefaWeightQuantizer(BitsModule):
    """DoReFa weight fake quantizer (parametrization): weight -> w_q in [-1, 1] (k >= 2) or
    sign(w) * mean|w| (k = 1); None: identity. ``encode`` gives the same values as k-bit codes
    on one uniform grid per tensor, which ``compression.quantization.packed_format`` bit-packs."""

    bucket_type, bucket_size = "layer", 1

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(codes, scale [1], offset [1])``: ``forward(weight) == scale * codes / (2^k - 1)
        + offset`` exactly (k >= 2: scale 2, offset -1; k = 1: scale 2 mean|w|, offset
        -mean|w|)."""
        w = weight.detach()
        if self.bits == 1:
            m = w.abs().mean().float()
            return (w >= 0).long(), (2 * m).reshape(1), (-m).reshape(1)
        t = torch.tanh(w)
        peak = t.abs().max()
        if peak == 0:
            return torch.zeros_like(w, dtype=torch.long), torch.zeros(1), torch.zeros(1)
        codes = torch.round((t / (2 * peak) + 0.5) * self.levels)
        return codes.long(), torch.full((1,), 2.0), torch.full((1,), -1.0)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return weight
        if self.bits == 1:
            return _SignMeanSTE.apply(weight)
        t = torch.tanh(weight)
        peak = t.abs().max()
        if peak == 0:                                     # all zeros: nothing to scale
            return weight
        return 2 * _RoundSTE.apply(t / (2 * peak) + 0.5, self.levels) - 1


class DorefaActivation(BitsModule):
    """Replaces a ReLU: quantize_k(clamp(x, 0, 1)) with the clipped STE."""

    method = "dorefa"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _plain(x):
            return _dorefa_act(x, self.levels)
        return _DorefaActSTE.apply(x, self.levels)


class PactActivation(BitsModule):
    """Replaces a ReLU: round(clamp(x, 0, alpha) * n / alpha) * alpha / n, learnable ``alpha``."""

    method = "pact"

    def __init__(self, bits: int | None, alpha_init: float = 8.0) -> None:
        super().__init__(bits)
        if isinstance(alpha_init, bool) or not isinstance(alpha_init, (int, float)) \
                or not math.isfinite(alpha_init) or alpha_init <= 0:
            raise ValueError(f"alpha_init must be a finite number > 0, got {alpha_init!r}")
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.to(x.dtype)
        if _plain(x, alpha):
            return _pact_act(x, alpha, self.levels)
        return _PactSTE.apply(x, alpha, self.levels)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha.detach()):.4g}"


CLIPPED = (DorefaActivation, PactActivation)


def _make_activation(method: str, bits: int | None, alpha_init: float) -> nn.Module:
    if method == "dorefa":
        return DorefaActivation(bits)
    if method == "pact":
        return PactActivation(bits, alpha_init)
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def _replace_relus(model: nn.Module, names: list[str], make) -> None:
    """Swap each named ReLU/ReLU6 for ``make()`` (same training mode, device of the model);
    checks every name before replacing any."""
    modules = dict(model.named_modules())
    bad = [n for n in names if n == "" or not isinstance(modules.get(n), RELUS)]
    if bad:
        raise ValueError(f"not ReLU modules of the model: {', '.join(repr(n) for n in bad)}")
    if len(set(names)) != len(names):
        raise ValueError(f"activation modules named twice: {names}")
    param = next(model.parameters(), None)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        module = make().train(modules[name].training)
        if param is not None:
            module = module.to(param.device)
        setattr(model.get_submodule(parent_name), child, module)


def attach_clipped_quantizers(model: nn.Module, method: str, weight_bits: int | None,
                              activation_bits: int | None, weight_layers: list[str] | None = None,
                              activation_modules: list[str] | None = None,
                              alpha_init: float = 8.0, quantize_bias: bool = False) -> dict:
    """In place. Weights: each named conv/linear layer (None: all) gets a DorefaWeightQuantizer
    parametrization on ``.weight`` (and ``.bias`` when present with ``quantize_bias``).
    Activations: each named ReLU/ReLU6 (None: all of them) is replaced by a DorefaActivation
    (``dorefa``) or PactActivation (``pact``). Bits None (or >= 32) leave that side as it is
    (names are still checked). Returns ``{"method", "weight_bits", "activation_bits",
    "weight_layers", "activation_modules"}`` (the layers / modules actually changed)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    weight_bits, activation_bits = optional_bits(weight_bits), optional_bits(activation_bits)
    make_act = lambda: _make_activation(method, activation_bits, alpha_init)  # noqa: E731
    make_act()                                                  # validates alpha_init up front
    layers = maskable_layers(model)
    weight_layers = list(layers) if weight_layers is None else list(weight_layers)
    unknown = [n for n in weight_layers if n not in layers]
    if unknown:
        raise ValueError(f"not conv/linear layers of the model: {', '.join(unknown)}")
    if activation_modules is None:
        activation_modules = [n for n, m in model.named_modules() if isinstance(m, RELUS) and n]
    activation_modules = list(activation_modules)
    modules = dict(model.named_modules())
    bad = [n for n in activation_modules if n == "" or not isinstance(modules.get(n), RELUS)]
    if bad:
        raise ValueError(f"not ReLU modules of the model: {', '.join(repr(n) for n in bad)}")
    if weight_bits is None:
        weight_layers = []
    else:
        parametrize_weights(model, weight_layers,
                            lambda name, module: DorefaWeightQuantizer(weight_bits))
        if quantize_bias:
            for name in weight_layers:
                if layers[name].bias is not None:
                    parametrize.register_parametrization(layers[name], "bias",
                                                         DorefaWeightQuantizer(weight_bits))
    if activation_bits is None:
        activation_modules = []
    else:
        _replace_relus(model, activation_modules, make_act)
    return {"method": method, "weight_bits": weight_bits, "activation_bits": activation_bits,
            "weight_layers": weight_layers, "activation_modules": activation_modules}


def clipped_quantizers_of(model: nn.Module) -> dict[str, nn.Module]:
    """Module name -> DorefaActivation / PactActivation, for every one in the model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, CLIPPED)}


def dorefa_weight_quantizers_of(model: nn.Module) -> dict[str, DorefaWeightQuantizer]:
    """``"layer.weight"`` / ``"layer.bias"`` -> its DorefaWeightQuantizer."""
    return parametrizations_of(model, DorefaWeightQuantizer)


def pact_alpha_l2(model: nn.Module) -> torch.Tensor:
    """Sum of alpha^2 over the PactActivation modules (differentiable; 0. without any)."""
    alphas = [m.alpha for m in model.modules() if isinstance(m, PactActivation)]
    if not alphas:
        return torch.tensor(0.0)
    return torch.stack([a.pow(2) for a in alphas]).sum()


def bake_weights(model: nn.Module) -> nn.Module:
    """In place: replace every DoReFa-parametrized tensor by its quantized values (a plain
    parameter; the tensor's whole parametrization chain is baked); activation modules stay."""
    return bake_parametrizations(model, DorefaWeightQuantizer)


def clipped_quant_entry(model: nn.Module) -> dict:
    """The spec transform entry recording every activation replacement of ``model``."""
    return {"type": ENTRY_TYPE, "modules": {name: {"method": m.method, "bits": m.bits}
                                           for name, m in clipped_quantizers_of(model).items()}}


@register_spec_transform(ENTRY_TYPE)
def _rebuild(model: nn.Module, entry: dict) -> nn.Module:
    """Replace the recorded ReLUs by fresh activation modules (PACT alpha: from the state dict)."""
    for name, item in entry["modules"].items():
        _replace_relus(model, [name], lambda: _make_activation(item["method"], item["bits"], 8.0))
    return model
