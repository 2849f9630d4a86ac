"""dis-chn-pruned: discrimination-aware channel pruning (DCP), physically thinned.

The network is split into blocks by auxiliary heads (``heads.py``). Block by block: the
network and the block's head are fine-tuned with Adam on the final + discrimination losses
(``nb_iters_block`` steps); then each layer of the block, in execution order, gets its
input channels by the greedy gradient criterion on reconstruction + discrimination loss
(``dcp.greedy_channels``) and is fine-tuned alone with its pruned channels held at zero
(``nb_iters_layer`` steps). The heads are then dropped, the network is thinned, and the
shared flow fine-tunes, exports and reports it. Selection runs on the primary process.
"""
from __future__ import annotations

import logging
import time

import torch

from compression.selection.blocks import whole_blocks
from compression.selection.criteria import refit_kept, select_channels
from learners.channel.base import ChannelLearnerBase
from compression.selection.dcp import (DcpObjective, ZeroPrunedInputs, frozen, greedy_channels,
                                       layer_blocks)
from compression.selection.dcp_heads import build_heads, head_points
from learners.registry import register_learner
from training.trainer import Trainer
from learners.channel.config import DcpConfig

log = logging.getLogger("pocketflow")
# -1 (auto): epochs of the user's training set. A layer: PocketFlow's 500 CIFAR-10 steps of 128
# images from 50,000 (1.28 epochs). A block: 2 epochs, not PocketFlow's 25.6 (10000 steps): as
# accurate on digits before and after fine-tuning, in a ninth of the time
# (docs/learners.md#dis-chn-pruned)
AUTO_EPOCHS_BLOCK, AUTO_EPOCHS_LAYER = 2.0, 500 * 128 / 50000


@register_learner("dis-chn-pruned", config=DcpConfig, prefix="dcp")
class DisChnPrunedLearner(ChannelLearnerBase):
    # residual groups by summed weight magnitude: the discrimination-aware criterion scores
    # one layer's channels against its own auxiliary loss, which has no stacked form
    residual_criterion = "l1"

    @property
    def calibration_samples(self) -> int:
        return self.ctx.helper.cfg.batch_size  # DCP reads labelled batches of its own

    def _iters(self, value: int, epochs: float) -> int:
        """``value``, or (-1) ``epochs`` of this training set in steps."""
        if value >= 0:
            return value
        images = epochs * len(self.ctx.helper.build_dataset_train())
        return max(1, round(images / self.ctx.helper.cfg.batch_size))

    def select(self, full, pruned, chosen, counts, batches):
        cfg = self.cfg
        iters_block = self._iters(cfg.nb_iters_block, AUTO_EPOCHS_BLOCK)
        iters_layer = self._iters(cfg.nb_iters_layer, AUTO_EPOCHS_LAYER)
        data = self.ctx.cached_batches(self.ctx.helper.build_dataset_train(), cfg.nb_batches)
        shape = self.ctx.helper.input_shape
        points = head_points(pruned, cfg.nb_stages)
        with torch.no_grad():
            nb_classes = pruned.eval()(data[0][0][:1]).shape[1]
        heads = build_heads(pruned, points, shape, nb_classes)
        blocks = layer_blocks(pruned, chosen, points, shape)
        objective = DcpObjective(pruned, full.eval(), heads, points, self.ctx.helper.calc_loss)
        keep: dict[str, torch.Tensor] = {}
        zero = ZeroPrunedInputs(pruned, keep)
        stats = []
        log.info("DCP: %d auxiliary heads at %s, %d blocks; %d Adam steps per block, %d per layer",
                 len(points), points, len(points) + 1, iters_block, iters_layer)
        try:
            for block in range(len(points) + 1):
                members = [layer for layer in chosen if blocks[layer.name] == block]
                if not members:
                    continue
                objective.set_stage(block, None, bn_train=True)
                params = list(pruned.parameters()) + (
                    list(heads[block].parameters()) if block < len(points) else [])
                self._tune(objective, params, iters_block, data, zero)
                for layer in members:
                    start = time.perf_counter()
                    objective.set_stage(block, layer.name, bn_train=False)
                    keep[layer.name] = whole_blocks(
                        greedy_channels(objective, layer.name, counts[layer.name], data,
                                        cfg.channels_per_pass), layer.blocks, counts[layer.name])
                    greedy_s = time.perf_counter() - start
                    zero.apply()
                    if cfg.lstsq_init:
                        refit_kept(full, pruned, layer.name, keep[layer.name],
                                   [inputs for inputs, _ in data], cfg.nb_crops_per_smpl,
                                   torch.Generator().manual_seed(self.ctx.seed))
                    module = pruned.get_submodule(layer.name)
                    self._tune(objective, [module.weight], iters_layer, data, zero)
                    steps = iters_layer + (iters_block if layer is members[0] else 0)
                    stats.append(self._record(objective, layer, keep, data, block, start,
                                              adam_steps=steps, greedy_seconds=greedy_s))
        finally:
            objective.close()
        pruned.eval()
        return keep, stats

    def select_rollout(self, full, pruned, chosen, counts, batches):
        """DCP's own selection fine-tunes blocks and layers (minutes); a search's roll-outs rank
        per-layer counts with LASSO + least squares on the same cached batches instead."""
        return select_channels(full, pruned, chosen, counts, batches, self.cfg.selection_options(),
                               self.ctx.seed)

    def _tune(self, objective, params, nb_iters: int, data, zero: ZeroPrunedInputs) -> None:
        if nb_iters <= 0:
            return
        optimizer = torch.optim.Adam(params, lr=self.cfg.lrn_rate_adam)
        with frozen(objective.parameters(), params):   # the others get no gradient computed
            Trainer(objective, optimizer, objective.loss, data, nb_iters, self.ctx.device,
                    callbacks=[zero]).fit()

    @torch.no_grad()
    def _record(self, objective, layer, keep, data, block: int, start: float, **extra) -> dict:
        objective.eval()
        rec = float(objective(data[0][0])["rec"])
        record = {"layer": layer.name, "in_channels": layer.in_channels,
                  "kept": len(keep[layer.name]), "mode": layer.mode, "block": block,
                  "reconstruction_mse": rec, "seconds": time.perf_counter() - start, **extra}
        log.info("select %-22s block %d keep %3d/%-3d reconstruction mse %.4g %.2f s",
                 layer.name, block, record["kept"], layer.in_channels, rec, record["seconds"])
        return record
