"""Output channels that nothing reads, found by perturbation (independent of the channel graph).

``unread_channels(model, input_shape)``: large noise (either sign) is added to one output
channel of one conv / linear module at a time and the model's output compared with the clean
one, on a copy with random weights whose ReLU-like activations pass values through (so only
the wiring, not the trained values, can hide a channel). ``wasted_flops`` prices those
channels: each module's FLOPs times its share of unread outputs. Used by the tests of the zoo
of user-style nets and by ``benchmarks/zoo_pruning.py``.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compression.surgery.picks import is_scatter
from utils.model_stats import count_flops

WRITERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)


RECTIFIERS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.PReLU, nn.SiLU, nn.GELU)


@contextmanager
def _linear_activations():
    """ReLU-like activations as the identity: a channel that a ReLU zeroes for every input
    is dead by its values, not by the graph; the probe asks about the graph."""
    saved = torch.relu, F.relu
    torch.relu = F.relu = lambda x, *args, **kwargs: x
    try:
        yield
    finally:
        torch.relu, F.relu = saved


@torch.no_grad()
def unread_channels(model: nn.Module, input_shape: Sequence[int],
                    seed: int = 0) -> dict[str, int]:
    """``module -> output channels whose value changes nothing`` for every conv / linear
    module: large noise (either sign) is added to one output channel at a time and the
    model's output compared with the clean one, on a copy with random weights whose ReLU-like
    activations pass values through (so only the wiring can hide a channel)."""
    model = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():                 # random weights: a zero column is a value, not wiring
        for param in model.parameters():        # unit gain per layer: no overflow in deep nets
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=gen) / param[0].numel() ** 0.5)
            else:                # per-channel scales in [0.5, 1.5]: none hides its channel
                param.copy_(torch.rand(param.shape, generator=gen) + 0.5)
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
    for name, module in list(model.named_modules()):
        if isinstance(module, RECTIFIERS):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    x = torch.randn(4, *input_shape, generator=gen)
    unread = {}
    with _linear_activations():
        clean = model(x)
        for name, module in model.named_modules():
            if not isinstance(module, WRITERS):
                continue
            count = 0
            transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d))
            positions = range(module.weight.shape[1 if transposed else 0])
            if is_scatter(module):                 # its channels lie at out_index of a wider
                positions = module.out_index.tolist()      # output (compression.surgery.picks)
            for channel in positions:
                changed = False
                for sign in (1.0, -1.0):
                    def hook(_m, _a, out, c=channel, s=sign, linear=isinstance(module, nn.Linear)):
                        out = out.clone()           # a linear layer's features: the last dim
                        picked = out[..., c] if linear else out[:, c]
                        picked += s * 100.0 * (1.0 + torch.rand(picked.shape, generator=gen))
                        return out

                    handle = module.register_forward_hook(hook)
                    try:
                        changed |= bool((model(x) - clean).abs().max()
                                        > 1e-5 * (1.0 + clean.abs().max()))
                    finally:
                        handle.remove()
                count += int(not changed)
            if count:
                unread[name] = count
    return unread



def wasted_flops(model: nn.Module, input_shape: Sequence[int],
                 unread: dict[str, int] | None = None) -> int:
    """FLOPs spent on output channels nothing reads (``unread``: from ``unread_channels``)."""
    unread = unread_channels(model, input_shape) if unread is None else unread
    total = 0
    for name, count in unread.items():
        module = model.get_submodule(name)
        transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d))
        outputs = module.weight.shape[1 if transposed else 0]
        total += round(_module_flops(model, name, input_shape) * count / outputs)
    return total


def _module_flops(model: nn.Module, name: str, input_shape: Sequence[int]) -> int:
    """FLOPs of one conv / linear module in a forward pass (2 per multiply-add, as counted by
    ``torch.utils.flop_counter``)."""
    module, shapes = model.get_submodule(name), []
    handle = module.register_forward_hook(
        lambda _m, args, out: shapes.append((args[0].shape, out.shape)))
    try:
        count_flops(model, input_shape)
    finally:
        handle.remove()
    (in_shape, out_shape), weight = shapes[0], module.weight
    if isinstance(module, nn.Linear):
        return 2 * out_shape.numel() * weight.shape[1]
    per_output = weight[0].numel()                      # in / groups x kernel
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
        return 2 * in_shape.numel() * weight[0].numel()  # each input meets out/groups x kernel
    return 2 * out_shape.numel() * per_output
