"""The flow every channel-pruning learner shares: pre-trained model -> dependency graph ->
layers to prune (skip rules) -> kept-channel counts (fixed ratios, a ratio list, or a DDPG
search: ``learners.channel_strategy``) -> selection (the learner's own) -> physical thinning
-> fine-tuning (optionally distilled from the full model) -> artifact + ONNX + report.
A channel learner implements ``choose``, ``kept_counts`` and ``select`` and names its paths.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from abc import abstractmethod

import torch
from torch import nn

from compression.channel_flops import ChannelFlops
from compression.channel_selection import choose_layers, counts_for_ratios
from compression.graph import PrunableLayer, analyse
from compression.thinning import thin
from learners import composition
from learners.abstract_learner import AbstractLearner
from learners.channel_strategy import plan_counts
from utils.model_io import build_model, load_model, save_model

log = logging.getLogger("pocketflow")


class ChannelLearnerBase(AbstractLearner):
    produces = frozenset({"thinned"})
    refuses = {"quantized": composition.PRUNE_QUANTIZED}
    """Subclasses set ``paths`` (checkpoint, artifact, selection result) and the three steps."""

    def choose(self, layers: list[PrunableLayer]) -> list[PrunableLayer]:
        """The layers to prune: the ``skip_frst_layer`` / ``skip_last_layer`` /
        ``skip_op_names`` rules applied."""
        cfg = self.own_cfg
        return choose_layers(layers, cfg.skip_frst_layer, cfg.skip_last_layer, cfg.skip_names)

    def kept_counts(self, full: nn.Module, layers: list[PrunableLayer],
                    chosen: list[PrunableLayer], report: dict) -> dict[str, int]:
        """``layer -> kept input channels``; runs on EVERY rank (a search is collective).
        Default: ``prune_ratio`` of every layer's inputs removed (PocketFlow's count),
        rounded to ``channel_multiple``. A learner whose config has the ratio options of
        ``learners.strategy_options`` (a ``strategy`` field) also gets their protocols
        (``uniform`` under a FLOPs or latency budget, ``list``, ``optimal``:
        ``learners.channel_strategy``); without a budget (``preserve_ratio=0``) ``uniform`` is
        the count above and ``optimal`` searches at its FLOPs."""
        multiple = self.channel_multiple
        ratio = self.own_cfg.prune_ratio
        counts = counts_for_ratios(chosen, {layer.name: ratio for layer in chosen}, multiple)
        strategy = getattr(self.own_cfg, "strategy", None)
        if strategy is None:
            return counts
        s = strategy.settings(multiple=multiple)
        if s.preserve_ratio == 0:
            s.uniform_counts = counts
            s.preserve_ratio = ChannelFlops(full, layers, self.helper.input_shape).ratio(counts)
        return plan_counts(self, full, layers, chosen, s, report)

    @property
    def channel_multiple(self) -> int:
        """``channel_multiple``; 0 (where allowed): 8 under a latency budget (CPU kernels run
        fastest on multiples of 8), else 1 (PocketFlow's exact counts)."""
        multiple = self.own_cfg.channel_multiple
        if multiple == 0:
            strategy = getattr(self.own_cfg, "strategy", None)
            return 8 if strategy is not None and strategy.budget_type == "latency" else 1
        return multiple

    @abstractmethod
    def select(self, full: nn.Module, pruned: nn.Module, chosen: list[PrunableLayer],
               counts: dict[str, int], batches: list[torch.Tensor]) -> tuple[dict, list]:
        """Prune ``pruned`` (a copy of ``full``) in place to ``counts`` using calibration
        ``batches``; return ``(keep: layer -> kept input indices, per-layer stats)``."""

    def select_final(self, full: nn.Module, pruned: nn.Module, chosen: list[PrunableLayer],
                     counts: dict[str, int], batches: list[torch.Tensor]) -> tuple[dict, list]:
        """The selection of the final model (``select`` unless a learner adds steps that a
        search's roll-outs must skip, e.g. fine-tuning between groups of layers)."""
        return self.select(full, pruned, chosen, counts, batches)

    def select_rollout(self, full: nn.Module, pruned: nn.Module, chosen: list[PrunableLayer],
                       counts: dict[str, int], batches: list[torch.Tensor]) -> tuple[dict, list]:
        """The selection a strategy search's roll-outs use to score per-layer counts (``select``
        unless the learner's own selection is too slow to run hundreds of times)."""
        return self.select(full, pruned, chosen, counts, batches)

    @property
    @abstractmethod
    def calibration_samples(self) -> int:
        """Training samples the final selection sees."""

    @property
    def checkpoint_path(self) -> str:
        return self.own_cfg.save_path

    @property
    def artifact_path(self) -> str:
        return self.own_cfg.save_path_eval

    @property
    def selection_path(self) -> str:
        """Where the thinned model right after selection is saved (for warm starts)."""
        return self.own_cfg.save_path_ws

    @property
    def warm_start_selection(self) -> bool:
        return self.own_cfg.warm_start

    # -- steps -------------------------------------------------------------------------------
    def calibration_batches(self, nb_smpls: int) -> list[torch.Tensor]:
        """ceil(nb_smpls / batch_size) training batches, cached on the model's device."""
        loader = self.train_loader(self.helper.build_dataset_train(), self.helper.cfg.batch_size)
        loader.sampler.set_epoch(0)
        nb_batches = -(-nb_smpls // self.helper.cfg.batch_size)
        batches = []
        for inputs, _ in loader:
            batches.append(inputs.to(self.device))
            if len(batches) >= nb_batches:
                break
        return batches

    def _selected(self, full: nn.Module, full_spec: dict, report: dict) -> tuple[nn.Module, dict]:
        """Counts on every rank; selection and thinning on the primary process; every rank
        receives the same model."""
        layers = analyse(full, self.helper.input_shape)
        chosen = self.choose(layers)
        counts = self.kept_counts(full, layers, chosen, report)  # a search times itself
        start = time.perf_counter()
        payload = None
        if self.mgw.is_primary():
            pruned = copy.deepcopy(full)
            keep, stats = self.select_final(full, pruned, chosen, counts,
                                            self.calibration_batches(self.calibration_samples))
            thinned, spec = thin(pruned, layers, keep, full_spec)
            save_model(self.selection_path, thinned, spec, {"learner": self.learner_name})
            payload = {"spec": spec, "state": thinned.state_dict(), "stats": stats}
        payload = self.mgw.broadcast_object(payload)
        model = build_model(payload["spec"])
        model.load_state_dict(payload["state"])
        report["selection"] = payload["stats"]
        self.wall_s["selection"] = time.perf_counter() - start
        return model.to(self.device), payload["spec"]

    # -- the flow ----------------------------------------------------------------------------
    def train(self) -> dict:
        report, full, full_spec = self.begin()
        resumed = self.resumed_architecture("finetune")
        if resumed is not None:
            model, spec = resumed
            model = model.to(self.device)
        elif self.warm_start_selection and os.path.isfile(self.selection_path):
            log.info("warm start: skipping selection, loading %s", self.selection_path)
            model, obj = load_model(self.selection_path)
            model, spec = model.to(self.device), obj["spec"]
        else:
            model, spec = self._selected(full, full_spec, report)
        if resumed is None:  # a resumed fine-tuning never saw its before-fine-tune model: null
            report["accuracy"]["compressed_before_finetune"] = self.run_evaluation(model)["accuracy"]
            log.info("accuracy: full %.4f | thinned before fine-tune %.4f",
                     report["accuracy"]["full"], report["accuracy"]["compressed_before_finetune"])
        teacher = self.distillation_teacher()
        self.fit(model, self.helper.lr_schedule(self.mgw.size()), tag="finetune", spec=spec,
                 teacher=teacher)
        report["accuracy"]["compressed"] = self.run_evaluation(model)["accuracy"]
        size = self.save_artifact(model, spec, {"accuracy": report["accuracy"]["compressed"]})
        if self.mgw.is_primary():
            self._fill_report(report, full, model, size)
        return self.finish_report(report)

    def _fill_report(self, report: dict, full: nn.Module, model: nn.Module, size: int) -> None:
        self.report_sides(report, model, size)
        report["kept_channels"] = kept_channels(full, model)
        self.deploy_model(model, report)


def kept_channels(full: nn.Module, thinned: nn.Module) -> dict:
    """layer -> [kept input channels, original input channels] for every layer that shrank."""
    kept = {}
    full_modules = dict(full.named_modules())
    for name, module in thinned.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and name in full_modules:
            now, before = module.weight.shape[1], full_modules[name].weight.shape[1]
            if now != before:
                kept[name] = [now, before]
    return kept
