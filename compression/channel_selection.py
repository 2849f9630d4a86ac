"""Layer-by-layer input-channel selection with least-squares refit (chn-pruned-rmt's core).

For each layer, in execution order: regression rows are sampled with inputs from the network
being pruned (so earlier pruning errors are compensated) and targets from the full network;
channels are chosen by a registered criterion (``ista``: LASSO path, exact count; ``l1``:
weight magnitude; ``random``; ``group-prox``: L2,1 proximal gradient, ``compression.group_prox``);
the kept channels' weights are refitted by least squares and the others zeroed.
The result is a masked model plus the kept indices, which ``thinning.thin`` turns into a
physically smaller model computing the same function.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from compression.graph import PrunableLayer
from compression.group_prox import group_prox
from compression.ista import normalised_problem, select_exact
from compression.layer_sampling import collect, gram_and_corr, layer_weight, normal_equations
from compression.lstsq import reconstruction_error, refit_adam, refit_closed

log = logging.getLogger("pocketflow")


@dataclass
class SelectionSettings:
    method: str = "ista"
    nb_crops: int = 10
    ista_lrn_rate: float = 1.0
    ista_nb_iters: int = 100
    lstsq: str = "closed"
    lstsq_lrn_rate: float = 1e-3
    lstsq_nb_iters: int = 100
    seed: int = 0
    prox_lrn_rate: float = 1e-2   # group-prox: initial step on the normalised problem
    prox_nb_iters: int = 1000     # group-prox: proximal iterations


def round_to_multiple(count: int, in_channels: int, multiple: int) -> int:
    """The nearest multiple of ``multiple`` (at least one multiple, at most ``in_channels``);
    layers narrower than ``multiple`` keep ``count``. CPU kernels are much faster on channel
    counts that are multiples of 8, whatever the FLOPs say.

    A negative ``multiple`` ``-b`` is a SIMD block of ``b`` channels (``cpu_channel_block``):
    counts up to ``b`` are kept as they are and larger ones go to the nearest multiple of
    ``b``. oneDNN's convolutions cost in proportion to the channels up to one block and a
    whole block for any part of one above it (``docs/speed.md``)."""
    if multiple < 0:
        block = -multiple
        if count <= block or in_channels <= block:
            return count
        return min(in_channels, max(block, int(round(count / block)) * block))
    if multiple <= 1 or in_channels < multiple:
        return count
    return min(in_channels, max(multiple, int(round(count / multiple)) * multiple))


def cpu_channel_block() -> int:
    """Channels per SIMD register of float32 on this CPU as ATen dispatches it: 16 with
    AVX-512, else 8 (AVX2, Arm)."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def off_block_widths(kept: Mapping[str, Sequence[int]], block: int) -> dict[str, int]:
    """``layer -> kept count`` of the pruned layers (``kept``: ``layer -> [kept, original]``,
    as ``compression.thinning.kept_channels`` gives) whose count is above one SIMD ``block``
    and not a multiple of it: oneDNN runs them at the cost of the next multiple."""
    return {name: counts[0] for name, counts in kept.items()
            if counts[0] > block and counts[0] % block}


def block_width_note(kept: Mapping[str, Sequence[int]], block: int) -> str | None:
    """The one-line note for a run whose pruned layers keep counts between SIMD blocks
    (``off_block_widths``), or None when every count is a whole block or within one."""
    off = off_block_widths(kept, block)
    if not off:
        return None
    named = ", ".join(f"{name}: {count}" for name, count in list(off.items())[:4])
    return (f"{len(off)} of {len(kept)} pruned layers keep a channel count above {block} that is "
            f"not a multiple of {block} ({named}{', ...' if len(off) > 4 else ''}): oneDNN runs "
            "them at the cost of the next multiple on this CPU; the channel learners' "
            "channel_multiple=-1 rounds counts to whole SIMD blocks (docs/speed.md)")


def nb_kept(in_channels: int, ratio: float) -> int:
    """PocketFlow's count: int(c_in * (1 - ratio)), at least one channel."""
    return max(1, int(in_channels * (1.0 - ratio)))


def counts_for_ratios(layers: Sequence[PrunableLayer], ratios: Mapping[str, float],
                      multiple: int = 1) -> dict[str, int]:
    """Kept input channels per layer for per-layer PRUNING ratios (PocketFlow's counts,
    rounded to ``multiple``)."""
    return {layer.name: round_to_multiple(nb_kept(layer.in_channels, ratios[layer.name]),
                                          layer.in_channels, multiple) for layer in layers}


def choose_layers(layers: Sequence[PrunableLayer], skip_first: bool, skip_last: bool,
                  skip_names: Sequence[str]) -> list[PrunableLayer]:
    """The layers to prune after the skip rules; warns about skip names that match nothing."""
    unmatched = [s for s in skip_names if not any(s in layer.name for layer in layers)]
    if unmatched:
        warnings.warn(f"skip names {unmatched} match no prunable layer; layer names are: "
                      f"{', '.join(layer.name for layer in layers)}", stacklevel=2)
    chosen = []
    for i, layer in enumerate(layers):
        if (skip_first and layer.is_first) or (skip_last and i == len(layers) - 1):
            continue
        if any(s in layer.name for s in skip_names) or layer.in_channels < 2:
            continue
        chosen.append(layer)
    return chosen


Selector = Callable[..., tuple[torch.Tensor, torch.Tensor]]
SELECTORS: dict[str, Selector] = {}


def register_selection(name: str) -> Callable[[Selector], Selector]:
    """A selection criterion ``(normal_eqs, weight (c_out, c_in, kk), nb_keep, settings,
    generator) -> (kept indices (sorted), weight to start the refit from)``."""
    def add(selector: Selector) -> Selector:
        SELECTORS[name] = selector
        return selector
    return add


@register_selection("ista")
def _ista(normal_eqs, weight, nb_keep, cfg, gen):
    gram, corr = gram_and_corr(*normal_eqs, weight)
    gram, corr, _ = normalised_problem(gram=gram, corr=corr)
    keep, _ = select_exact(gram, corr, nb_keep, cfg.ista_lrn_rate, cfg.ista_nb_iters, seed=cfg.seed)
    return keep, weight


@register_selection("l1")
def _l1(normal_eqs, weight, nb_keep, cfg, gen):
    return weight.abs().sum(dim=(0, 2)).topk(nb_keep).indices.sort().values, weight


@register_selection("random")
def _random(normal_eqs, weight, nb_keep, cfg, gen):
    keep = torch.randperm(weight.shape[1], generator=gen)[:nb_keep].sort().values
    return keep.to(weight.device), weight


@register_selection("group-prox")
def _group_prox(normal_eqs, weight, nb_keep, cfg, gen):
    return group_prox(*normal_eqs, weight, nb_keep, cfg.prox_lrn_rate, cfg.prox_nb_iters)


SELECTIONS = tuple(SELECTORS)


# A refit's largest weight may be at most this multiple of the layer's largest before it.
REFIT_BOUND = 10.0


def _pick(method: str, normal_eqs, weight, nb_keep: int, cfg: SelectionSettings,
          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if method not in SELECTORS:
        raise ValueError(f"unknown selection {method!r}; valid: {', '.join(SELECTORS)}")
    return SELECTORS[method](normal_eqs, weight, nb_keep, cfg, gen)


def _refit(normal_eqs, weight, keep, cfg: SelectionSettings) -> torch.Tensor:
    if cfg.lstsq == "closed":
        return refit_closed(*normal_eqs, keep, weight.shape[2],
                            max_abs=REFIT_BOUND * float(weight.abs().max()))
    return refit_adam(*normal_eqs, keep, weight, cfg.lstsq_lrn_rate, cfg.lstsq_nb_iters)


@torch.no_grad()
def set_kept_weight(module: nn.Module, kept_weight: torch.Tensor, keep: torch.Tensor) -> None:
    """Write (c_out, |K|, kk) weights of the kept input channels; zero the others."""
    flat = torch.zeros_like(layer_weight(module))
    flat[:, keep] = kept_weight.to(flat.dtype)
    module.weight.copy_(flat.reshape(module.weight.shape))


def refit_kept(full: nn.Module, pruned: nn.Module, name: str, keep: torch.Tensor,
               batches: Sequence[torch.Tensor], nb_crops: int, gen: torch.Generator) -> float:
    """Closed-form least-squares weights for layer ``name``'s kept input channels (inputs from
    ``pruned``, targets from ``full``), written in place; returns the relative error."""
    patches, targets = collect(full, pruned, name, batches, nb_crops, gen)
    module = pruned.get_submodule(name)
    keep = keep.to(patches.device)
    bound = REFIT_BOUND * float(layer_weight(module).abs().max())
    set_kept_weight(module, refit_closed(*normal_equations(patches, targets), keep,
                                         patches.shape[2], max_abs=bound), keep)
    return reconstruction_error(patches, targets, layer_weight(module), keep)


def select_channels(full: nn.Module, pruned: nn.Module, layers: Sequence[PrunableLayer],
                    counts: Mapping[str, int], batches: Sequence[torch.Tensor],
                    cfg: SelectionSettings,
                    on_layer: Callable[[dict], None] | None = None) -> tuple[dict, list[dict]]:
    """Prune ``pruned`` (a copy of ``full``) in place, layer by layer, to ``counts[name]``
    input channels each; returns ``(keep: name -> kept input indices, per-layer stats)``."""
    full.eval()
    pruned.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    keep_all, stats = {}, []
    for layer in layers:
        start = time.perf_counter()
        module = pruned.get_submodule(layer.name)
        nb_keep = int(counts[layer.name])
        patches, targets = collect(full, pruned, layer.name, batches, cfg.nb_crops, gen)
        weight = layer_weight(module)
        error_before = reconstruction_error(patches, targets, weight,
                                            torch.arange(weight.shape[1], device=weight.device))
        normal_eqs = normal_equations(patches, targets)
        keep, weight = _pick(cfg.method, normal_eqs, weight, nb_keep, cfg, gen)
        set_kept_weight(module, _refit(normal_eqs, weight, keep, cfg), keep)
        keep_all[layer.name] = keep.cpu()
        record = {"layer": layer.name, "in_channels": layer.in_channels, "kept": len(keep),
                  "mode": layer.mode, "rel_error_unpruned": error_before,
                  "rel_error": reconstruction_error(patches, targets, layer_weight(module), keep),
                  "seconds": time.perf_counter() - start}
        stats.append(record)
        if on_layer is not None:
            on_layer(record)
    return keep_all, stats


def refit_layers(full: nn.Module, pruned: nn.Module, keep: Mapping[str, torch.Tensor],
                 batches: Sequence[torch.Tensor], cfg: SelectionSettings) -> list[dict]:
    """Least-squares weights for the given kept input channels of each layer in ``keep``, in
    its order (inputs from ``pruned``, targets from ``full``)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    stats = []
    for name, kept in keep.items():
        start = time.perf_counter()
        error = refit_kept(full, pruned, name, kept, batches, cfg.nb_crops, gen)
        in_channels = layer_weight(pruned.get_submodule(name)).shape[1]
        stats.append({"layer": name, "in_channels": in_channels, "kept": len(kept),
                      "mode": "group", "rel_error": error, "seconds": time.perf_counter() - start})
        log.info("refit  %-22s group  keep %3d/%-3d rel.err %.4f", name, len(kept), in_channels,
                 error)
    return stats
