"""Per-layer regression data: input patches of one layer and the outputs they must reproduce.

For a conv layer, ``nb_crops`` random output positions per sample are drawn; at each, the
k x k x c_in input patch (from the network being pruned) and the c_out output values (from
the full network) form one regression row. A linear layer is the 1 x 1 case with one "crop".
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn


class _Stop(Exception):
    """Raised by a hook once the wanted tensor is captured, to skip the rest of the forward."""


def capture(model: nn.Module, module_name: str, inputs: torch.Tensor, what: str) -> torch.Tensor:
    """The input (``what="input"``) or output of ``module_name`` for ``inputs``; the forward
    pass stops right after that module."""
    module = model.get_submodule(module_name)
    box: list[torch.Tensor] = []

    def pre_hook(_mod, args):
        box.append(args[0].detach())
        raise _Stop

    def post_hook(_mod, _args, output):
        box.append(output.detach())
        raise _Stop

    handle = (module.register_forward_pre_hook(pre_hook) if what == "input"
              else module.register_forward_hook(post_hook))
    try:
        with torch.no_grad():
            model(inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not box:
        raise RuntimeError(f"{module_name} was not called during the forward pass")
    return box[0]


def layer_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (c_out, c_in, k*k)."""
    weight = module.weight.detach()
    return weight.reshape(weight.shape[0], weight.shape[1], -1)


def padded_input(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` padded as ``conv`` pads it before its kernel runs: integer or ``'same'`` /
    ``'valid'`` padding (``'same'`` puts the odd pixel of an even kernel last, as torch does)
    in the conv's ``padding_mode``."""
    spatial = len(conv.kernel_size)
    if conv.padding == "valid":
        pads = [(0, 0)] * spatial
    elif conv.padding == "same":
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        pads = [(t // 2, t - t // 2) for t in totals]
    else:
        pads = [(p, p) for p in conv.padding]
    flat = [v for pair in reversed(pads) for v in pair]          # F.pad: last dim first
    if not any(flat):
        return x
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, flat, mode=mode)


def patches_and_targets(module: nn.Module, layer_input: torch.Tensor, layer_output: torch.Tensor,
                        nb_crops: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``(patches (M, c_in, k*k), targets (M, c_out))`` for ``M = N * nb_crops``.

    Targets exclude the layer's bias, so ``patches x weight`` should reproduce them.
    """
    if isinstance(module, nn.Linear):
        if layer_input.dim() > 2:         # (N, ..., C): nb_crops positions of each sample
            flat_in = layer_input.reshape(layer_input.shape[0], -1, layer_input.shape[-1])
            flat_out = layer_output.reshape(layer_output.shape[0], -1, layer_output.shape[-1])
            pos = torch.randint(flat_in.shape[1], (flat_in.shape[0], nb_crops), generator=gen)
            pos = pos.to(flat_in.device).unsqueeze(-1)
            layer_input = flat_in.gather(1, pos.expand(-1, -1, flat_in.shape[-1])).flatten(0, 1)
            layer_output = flat_out.gather(1, pos.expand(-1, -1, flat_out.shape[-1])).flatten(0, 1)
        patches, targets = layer_input.unsqueeze(-1), layer_output
    else:
        layer_input = padded_input(module, layer_input)
        geometry = (module.kernel_size, module.dilation, 0, module.stride)
        if module.weight.dim() == 3:      # a 1-D conv: a 2-D conv over a map of height 1
            layer_input, layer_output = layer_input.unsqueeze(2), layer_output.unsqueeze(2)
            geometry = ((1, *module.kernel_size), (1, *module.dilation), 0, (1, *module.stride))
        cols = F.unfold(layer_input, *geometry)                         # (N, c_in*k*k, L)
        nb_pos = cols.shape[-1]
        pos = torch.randint(nb_pos, (cols.shape[0], nb_crops), generator=gen).to(cols.device)
        cols = cols.gather(2, pos.unsqueeze(1).expand(-1, cols.shape[1], -1))
        patches = cols.permute(0, 2, 1).reshape(-1, module.in_channels, cols.shape[1] // module.in_channels)
        out = layer_output.flatten(2)                                    # (N, c_out, L)
        out = out.gather(2, pos.unsqueeze(1).expand(-1, out.shape[1], -1))
        targets = out.permute(0, 2, 1).reshape(-1, out.shape[1])
    if module.bias is not None:
        targets = targets - module.bias.detach()
    return patches, targets


def normal_equations(patches: torch.Tensor, targets: torch.Tensor,
                     chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """``P'P`` ((c_in*kk)^2) and ``P'Y`` ((c_in*kk) x c_out) of the flattened patches, as
    float32 GEMMs per chunk accumulated in float64. Everything later (the LASSO's Gram matrix,
    the least-squares refit) is computed from these two, whatever the number of rows."""
    flat = patches.reshape(patches.shape[0], -1)
    ptp = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64, device=flat.device)
    pty = torch.zeros(flat.shape[1], targets.shape[1], dtype=torch.float64, device=flat.device)
    for start in range(0, flat.shape[0], chunk):
        p, t = flat[start:start + chunk], targets[start:start + chunk]
        ptp += (p.T @ p).double()
        pty += (p.T @ t).double()
    return ptp, pty


def gram_and_corr(ptp: torch.Tensor, pty: torch.Tensor,
                  weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``A'A`` and ``A'y`` of the per-channel contribution design matrix.

    Column i of A holds channel i's contribution ``patch_i . W[:, i]`` to every (row, c_out)
    output and y stacks the targets the same way, so
    ``(A'A)_ij = sum_kl (P'P)_{ik,jl} (W'W)_{ik,jl}`` and ``(A'y)_i = sum_k,o (P'Y)_{ik,o} W_{o,ik}``.
    """
    c_out, c_in, kk = weight.shape
    w = weight.double().reshape(c_out, c_in * kk)
    gram = (ptp * (w.T @ w)).reshape(c_in, kk, c_in, kk).sum(dim=(1, 3))
    corr = (pty * w.T).reshape(c_in, kk, c_out).sum(dim=(1, 2))
    return gram, corr


def collect(full: nn.Module, pruned: nn.Module, name: str, batches: Iterable[torch.Tensor],
            nb_crops: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches from ``pruned``'s input of layer ``name``, targets from ``full``'s output."""
    module = pruned.get_submodule(name)
    all_patches, all_targets = [], []
    for inputs in batches:
        x = capture(pruned, name, inputs, "input")
        y = capture(full, name, inputs, "output")
        patches, targets = patches_and_targets(module, x, y, nb_crops, gen)
        all_patches.append(patches)
        all_targets.append(targets)
    return torch.cat(all_patches), torch.cat(all_targets)
