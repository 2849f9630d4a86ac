"""The flow every channel-pruning learner shares: pre-trained model -> dependency graph ->
layers to prune (skip rules) -> kept-channel counts (fixed ratios, a ratio list, or a DDPG
search: ``compression.budget.strategy``) -> selection (the learner's own) -> physical thinning
-> fine-tuning (optionally distilled from the full model); the runner saves, exports and
reports the result. A channel learner implements ``select`` (and may refine ``choose``,
``kept_counts``, ``select_final`` and ``select_rollout``).
"""
from __future__ import annotations

import copy
import logging
import os
from abc import abstractmethod
from typing import Collection

import torch
from torch import nn

from compression.budget.flops import ChannelFlops
from compression.selection.criteria import refit_layers, trained_outputs
from compression.selection.progress import SelectionProgress
from compression.graph.layers import choose_layers
from compression.budget.counts import counts_for_ratios
from compression.budget.simd import cpu_channel_block, note_block_widths
from compression.graph.layers import PrunableLayer, analyse
from compression.selection.residual_groups import coupled_keep, residual_groups, why_no_groups
from learners.channel.search_env import ChannelEnv
from compression.surgery.passes import pass_timer, passes_section
from compression.surgery.thinning import in_channels, kept_channels, mask_inputs, thin
from learners.run import composition
from learners.base import Learner, Result
from compression.budget.strategy import SearchProblem, StrategyHooks, plan_counts
from utils.checkpoint import save_file
from compression.artifacts import build_model, load_model, save_model

log = logging.getLogger("pocketflow")


class ChannelLearnerBase(Learner):
    produces = frozenset({"thinned"})
    refuses = {"quantized": composition.PRUNE_QUANTIZED}

    def choose(self, layers: list[PrunableLayer]) -> list[PrunableLayer]:
        """The layers to prune: the ``skip_frst_layer`` / ``skip_last_layer`` /
        ``skip_op_names`` rules applied."""
        cfg = self.cfg
        return choose_layers(layers, cfg.skip_frst_layer, cfg.skip_last_layer, cfg.skip_names)

    def kept_counts(self, full: nn.Module, layers: list[PrunableLayer],
                    chosen: list[PrunableLayer], sections: dict) -> dict[str, int]:
        """``layer -> kept input channels``; runs on EVERY rank (a search is collective).
        Default: ``prune_ratio`` of every layer's inputs removed (PocketFlow's count),
        rounded to ``channel_multiple``. A learner whose config has the ratio options of
        ``learners.channel.options`` (a ``strategy`` field) also gets their protocols
        (``uniform`` under a FLOPs or latency budget, ``list``, ``optimal``:
        ``compression.budget.strategy``); without a budget (``preserve_ratio=0``) ``uniform`` is
        the count above and ``optimal`` searches at its FLOPs."""
        multiple = self.channel_multiple
        ratio = self.cfg.prune_ratio
        counts = counts_for_ratios(chosen, {layer.name: ratio for layer in chosen}, multiple)
        strategy = getattr(self.cfg, "strategy", None)
        if strategy is None:
            return counts
        fixed = {}
        if strategy.preserve_ratio == 0:
            flops = ChannelFlops(full, layers, self.ctx.helper.input_shape,
                                 self.groups(layers, chosen))
            fixed = {"uniform_counts": counts, "preserve_ratio": flops.ratio(counts)}
        return self.plan(full, layers, chosen, sections, multiple=multiple, **fixed)

    def plan(self, full: nn.Module, layers: list[PrunableLayer], chosen: list[PrunableLayer],
             sections: dict, **fixed) -> dict[str, int]:
        """The counts of ``self.cfg.strategy``'s protocol (``compression.budget.strategy``, with
        this learner's search and roll-out scores); ``fixed``: ``plan_counts``' keywords
        (``multiple``, ``uniform_ratio``, ``uniform_counts``, ``preserve_ratio``)."""
        hooks = StrategyHooks(self.ctx.on_primary, self.search,
                              lambda nb_batches, ft_steps: self.rollout_scorer(
                                  full, layers, chosen, nb_batches, ft_steps))
        counts, found = plan_counts(full, layers, chosen, self.cfg.strategy,
                                    self.ctx.helper.input_shape,
                                    groups=self.groups(layers, chosen), hooks=hooks, **fixed)
        sections.update(found)
        return counts

    def groups(self, layers: list[PrunableLayer], chosen: list[PrunableLayer]) -> list:
        """The residual groups this learner prunes as one (``prune_residual``), else none: the
        FLOPs of a strategy count their channels at the group's count."""
        if not getattr(self.cfg, "prune_residual", False):
            return []
        return residual_groups(layers, chosen)

    def search(self, problem: SearchProblem) -> tuple[dict, dict]:
        """The DDPG search of a strategy (``learners.channel.search_env``), on rank 0."""
        opts = problem.options

        def make_env() -> ChannelEnv:
            return ChannelEnv(problem.full, problem.chosen, problem.flops, problem.preserve_ratio,
                              problem.scorer(), problem.min_ratio, problem.multiple,
                              opts.reward_policy, opts.noise_tolerance, problem.cost())

        return self.ctx.search(make_env, self.cfg.ddpg, opts.nb_rlouts, opts.nb_rlouts_min,
                               keep_top=problem.keep_top)

    def rollout_scorer(self, full: nn.Module, layers: list[PrunableLayer],
                       chosen: list[PrunableLayer], nb_batches: int, ft_steps: int):
        """``counts -> {"accuracy", "loss"}`` of the model a strategy gives: selected as the
        final model is (``select_all``) on ``nb_batches`` cached batches, thinned, tuned
        ``ft_steps`` Adam steps and evaluated on held-out batches."""
        ctx, opts = self.ctx, self.cfg.strategy
        train, val = ctx.search_batches(max(nb_batches, ft_steps), opts.nb_iters_feval)
        calibration = [inputs for inputs, _ in train[:nb_batches]]

        def score(counts: dict[str, int]) -> dict:
            pruned, keep, _ = self.select_all(full, layers, chosen, counts, calibration,
                                              rollout=True)
            thinned, _ = thin(pruned, layers, keep)
            ctx.short_finetune(thinned, train, opts.rl_lrn_rate, ft_steps)
            return ctx.evaluate(thinned, loader=val, local=True)

        return score

    @property
    def channel_multiple(self) -> int:
        """``channel_multiple`` as ``round_to_multiple`` takes it; -1: ``-cpu_channel_block()``
        (exact counts up to one SIMD block, whole blocks above); 0 (where allowed): 8 under a
        latency budget (finer steps than whole blocks, which a small net's budget can fall
        between), else 1 (PocketFlow's exact counts)."""
        multiple = self.cfg.channel_multiple
        if multiple == 0:
            strategy = getattr(self.cfg, "strategy", None)
            return 8 if strategy is not None and strategy.budget_type == "latency" else 1
        return -cpu_channel_block() if multiple == -1 else multiple

    @abstractmethod
    def select(self, full: nn.Module, pruned: nn.Module, chosen: list[PrunableLayer],
               counts: dict[str, int], batches: list[torch.Tensor]) -> tuple[dict, list]:
        """Prune ``pruned`` (a copy of ``full``) in place to ``counts`` using calibration
        ``batches``; return ``(keep: layer -> kept input indices, per-layer stats)``."""

    def select_final(self, full: nn.Module, pruned: nn.Module, chosen: list[PrunableLayer],
                     counts: dict[str, int], batches: list[torch.Tensor],
                     trained: Collection[str] = ()) -> tuple[dict, list]:
        """The selection of the final model (``select`` unless a learner adds steps that a
        search's roll-outs must skip, e.g. fine-tuning between groups of layers). ``trained``:
        layers that keep their trained weights (``trained_outputs``: non-empty only for a
        learner whose options set ``refit_output`` false, which must then honour it)."""
        return self.select(full, pruned, chosen, counts, batches)

    def selection_progress(self) -> SelectionProgress:
        """The final selection's progress, saved beside the checkpoint (``selection.pt``) after
        every layer and resumed from with ``--resume``."""
        path, meta = self.ctx.state_path("selection.pt"), self.ctx.state_meta()
        return SelectionProgress(lambda state: save_file(path, "selection", {**state, "meta": meta}),
                                 self.ctx.resume_state(path, "selection"))

    def select_rollout(self, full: nn.Module, pruned: nn.Module, chosen: list[PrunableLayer],
                       counts: dict[str, int], batches: list[torch.Tensor]) -> tuple[dict, list]:
        """The selection a strategy search's roll-outs use to score per-layer counts (``select``
        unless the learner's own selection is too slow to run hundreds of times)."""
        return self.select(full, pruned, chosen, counts, batches)

    # -- coupled residual pruning (``prune_residual``) --------------------------------------
    residual_criterion = "lasso"   # compression.selection.residual_groups.GROUP_CRITERIA

    def coupled_keep(self, full: nn.Module, layers: list[PrunableLayer],
                     chosen: list[PrunableLayer], counts: dict[str, int],
                     batches: list[torch.Tensor], sections: dict | None) -> dict[str, torch.Tensor]:
        """With ``prune_residual``: the kept input columns of every reader of a residual group,
        chosen once per group (``compression.selection.residual_groups``); these readers then skip the
        learner's own selection. Else nothing. ``sections`` (the report's; ``None`` for a
        search's roll-out, which logs nothing) receives the groups' records."""
        if not getattr(self.cfg, "prune_residual", False):
            return {}
        keep, records = coupled_keep(full, layers, chosen, counts, batches,
                                     self.residual_criterion, self.cfg.selection_options(),
                                     self.ctx.seed)
        keep = {layer.name: keep[layer.name] for layer in chosen if layer.name in keep}
        if sections is None:
            return keep
        for record in records:
            log.info("residual group: %d readers keep %d/%d shared channels (%s): %s",
                     len(record["readers"]), record["kept"], record["channels"],
                     record["criterion"], ", ".join(record["readers"]))
        if not records:
            why = why_no_groups(layers, chosen)
            log.info("prune_residual: no residual group found (every layer keeps its own "
                     "channels): %s", why)
        sections.setdefault("graph", {})["residual_groups"] = len(records) if records else why
        sections["residual_groups"] = records
        return keep

    def select_all(self, full: nn.Module, layers: list[PrunableLayer],
                   chosen: list[PrunableLayer], counts: dict[str, int],
                   batches: list[torch.Tensor], sections: dict | None = None,
                   rollout: bool = False) -> tuple:
        """``(pruned copy of full, keep, stats)`` for ``counts``: residual groups chosen once
        each (``prune_residual``), the other layers by the learner's selection, the groups'
        readers refitted. The final model uses ``select_final`` and puts the groups' records
        into ``sections`` (the report's); a search's ``rollout`` uses ``select_rollout`` and
        logs nothing."""
        pruned = copy.deepcopy(full)
        coupled = self.coupled_keep(full, layers, chosen, counts, batches,
                                    None if rollout else sections)
        mask_inputs(pruned, coupled)
        trained = set() if rollout else trained_outputs(chosen, self.cfg.selection_options())
        if coupled:     # the layers selected next read refitted groups, not merely masked ones
            self.refit_coupled(full, pruned, coupled, batches, trained, quiet=True)
        rest = [layer for layer in chosen if layer.name not in coupled]
        keep, stats = (self.select_rollout(full, pruned, rest, counts, batches) if rollout
                       else self.select_final(full, pruned, rest, counts, batches, trained))
        stats += self.refit_coupled(full, pruned, coupled, batches, trained)
        keep.update(coupled)
        return pruned, keep, stats

    def refit_coupled(self, full: nn.Module, pruned: nn.Module, coupled: dict[str, torch.Tensor],
                      batches: list[torch.Tensor], trained: Collection[str] = (),
                      quiet: bool = False) -> list[dict]:
        """Least-squares weights for the kept inputs of the readers of residual groups (inputs
        from the pruned network, targets from the full one), in execution order: once before
        the other layers' selection (so that they are fitted to the inputs the groups will
        give, not to masked ones; ``quiet``) and again after it. ``trained``: readers that
        keep their trained weights (``trained_outputs``)."""
        return refit_layers(full, pruned, coupled, batches, self.cfg.selection_options(),
                            self.ctx.seed, quiet=quiet, trained=trained)

    @property
    @abstractmethod
    def calibration_samples(self) -> int:
        """Training samples the final selection sees."""

    # -- steps -------------------------------------------------------------------------------
    def calibration_batches(self, nb_smpls: int) -> list[torch.Tensor]:
        """ceil(nb_smpls / batch_size) training batches, cached on the model's device."""
        batch_size = self.ctx.helper.cfg.batch_size
        loader = self.ctx.train_loader(self.ctx.helper.build_dataset_train(), batch_size)
        loader.sampler.set_epoch(0)
        nb_batches = -(-nb_smpls // batch_size)
        batches = []
        for inputs, _ in loader:
            batches.append(inputs.to(self.ctx.device))
            if len(batches) >= nb_batches:
                break
        return batches

    def _selected(self, full: nn.Module, full_spec: dict, sections: dict) -> tuple[nn.Module, dict]:
        """Counts on every rank; selection and thinning on the primary process; every rank
        receives the same model."""
        ctx = self.ctx
        layers = analyse(full, ctx.helper.input_shape)
        chosen = self.choose(layers)
        counts = self.kept_counts(full, layers, chosen, sections)  # a search times itself
        payload = None
        with ctx.timed("selection"):
            if ctx.mgw.is_primary():
                batches = self.calibration_batches(self.calibration_samples)
                pruned, keep, stats = self.select_all(full, layers, chosen, counts, batches,
                                                      sections)
                dead: dict = {}
                thinned, spec = thin(pruned, layers, keep, full_spec, stats=dead,
                                     eliminate=self.cfg.eliminate_dead,
                                     timer=pass_timer(ctx.helper.input_shape,
                                                      ctx.cfg.report_latency))
                save_model(self.cfg.save_path_ws, thinned, spec, {"learner": self.learner_name})
                payload = {"spec": spec, "state": thinned.state_dict(), "stats": stats,
                           "dead_channels": dead}
            payload = ctx.mgw.broadcast_object(payload)
            model = build_model(payload["spec"], base=ctx.base)
            model.load_state_dict(payload["state"])
        sections["selection"] = payload["stats"]
        sections.update(passes_section(payload["dead_channels"]))
        sections["dead_channels"] = payload["dead_channels"]
        sections.setdefault("graph", {})["unknown_ops"] = payload["dead_channels"].get(
            "unknown_ops", [])
        return model.to(ctx.device), payload["spec"]

    # -- the flow ----------------------------------------------------------------------------
    def compress(self, full: nn.Module, full_spec: dict) -> Result:
        ctx, sections = self.ctx, {}
        before, start = None, in_channels(full)
        resumed = ctx.resumed_architecture("finetune")
        if resumed is not None:  # a resumed fine-tuning never saw its before-fine-tune model
            model, spec = resumed
        elif self.cfg.warm_start and os.path.isfile(self.cfg.save_path_ws):
            log.info("warm start: skipping selection, loading %s", self.cfg.save_path_ws)
            model, obj = load_model(self.cfg.save_path_ws, base=ctx.base)
            model, spec = model.to(ctx.device), obj["spec"]
        else:
            model, spec = self._selected(full, full_spec, sections)
        if resumed is None:
            before = ctx.accuracy(model)
            log.info("accuracy: thinned before fine-tune %.4f", before)
        ctx.fit(model, ctx.helper.lr_schedule(ctx.mgw.size()), tag="finetune", spec=spec,
                teacher=ctx.teacher())
        sections["kept_channels"] = kept = kept_channels(start, model)
        note_block_widths(kept, ctx.device)
        return Result(model, spec, before_finetune=before, sections=sections)


def log_layer(record: dict) -> None:
    """One log line per selected layer."""
    log.info("select %-22s %-6s keep %3d/%-3d rel.err %.4f (unpruned %.4f) %.2f s%s",
             record["layer"], record["mode"], record["kept"], record["in_channels"],
             record["rel_error"], record["rel_error_unpruned"], record["seconds"],
             "" if record.get("refit", True) else " (trained weights kept)")
