"""weight-sparse: fine-grained magnitude pruning of conv/linear weights with masks.

Pre-trained model -> per-layer zero counts (uniform / heurist / DDPG-optimal / global ranking)
-> fine-tuning with masks that follow an AGP ramp (or are fixed from the start: ``oneshot``)
-> masks baked in -> dense artifact with exact zeros + COO and CSR sparse files + ONNX + report.
"""
from __future__ import annotations

import copy
import logging

from torch import nn

from compression.sparsity.batchnorm import recalibrate_bn
from compression.sparsity.regression import layerwise_regression
from compression.sparsity.masks import (attach_masks, detach_masks, maskable_layers, masks_of,
                                        set_masks, sparsity_of)
from compression.budget.ratio_list import read_ratio_list
from compression.sparsity.allocation import nb_zeros_heurist, nb_zeros_uniform
from learners.run import composition
from learners.base import Learner, Result
from learners.registry import register_learner
from learners.weight_sparse.config import WsConfig
from learners.weight_sparse.schedule import MaskScheduleCallback, update_steps
from learners.search.preference_env import layer_features
from learners.weight_sparse.search_env import SparsityEnv
from utils.config import ConfigError

log = logging.getLogger("pocketflow")


@register_learner("weight-sparse", config=WsConfig, prefix="ws")
class WeightSparseLearner(Learner):
    produces = frozenset({"sparse"})
    refuses = {"quantized": composition.PRUNE_QUANTIZED}

    # -- which layers, how many zeros -----------------------------------------------------
    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        skip = self.cfg.skip_names
        chosen = {n: m for n, m in maskable_layers(model).items() if not any(s in n for s in skip)}
        if not chosen:
            raise ConfigError("--ws_skip_op_names: every conv/linear layer is skipped; nothing "
                              "left to prune")
        return chosen

    def final_counts(self, full: nn.Module, layers: dict[str, nn.Module],
                     sections: dict) -> dict[str, int] | None:
        """Zeros per layer at the end (``None`` for the global protocol, decided by ranking)."""
        cfg = self.cfg
        sizes = [m.weight.numel() for m in layers.values()]
        protocol = cfg.prune_ratio_prtl
        if protocol == "global":
            return None
        if protocol == "uniform":
            counts = nb_zeros_uniform(sizes, cfg.prune_ratio)
        elif protocol == "heurist":
            counts = nb_zeros_heurist(sizes, cfg.prune_ratio)
        elif protocol == "list":
            ratios = read_ratio_list(cfg.prune_list_file, list(layers))
            counts = [min(n - 1, round(ratios[name] * n)) for name, n in zip(layers, sizes)]
        else:
            counts = self._searched_counts(full, layers, sizes, sections)
        return dict(zip(layers, counts))

    def _searched_counts(self, full, layers, sizes, sections) -> list[int]:
        """DDPG search on the primary process; every rank receives the best counts."""
        cfg = self.cfg
        best, sections["search"] = self.ctx.search(lambda: self._env(full, layers, sizes),
                                                   cfg.ddpg, cfg.nb_rlouts, cfg.nb_rlouts_min)
        return best["counts"]

    def _env(self, full: nn.Module, layers: dict, sizes: list[int]) -> SparsityEnv:
        """Reward of a strategy: masks -> layer-wise regression -> short fine-tune -> BN
        statistics re-estimated -> accuracy on held-out batches of the training set."""
        cfg = self.cfg
        names = list(layers)
        train, val = self.ctx.search_batches(min(cfg.nb_iters_ft, 100), cfg.nb_iters_feval)

        def score(counts: list[int]) -> float:
            model = copy.deepcopy(full)
            attach_masks(model, names)
            set_masks(model, dict(zip(names, counts)))
            layerwise_regression(full, model, names, train[0][0], cfg.lrn_rate_rg,
                                 cfg.nb_iters_rg)
            self.ctx.short_finetune(model, train, cfg.lrn_rate_ft, cfg.nb_iters_ft)
            recalibrate_bn(model, train[:10])
            return self.ctx.evaluate(model, loader=val, local=True)["accuracy"]

        total = round(cfg.prune_ratio * sum(sizes))
        return SparsityEnv(layer_features(layers), sizes, total, score, cfg.reward_type)

    # -- the flow ----------------------------------------------------------------------------
    def mask_callback(self, model: nn.Module, names: list[str], final: dict | None,
                      total: int) -> MaskScheduleCallback:
        cfg = self.cfg
        if cfg.schedule == "oneshot":
            return MaskScheduleCallback(model, names, final, total, {0}, 0, 0, 1.0)
        nb_iters = self.ctx.helper.lr_schedule(self.ctx.mgw.size()).nb_iters
        beg, end = round(cfg.iter_ratio_beg * nb_iters), round(cfg.iter_ratio_end * nb_iters)
        return MaskScheduleCallback(model, names, final, total,
                                    update_steps(beg, end, cfg.mask_update_step), beg, end,
                                    cfg.prune_ratio_exp)

    def compress(self, full: nn.Module, spec: dict) -> Result:
        cfg, ctx, sections = self.cfg, self.ctx, {}
        layers = self.layers(full)
        names = list(layers)
        total = round(cfg.prune_ratio * sum(m.weight.numel() for m in layers.values()))
        final = self.final_counts(full, layers, sections)

        model = copy.deepcopy(full)
        attach_masks(model, names)
        callback = self.mask_callback(model, names, final, total)
        set_masks(model, callback.counts_at(callback.end))  # one-shot: before fine-tuning
        before = ctx.accuracy(model)
        if cfg.schedule == "agp":
            set_masks(model, dict.fromkeys(names, 0))  # dense again; the ramp starts at beg
        ctx.fit(model, ctx.helper.lr_schedule(ctx.mgw.size()), tag="finetune", spec=spec,
                callbacks=[callback], teacher=ctx.teacher())
        targets = {n: int((m.mask == 0).sum()) for n, m in masks_of(model).items()}
        accuracy = ctx.accuracy(model)
        detach_masks(model)
        sections["sparsity"] = {**sparsity_of(model, names, targets),
                                "target_zeros": sum(targets.values()),
                                "protocol_counts": None if final is None else list(final.values())}
        return Result(model, spec, before_finetune=before, accuracy=accuracy, sections=sections)

    def finish(self, result: Result, report) -> None:
        self.ctx.write_sparse_copies(result, report)
