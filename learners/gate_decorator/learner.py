"""gate-decorator: global filter pruning by gated batch norms and tick-tock rounds (You et
al., NeurIPS 2019), ending in a physically thinned model.

Pre-trained model -> a gate after every BN whose channels feed one layer only (residual sums
are never cut; ``compression.selection.gates``) -> rounds of
  tick (``gd_t`` times): gates trained alone for ``gd_tick_nb_batches`` batches while Taylor
      importance accumulates, then the ``gd_p`` least important gates of the whole network
      closed, stopping exactly at the FLOPs target;
  tock: the whole network trained ``gd_tock_epoch`` epochs with an L1 penalty on the gates
-> gates melted into the BNs, closed channels physically removed (``compression.surgery.thinning``)
-> fine-tuning with a triangular learning rate (``gd_lr_min`` -> ``gd_lr_max`` -> ``gd_lr_min``).
Ticks run on the primary process (every rank then receives its gates); tocks and the
fine-tuning run on all processes. Each round is saved, so ``--resume`` continues where the
run stopped.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from compression.selection.gates import (GlobalGatePruner, attach_gates, gate_l1, gate_points,
                                         gates_of, melt_gates)
from compression.graph.layers import analyse
from compression.budget.simd import note_block_widths
from compression.surgery.passes import pass_timer, passes_section
from compression.surgery.thinning import in_channels, kept_channels, thin
from learners.run import composition
from learners.base import Learner, Result
from learners.gate_decorator.config import GateDecoratorConfig
from learners.registry import register_learner
from training.trainer import Callback, Trainer
from utils.checkpoint import save_file
from utils.config import ConfigError
from utils.lrn_rate import ConstantLr, TriangularLr, iters_for_epochs

log = logging.getLogger("pocketflow")


class GateSparsity(Callback):
    """Adds ``weight * sum |g|`` of the open gates to the loss (the tock's penalty)."""

    def __init__(self, model: nn.Module, weight: float) -> None:
        self.model, self.weight = model, weight

    def before_backward_pass(self, trainer, state) -> None:
        if self.weight > 0:
            state.loss = state.loss + self.weight * gate_l1(self.model)


class FrozenBatchNorm(Callback):
    """BN layers in eval mode during a tick (statistics frozen, as the authors do)."""

    def on_train_begin(self, trainer) -> None:
        for module in trainer.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


@register_learner("gate-decorator", config=GateDecoratorConfig, prefix="gd")
class GateDecoratorLearner(Learner):
    produces = frozenset({"thinned"})
    refuses = {"quantized": composition.PRUNE_QUANTIZED}

    @property
    def rounds_path(self) -> str:
        """The gated model after each tick-tock round (``--resume`` continues from it)."""
        return self.ctx.state_path("ticktock.pt")

    def resume_files(self) -> list[tuple[str, str]]:
        return [(self.rounds_path, "checkpoint")]

    # -- tick-tock ---------------------------------------------------------------------------
    def tick(self, model: nn.Module, batches: list, pruner: GlobalGatePruner) -> dict:
        """Train the gates alone over ``batches`` collecting Taylor scores, then close the
        least important; returns the gates' state (mask, g, score) for every rank."""
        cfg = self.cfg
        gates = gates_of(model)
        trainable = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for gate in gates.values():
            gate.g.requires_grad_(True)
            gate.score.zero_()
            gate.collect_scores(True)
        optimizer = torch.optim.SGD([g.g for g in gates.values()], lr=cfg.tick_lrn_rate,
                                    momentum=self.ctx.cfg.momentum)
        try:
            Trainer(model, optimizer, self.ctx.helper.calc_loss, batches, len(batches),
                    self.ctx.device, callbacks=[FrozenBatchNorm()],
                    forward=self.ctx.helper.forward_train).fit()
        finally:
            for gate in gates.values():
                gate.collect_scores(False)
            for p, flag in trainable.items():
                p.requires_grad_(flag)
        nb = max(1, int(round(cfg.p * sum(g.mask.numel() for g in gates.values()))))
        pruner.prune(gates, nb, cfg.preserve_ratio)
        return {name: {k: v.detach().cpu() for k, v in gate.state_dict().items()}
                for name, gate in gates.items()}

    def tock(self, model: nn.Module, round_index: int) -> None:
        cfg = self.cfg
        if cfg.tock_epoch == 0:
            return
        nb_iters = iters_for_epochs(cfg.tock_epoch, self.ctx.helper.nb_smpls_train,
                                    self.ctx.helper.global_batch(self.ctx.mgw.size()))
        self.ctx.fit(model, ConstantLr(cfg.lrn_rate_tock, nb_iters), tag=f"tock{round_index}",
                     callbacks=[GateSparsity(model, cfg.sparse_lambda)])

    def _load_gate_states(self, model: nn.Module, states: dict) -> None:
        for name, gate in gates_of(model).items():
            gate.load_state_dict({k: v.to(self.ctx.device) for k, v in states[name].items()})

    def _resume_rounds(self, model: nn.Module) -> int:
        """The next round after the last one saved (0 without ``--resume``)."""
        saved = self.ctx.resume_state(self.rounds_path, "checkpoint")
        if saved is None:
            return 0
        model.load_state_dict(saved["model"])
        log.info("resumed tick-tock after round %d from %s", saved["round"], self.rounds_path)
        return int(saved["round"]) + 1

    def prune(self, full: nn.Module, sections: dict) -> tuple[nn.Module, dict]:
        """Tick-tock rounds to the FLOPs target; returns ``(gated model, consumer -> kept)``."""
        cfg = self.cfg
        layers = analyse(full, self.ctx.helper.input_shape)
        points = gate_points(full, layers, cfg.skip_names)
        if not points:
            raise ConfigError("gate-decorator: no channel of this model can be gated: it needs a "
                              "BatchNorm2d between a conv and the one layer that reads it")
        pruner = GlobalGatePruner(full, layers, points, self.ctx.helper.input_shape,
                                  cfg.minimal_ratio, cfg.flops_eta)
        if pruner.floor_ratio() > cfg.preserve_ratio:
            raise ConfigError(
                f"--preserve_ratio={cfg.preserve_ratio} cannot be reached: with every gated "
                f"layer at its minimum (--minimal_ratio={cfg.minimal_ratio}) the model keeps "
                f"{pruner.floor_ratio():.3f} of its FLOPs")
        model = copy.deepcopy(full)
        attach_gates(model, list(points))
        gates = gates_of(model)
        batches = self.ctx.cached_batches(self.ctx.helper.build_dataset_train(),
                                          cfg.tick_nb_batches)
        history = []
        round_index = self._resume_rounds(model)
        while pruner.ratio(gates) > cfg.preserve_ratio:
            for _ in range(cfg.t):
                states = self.ctx.on_primary(lambda: self.tick(model, batches, pruner))
                self._load_gate_states(model, states)
                if pruner.ratio(gates) <= cfg.preserve_ratio:
                    break
            ratio = pruner.ratio(gates)
            log.info("gate-decorator round %d: %d channels open, FLOPs ratio %.4f", round_index,
                     sum(g.nb_kept for g in gates.values()), ratio)
            if ratio > cfg.preserve_ratio:
                self.tock(model, round_index)
            history.append({"round": round_index, "flops_ratio": ratio,
                            "open": sum(g.nb_kept for g in gates.values())})
            if self.ctx.mgw.is_primary():
                save_file(self.rounds_path, "checkpoint", {
                    "meta": self.ctx.state_meta(), "round": round_index,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}})
            round_index += 1
        layers_kept = {}
        for name, gate in gates.items():
            consumer = points[name]
            layers_kept[consumer] = [gate.nb_kept, gate.bn.num_features]
            log.info("gate-decorator: gates on %s (read by %s) kept %d/%d channels (floor %d: "
                     "--minimal_ratio=%g)", name, consumer, gate.nb_kept, gate.bn.num_features,
                     pruner.minimal[consumer], cfg.minimal_ratio)
        sections["gate_decorator"] = {"rounds": history, "flops_ratio": pruner.ratio(gates),
                                      "gated_layers": len(points), "minimal_ratio": cfg.minimal_ratio,
                                      "kept": layers_kept}
        return model, points

    # -- the flow ----------------------------------------------------------------------------
    def compress(self, full: nn.Module, full_spec: dict) -> Result:
        ctx, sections, extra, before = self.ctx, {}, {}, None
        start = in_channels(full)
        resumed = ctx.resumed_architecture("finetune")
        if resumed is not None:
            model, spec = resumed
        else:
            gated, points = self.prune(full, sections)
            extra["gated"] = ctx.accuracy(gated)
            keep = melt_gates(gated, points)
            sections["dead_channels"] = {}
            model, spec = thin(gated, analyse(full, ctx.helper.input_shape), keep, full_spec,
                               stats=sections["dead_channels"],
                               timer=pass_timer(ctx.helper.input_shape,
                                                  ctx.cfg.report_latency))
            sections.update(passes_section(sections["dead_channels"]))
            sections["graph"] = {"unknown_ops": sections["dead_channels"].get("unknown_ops", [])}
            model = model.to(ctx.device)
            before = ctx.accuracy(model)
            log.info("accuracy: gated %.4f | thinned before fine-tune %.4f", extra["gated"], before)
        cfg = self.cfg
        schedule = TriangularLr(cfg.lr_min, cfg.lr_max, ctx.helper.nb_iters_train(ctx.mgw.size()))
        ctx.fit(model, schedule, tag="finetune", spec=spec, teacher=ctx.teacher())
        sections["kept_channels"] = kept = kept_channels(start, model)
        note_block_widths(kept, ctx.device)
        return Result(model, spec, before_finetune=before, sections=sections,
                      accuracy_extra=extra)
