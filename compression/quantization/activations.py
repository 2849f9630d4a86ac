"""Uniform fake quantization of activations: an ``ActivationQuantizer`` child module applied to
a module's output by a forward hook (its EMA range travels in the state dict)."""
from __future__ import annotations

import torch
from torch import nn

from compression.quantization.quantizers import StraightThrough, check_bits, range_codes, range_values

ACT_ATTR = "activation_quantizer"


class ActivationQuantizer(nn.Module):
    """k-bit uniform fake quantizer of activations over one range [lo, hi]: in training mode
    (unless ``frozen``) the range is an EMA (``momentum``) of batch min/max, the first batch
    setting it; in eval mode it is frozen (before any training batch, each batch's own min/max
    is used and not stored). Clipped STE: gradient passes only where lo <= x <= hi.
    ``bits`` None or >= 32: identity."""

    def __init__(self, bits: int | None = 8, momentum: float = 0.9, frozen: bool = False) -> None:
        super().__init__()
        self.bits = None if bits is None or bits >= 32 else check_bits(bits)
        self.momentum, self.frozen = float(momentum), frozen
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _track(self, x: torch.Tensor) -> None:
        keep = self.momentum if bool(self.initialized) else 0.0     # first batch: its range
        self.lo.mul_(keep).add_((1 - keep) * x.detach().amin().float())
        self.hi.mul_(keep).add_((1 - keep) * x.detach().amax().float())
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return x
        if self.training and not self.frozen:
            self._track(x)
        if bool(self.initialized):
            lo, hi = self.lo, self.hi
        else:
            lo, hi = x.detach().amin().float(), x.detach().amax().float()
        with torch.no_grad():
            scale = hi - lo
            q = range_values(range_codes(x.float(), lo, scale, self.bits), lo, scale, self.bits)
        return StraightThrough.apply(x, q.to(x.dtype), lo.to(x.dtype), hi.to(x.dtype))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, momentum={self.momentum}, frozen={self.frozen}"


def _quantize_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return getattr(module, ACT_ATTR)(output)


def attach_activation_quantizers(model: nn.Module, names: list[str], bits: int | None,
                                 momentum: float = 0.9) -> dict[str, ActivationQuantizer]:
    """Quantize the output of each named module: an ``ActivationQuantizer`` child named
    ``activation_quantizer`` (its range travels in the state dict) applied by a forward hook."""
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"no module {name!r} in the model") from exc
        if isinstance(getattr(module, ACT_ATTR, None), ActivationQuantizer):
            raise ValueError(f"{name} already has an activation quantizer")
        module.add_module(ACT_ATTR, ActivationQuantizer(bits, momentum).train(module.training))
        module.register_forward_hook(_quantize_output)
    return activation_quantizers_of(model)


def activation_quantizers_of(model: nn.Module) -> dict[str, ActivationQuantizer]:
    return {name: getattr(m, ACT_ATTR) for name, m in model.named_modules()
            if isinstance(getattr(m, ACT_ATTR, None), ActivationQuantizer)}


def detach_activation_quantizers(model: nn.Module) -> nn.Module:
    """Remove every activation quantizer and its hook: the model is exactly as before."""
    for name in activation_quantizers_of(model):
        module = model.get_submodule(name)
        for key in [k for k, fn in module._forward_hooks.items() if fn is _quantize_output]:
            del module._forward_hooks[key]
        delattr(module, ACT_ATTR)
    return model
