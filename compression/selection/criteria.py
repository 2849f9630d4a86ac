"""Layer-by-layer input-channel selection with least-squares refit (chn-pruned-rmt's core).

For each layer, in execution order: regression rows are sampled with inputs from the network
being pruned (so earlier pruning errors are compensated) and targets from the full network;
channels are chosen by a registered criterion (``ista``: LASSO path, exact count; ``l1``:
weight magnitude; ``random``; ``group-prox``: L2,1 proximal gradient, ``compression.selection.group_prox``);
the kept channels' weights are refitted by least squares and the others zeroed.
The result is a masked model plus the kept indices, which ``thinning.thin`` turns into a
physically smaller model computing the same function.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Collection, Mapping, Sequence

import torch
from torch import nn

from utils.config import check, option

from compression.graph.layers import PrunableLayer
from compression.selection.group_prox import group_prox
from compression.selection.blocks import whole_blocks
from compression.selection.ista import normalised_problem, select_exact
from compression.selection.progress import SelectionProgress
from compression.selection.sampling import collect, gram_and_corr, layer_weight, normal_equations
from compression.selection.lstsq import reconstruction_error, refit_adam, refit_closed

log = logging.getLogger("pocketflow")


Selector = Callable[..., tuple[torch.Tensor, torch.Tensor]]
SELECTORS: dict[str, Selector] = {}
# The choices of ``SelectionOptions.selection`` (its flag's enum), kept in step with the registry.
SELECTION_CHOICES: list[str] = []


def register_selection(name: str) -> Callable[[Selector], Selector]:
    """A selection criterion ``(normal_eqs, weight (c_out, c_in, kk), nb_keep, options
    (``SelectionOptions``), generator, seed) -> (kept indices (sorted), weight to start the
    refit from)``, then a valid ``SelectionOptions.selection`` (``--cpr_selection=<name>``)."""
    def add(selector: Selector) -> Selector:
        SELECTORS[name] = selector
        if name not in SELECTION_CHOICES:
            SELECTION_CHOICES.append(name)
        return selector
    return add


@register_selection("ista")
def _ista(normal_eqs, weight, nb_keep, cfg, gen, seed):
    gram, corr = gram_and_corr(*normal_eqs, weight)
    gram, corr, _ = normalised_problem(gram=gram, corr=corr)
    keep, _ = select_exact(gram, corr, nb_keep, cfg.ista_lrn_rate, cfg.ista_nb_iters, seed=seed)
    return keep, weight


@register_selection("l1")
def _l1(normal_eqs, weight, nb_keep, cfg, gen, seed):
    return weight.abs().sum(dim=(0, 2)).topk(nb_keep).indices.sort().values, weight


@register_selection("random")
def _random(normal_eqs, weight, nb_keep, cfg, gen, seed):
    keep = torch.randperm(weight.shape[1], generator=gen)[:nb_keep].sort().values
    return keep.to(weight.device), weight


@register_selection("group-prox")
def _group_prox(normal_eqs, weight, nb_keep, cfg, gen, seed):
    return group_prox(*normal_eqs, weight, nb_keep, cfg.prox_lrn_rate, cfg.prox_nb_iters,
                      incr=cfg.prox_lrn_rate_incr, decr=cfg.prox_lrn_rate_decr)


SELECTIONS = tuple(SELECTORS)


@dataclass
class SelectionOptions:
    """The options of a layer-by-layer selection and its refit (``select_channels``,
    ``refit_layers``, ``compression.selection.residual_groups.coupled_keep``). A learner's
    config whose flags have these names inherits it (chn-pruned-rmt: ``--cpr_selection``...);
    the others translate their PocketFlow flags in ``selection_options()``."""

    selection: str = option("ista", "channel selection criterion", choices=SELECTION_CHOICES)
    nb_crops_per_smpl: int = option(10, "random output positions sampled per sample")
    ista_lrn_rate: float = option(1.0, "ISTA step on the Frobenius-normalised Gram matrix "
                                       "(<= 1 is stable; PocketFlow's 1e-2 barely moves in 100 its)")
    ista_nb_iters: int = option(100, "ISTA iterations per penalty")
    lstsq_solver: str = option("closed", "refit of kept channels: closed-form ridge or Adam",
                               choices=["closed", "adam"])
    lstsq_lrn_rate: float = option(1e-3, "Adam learning rate of the refit (solver adam)")
    lstsq_nb_iters: int = option(100, "Adam iterations of the refit (solver adam)")
    refit_output: bool = option(True, "refit the layer that writes the network's output (the "
                                      "classifier) too, as PocketFlow does; false: in the final "
                                      "selection it keeps its trained weights on the inputs it "
                                      "keeps: a worse start, which a long fine-tuning at <= 15 % "
                                      "of the FLOPs recovers better from "
                                      "(docs/learners.md#refit-of-the-output-layer)")
    prox_lrn_rate: float = option(1e-2, "group-prox selection: initial proximal step on the "
                                        "layer's normalised problem")
    prox_nb_iters: int = option(1000, "group-prox selection: proximal iterations per layer")
    prox_lrn_rate_incr: float = option(1.4, "group-prox selection: step x this after a "
                                            "decrease of the loss")
    prox_lrn_rate_decr: float = option(0.7, "group-prox selection: step x this otherwise")

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:      # a learner config that also inherits other options
            parent()
        check(self.selection in SELECTORS, "selection",
              f"unknown criterion {self.selection!r}; valid: {', '.join(SELECTORS)}")
        for name in ("nb_crops_per_smpl", "ista_nb_iters", "lstsq_nb_iters", "prox_nb_iters"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        check(0 < self.ista_lrn_rate < 2, "ista_lrn_rate",
              f"must be in (0, 2) for ISTA to converge, got {self.ista_lrn_rate}")
        check(self.prox_lrn_rate_incr >= 1 and 0 < self.prox_lrn_rate_decr <= 1,
              "prox_lrn_rate_incr", "the increase must be >= 1 and the decrease in (0, 1], got "
              f"{self.prox_lrn_rate_incr} and {self.prox_lrn_rate_decr}")
        for name in ("lstsq_lrn_rate", "prox_lrn_rate"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")

    def selection_options(self) -> "SelectionOptions":
        return self


# A refit's largest weight may be at most this multiple of the layer's largest before it.
REFIT_BOUND = 10.0


def _pick(normal_eqs, weight, nb_keep: int, cfg: SelectionOptions, gen: torch.Generator,
          seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.selection not in SELECTORS:
        raise ValueError(f"unknown selection {cfg.selection!r}; valid: {', '.join(SELECTORS)}")
    return SELECTORS[cfg.selection](normal_eqs, weight, nb_keep, cfg, gen, seed)


def _refit(normal_eqs, weight, keep, cfg: SelectionOptions) -> torch.Tensor:
    if cfg.lstsq_solver == "closed":
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
               batches: Sequence[torch.Tensor], nb_crops: int, gen: torch.Generator,
               refit: bool = True) -> float:
    """Closed-form least-squares weights for layer ``name``'s kept input channels (inputs from
    ``pruned``, targets from ``full``), written in place; returns the relative error.
    ``refit=False``: the kept channels keep their trained weights (the others are zeroed)."""
    patches, targets = collect(full, pruned, name, batches, nb_crops, gen)
    module = pruned.get_submodule(name)
    keep = keep.to(patches.device)
    weight = layer_weight(module)
    kept_weight = refit_closed(*normal_equations(patches, targets), keep, patches.shape[2],
                               max_abs=REFIT_BOUND * float(weight.abs().max())) \
        if refit else weight[:, keep].clone()
    set_kept_weight(module, kept_weight, keep)
    return reconstruction_error(patches, targets, layer_weight(module), keep)


def trained_outputs(layers: Sequence[PrunableLayer], cfg: SelectionOptions) -> set[str]:
    """The layers of ``layers`` that keep their trained weights instead of a refit: those
    writing the network's output when ``cfg.refit_output`` is false. Least squares on a
    classifier fed by a heavily pruned trunk matches the full model's logits with weights several
    times larger than the trained ones (norm 14-66 vs 4-7 on the benchmarks' nets at 10-15 % of
    the FLOPs): the far better start before fine-tuning, from which a long fine-tuning at a high
    rate recovers less (docs/learners.md#refit-of-the-output-layer). Only a final selection
    asks: a search's roll-outs score the model before fine-tuning."""
    return set() if cfg.refit_output else {layer.name for layer in layers if layer.writes_output}


def select_channels(full: nn.Module, pruned: nn.Module, layers: Sequence[PrunableLayer],
                    counts: Mapping[str, int], batches: Sequence[torch.Tensor],
                    cfg: SelectionOptions, seed: int = 0,
                    on_layer: Callable[[dict], None] | None = None,
                    progress: SelectionProgress | None = None,
                    trained: Collection[str] = ()) -> tuple[dict, list[dict]]:
    """Prune ``pruned`` (a copy of ``full``) in place, layer by layer, to ``counts[name]``
    input channels each; returns ``(keep: name -> kept input indices, per-layer stats)``.
    ``progress``: saved after every layer, and resumed from (``compression.selection.progress``);
    ``trained``: layers whose kept channels keep their trained weights (``trained_outputs``)."""
    full.eval()
    pruned.eval()
    gen = torch.Generator().manual_seed(seed)
    names = [layer.name for layer in layers]
    done, keep_all, stats = progress.restore(pruned, names, counts, gen) if progress else (0, {}, [])
    for index, layer in enumerate(layers):
        if index < done:
            continue
        start = time.perf_counter()
        module = pruned.get_submodule(layer.name)
        nb_keep = int(counts[layer.name])
        patches, targets = collect(full, pruned, layer.name, batches, cfg.nb_crops_per_smpl,
                                   gen)
        weight = layer_weight(module)
        error_before = reconstruction_error(patches, targets, weight,
                                            torch.arange(weight.shape[1], device=weight.device))
        normal_eqs = normal_equations(patches, targets)
        kept_as_trained = weight.clone() if layer.name in trained else None
        keep, weight = _pick(normal_eqs, weight, nb_keep, cfg, gen, seed)
        keep = whole_blocks(keep, layer.blocks, nb_keep)
        set_kept_weight(module, _refit(normal_eqs, weight, keep, cfg) if kept_as_trained is None
                        else kept_as_trained[:, keep], keep)
        keep_all[layer.name] = keep.cpu()
        record = {"layer": layer.name, "in_channels": layer.in_channels, "kept": len(keep),
                  "mode": layer.mode, "refit": layer.name not in trained,
                  "rel_error_unpruned": error_before,
                  "rel_error": reconstruction_error(patches, targets, layer_weight(module), keep),
                  "seconds": time.perf_counter() - start}
        stats.append(record)
        if on_layer is not None:
            on_layer(record)
        if progress is not None:
            progress.record(pruned, names, counts, index + 1, keep_all, stats, gen)
    return keep_all, stats


def refit_layers(full: nn.Module, pruned: nn.Module, keep: Mapping[str, torch.Tensor],
                 batches: Sequence[torch.Tensor], cfg: SelectionOptions,
                 seed: int = 0, quiet: bool = False, trained: Collection[str] = ()) -> list[dict]:
    """Least-squares weights for the given kept input channels of each layer in ``keep``, in
    its order (inputs from ``pruned``, targets from ``full``); ``quiet``: no log line;
    ``trained``: layers whose kept channels keep their trained weights (``trained_outputs``)."""
    gen = torch.Generator().manual_seed(seed)
    stats = []
    for name, kept in keep.items():
        start = time.perf_counter()
        error = refit_kept(full, pruned, name, kept, batches, cfg.nb_crops_per_smpl, gen,
                           refit=name not in trained)
        in_channels = layer_weight(pruned.get_submodule(name)).shape[1]
        stats.append({"layer": name, "in_channels": in_channels, "kept": len(kept),
                      "mode": "group", "refit": name not in trained, "rel_error": error,
                      "seconds": time.perf_counter() - start})
        if not quiet:
            log.info("%-6s %-22s group  keep %3d/%-3d rel.err %.4f",
                     "keep" if name in trained else "refit", name, len(kept), in_channels, error)
    return stats
