"""The CompressionScheduler: ONE trainer callback that runs a policy's active instances.

Epochs are global: ``offset`` (the first epoch of the current training segment) plus
``step // iters_per_epoch``. At the first step of an epoch the pruners active in it fire
(Distiller's ``on_epoch_begin``), in the file's order; each (policy, epoch) event fires once,
also across a resume (the fired events are the callback's state). Within an active epoch a
pruner with ``mini_batch_pruning_frequency: N`` recomputes its mask at every mini-batch
``b > 0`` whose global index ``epoch * iters_per_epoch + b`` is a multiple of N, and one with
``skip_first_minibatch`` sets its first mask at global mini-batch 1 instead of 0 (Distiller's
``PruningPolicy.on_epoch_begin`` / ``on_minibatch_begin``, distiller/policy.py:194-232).
Regularizers and PACT's alpha decay add to the loss in ``before_backward_pass`` during their
active epochs, and a regularizer's threshold (Distiller's ``threshold_criteria``) zeroes weights after each
optimizer step. Thinning and quantizer attachment change the model and happen between
segments (``learners.schedule``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from compression.quantization.dorefa_pact import pact_alpha_l2
from compression.graph.layers import analyse
from compression.sparsity.masks import attach_masks, maskable_layers, masks_of
from compression.schedule.policy import Policy
from compression.schedule.pruners import PRUNERS
from compression.schedule.splicing import SplicingPruner, use_splice_masks
from compression.schedule.regularizers import REGULARIZERS, threshold
from compression.schedule.schema import RANKINGS
from compression.schedule.shared_masks import SharedMasks
from compression.schedule.structured import RankedPruner
from training.trainer import Callback, StepState, Trainer
from utils.model_io import unwrap

RANKED = {name for base in RANKINGS for name in (base, f"{base}_AGP")}


def ranked_filters(pruner) -> dict:
    """Channel root -> a layer writing it, for every channel whose filters a structured pruner
    ranks (a residual stream's channels are one root: ranked together or not at all)."""
    if not isinstance(pruner, RankedPruner):
        return {}
    return {root: name for cluster, _ in pruner.clusters if cluster.kind != "channels"
            for name, roots in cluster.positions.items() for root in roots}


class CompressionScheduler(Callback):
    def __init__(self, policy: Policy, model: nn.Module, input_shape, iters_per_epoch: int,
                 broadcast: Callable | None = None, batches: Callable | None = None) -> None:
        """``batches``: () -> a few input batches, for pruners ranking by activations."""
        self.policy = policy
        self.batches = batches
        self.input_shape = tuple(input_shape)
        self.iters_per_epoch = iters_per_epoch
        self.broadcast = broadcast
        self.fired: set[str] = set()
        self.stats: dict[str, tuple[float, float]] = {}   # SplicingPruner: layer -> (mean, std)
        self._build(model)
        self.regularizers = [p for p in policy.policies if p.kind == "regularizer"]
        self.pact_decay = [p for p in policy.policies if p.kind == "quantizer"
                           and (p.instance.params.get("act_clip_decay") or 0.0) > 0]
        self.keep: dict[str, torch.Tensor] = {}   # structured pruning: consumer -> kept inputs
        self.model: nn.Module = model
        self.offset = 0

    def _build(self, model: nn.Module, from_epoch: int | None = None) -> None:
        """The pruners on ``model``'s graph; after a thinning at ``from_epoch`` the structured
        pruners with no event left are dropped (their channels are gone)."""
        layers = analyse(model, self.input_shape)
        names = list(maskable_layers(model))
        self.pruners = []
        for i, p in enumerate(self.policy.policies):
            if p.kind != "pruner":
                continue
            done = from_epoch is not None and p.instance.cls in RANKED and all(
                e < from_epoch or f"{i}:{e}" in self.fired for e in p.active_epochs())
            if not done:
                pruner = PRUNERS[p.instance.cls](p.instance, p, layers, names)
                pruner.batches = self.batches
                if isinstance(pruner, SplicingPruner):
                    pruner.stats = self.stats   # Distiller caches them on the parameter
                self.pruners.append((i, p, pruner))
        owners: dict[str, list[str]] = {}
        ranked: dict = {}                   # channel root -> (pruner, layer): one ranks it
        for _, entry, pruner in self.pruners:
            for name in pruner.mask_layers():
                if entry.instance.name not in owners.setdefault(name, []):
                    owners[name].append(entry.instance.name)
            for root, name in ranked_filters(pruner).items():
                other, layer = ranked.setdefault(root, (entry.instance.name, name))
                if other != entry.instance.name:
                    raise entry.instance.where.error(
                        f"{name} is also masked by pruner {other} (its filters share channels "
                        f"with {layer}'s: one structured pruner ranks the filters of a stream)")
        self.shared = SharedMasks({n: o for n, o in owners.items() if len(o) > 1})

    def structured_layers(self) -> set[str]:
        """The layers the structured pruners mask (thinning rebuilds them)."""
        return {n for _, _, pruner in self.pruners if isinstance(pruner, RankedPruner)
                for n in pruner.mask_layers()}

    # -- segments --------------------------------------------------------------------------
    def set_segment(self, model: nn.Module, start_epoch: int, attach: bool = True) -> None:
        """Train ``model`` from ``start_epoch``; masks are attached to every layer a pruner
        with events still to run from ``start_epoch`` on needs (AGP masks persist once
        attached). ``attach=False``: the model has its masks already (a resumed checkpoint).
        The masks of splicing pruners with ``mask_on_forward_only`` pass the gradient through."""
        self.model, self.offset = unwrap(model), start_epoch
        if attach:
            self._attach(start_epoch)
        have = set(masks_of(self.model))
        use_splice_masks(self.model, [n for _, _, p in self.pruners if getattr(p, "straight", False)
                                      for n in p.mask_layers() if n in have])

    def _attach(self, start_epoch: int) -> None:
        have = set(masks_of(self.model))
        needed = []
        for index, entry, pruner in self.pruners:
            if any(e >= start_epoch and f"{index}:{e}" not in self.fired for e in entry.active_epochs()):
                needed += [n for n in pruner.mask_layers() if n not in have and n not in needed]
        if needed:
            attach_masks(self.model, needed)

    def epoch_of(self, step: int) -> int:
        return self.offset + step // self.iters_per_epoch

    def fire(self, epoch: int, before: int | None = None) -> bool:
        """Run the pruner events of ``epoch`` not run yet (only those of policies listed before
        policy ``before``, when given); True when any ran."""
        ran = False
        for index, entry, pruner in self.pruners:
            key = f"{index}:{epoch}"
            if key in self.fired or epoch not in entry.active_epochs():
                continue
            if before is not None and index >= before:
                continue
            if entry.args.get("skip_first_minibatch") and not any(
                    k.split(":")[0] == str(index) for k in self.fired):
                self.fired.add(key)   # the first event waits for mini-batch 1 (policy.py:197-208)
                continue
            keep_before = dict(self.keep)
            pruner.apply(self.model, epoch, self.keep)
            self.shared.after(entry.instance.name, pruner.mask_layers(), masks_of(self.model),
                              self.keep, keep_before)
            self.fired.add(key)
            ran = True
        if ran and self.broadcast is not None:
            self._sync()
        return ran

    @torch.no_grad()
    def _sync(self) -> None:
        """Rank 0's masks and keep dict on every rank (decisions are deterministic anyway)."""
        masks = masks_of(self.model)
        payload = self.broadcast({"masks": {n: m.mask.cpu() for n, m in masks.items()},
                                  "keep": {n: k.cpu() for n, k in self.keep.items()}})
        for name, mask in payload["masks"].items():
            masks[name].mask.copy_(mask)
        self.keep = dict(payload["keep"])

    def rebuild(self, model: nn.Module, epoch: int) -> None:
        """The pruners on ``model``'s graph from ``epoch`` on (a resumed, thinned model)."""
        self._build(unwrap(model), epoch)

    def reset_structure(self, model: nn.Module, epoch: int) -> None:
        """After thinning at ``epoch``: the kept channels are now the architecture, and the
        pruners with events still to come work on the thinned model's graph."""
        self.keep = {}
        self._build(unwrap(model), epoch)

    def zeros_targets(self) -> dict[str, int]:
        """layer -> the exact zero count its AGP pruner aims at now (its last fired event)."""
        targets = {}
        for index, entry, pruner in self.pruners:
            if not hasattr(pruner, "target_zeros"):
                continue
            done = [e for e in entry.active_epochs() if f"{index}:{e}" in self.fired]
            if done:
                targets.update(pruner.target_zeros(self.model, max(done)))
        return targets

    # -- hooks -----------------------------------------------------------------------------
    def on_minibatch_begin(self, trainer: Trainer, state: StepState) -> None:
        epoch = self.epoch_of(state.step)
        self.fire(epoch)
        self.minibatch(epoch, state.step % self.iters_per_epoch)

    @torch.no_grad()
    def minibatch(self, epoch: int, batch: int) -> None:
        """Mini-batch ``batch`` of ``epoch`` begins: the mini-batch mask updates due now, then
        the raw masked weights of the splicing pruners without double copies set to 0."""
        index_in_run = epoch * self.iters_per_epoch + batch   # Distiller's global_mini_batch_id
        for _, entry, pruner in self.pruners:
            if epoch not in entry.active_epochs():
                continue
            every = entry.args.get("mini_batch_pruning_frequency") or 0
            if (batch > 0 and every and index_in_run % every == 0) or (
                    entry.args.get("skip_first_minibatch") and index_in_run == 1):
                pruner.apply(self.model, epoch, self.keep)
            if getattr(pruner, "zero_raw", False):
                pruner.zero_masked(self.model)

    def before_backward_pass(self, trainer: Trainer, state: StepState) -> None:
        epoch = self.epoch_of(state.step)
        extra = None
        for entry in self.regularizers:
            if epoch in self._range(entry):
                term = REGULARIZERS[entry.instance.cls](self.model, entry.instance.params)
                extra = term if extra is None else extra + term
        for entry in self.pact_decay:
            if epoch >= entry.first_epoch:
                term = entry.instance.params["act_clip_decay"] * pact_alpha_l2(self.model).to(
                    state.loss.device)
                extra = term if extra is None else extra + term
        if extra is not None:
            state.loss = state.loss + extra

    def on_minibatch_end(self, trainer: Trainer, state: StepState) -> None:
        epoch = self.epoch_of(state.step - 1)
        for entry in self.regularizers:
            if epoch in self._range(entry):
                threshold(self.model, entry.instance.cls, entry.instance.params)

    @staticmethod
    def _range(entry) -> list[int]:
        """A regularizer's epochs: Distiller's active epochs; with inclusive policies (this
        project's earlier reading) every epoch of [start, end]."""
        return entry.span() if entry.inclusive else entry.active_epochs()

    def state_dict(self) -> dict:
        return {"fired": sorted(self.fired), "keep": {n: k.tolist() for n, k in self.keep.items()},
                "stats": {n: list(v) for n, v in self.stats.items()},
                "shared": self.shared.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.fired = set(state.get("fired", []))
        self.keep = {n: torch.tensor(k, dtype=torch.long) for n, k in state.get("keep", {}).items()}
        self.stats.clear()   # in place: the splicing pruners share this dict
        self.stats.update({n: (float(v[0]), float(v[1])) for n, v in state.get("stats", {}).items()})
        self.shared.load_state_dict(state.get("shared", {}))
