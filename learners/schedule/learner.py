"""schedule: run a Distiller-style compression-schedule YAML (``--compress=policy.yaml``).

Pre-trained model -> policy validated against it (its names mapped to the model's:
``compression.schedule.names``) -> training in SEGMENTS split at the thinning epochs and the
quantizers' first epochs; at a segment's first epoch: the pruners of that epoch listed before
the thinning extension fire, the extension physically thins the masked structured-pruned model
(what the pruners selected and every exactly-zero channel: ``compression.surgery.thinning.thin``,
recorded in the spec), the pruners listed after it fire, quantizers starting then are attached;
then the segment trains (its own ``fit``, tag ``epochs_<first>_<last>``, fresh optimizer, the
one ``CompressionScheduler`` callback) -> masks / quantized weights baked -> artifact + ONNX +
report. ``--resume`` restarts the interrupted segment from its checkpoint's spec.
"""
from __future__ import annotations

import copy
import itertools
import logging

import torch
from torch import nn
from torch.nn.utils import parametrize

from compression.quantization.dorefa_pact import bake_weights, clipped_quant_entry
from compression.graph.layers import analyse
from compression.sparsity.masks import (attach_masks, detach_masks, maskable_layers, masks_of,
                                        sparsity_of)
from compression.schedule.lr import policy_lr
from compression.schedule.names import resolve_names
from compression.schedule.policy import Policy, check_epochs, load_policy
from compression.schedule.pruners import PRUNERS, LevelPruner
from compression.schedule.quantizers import apply_quantizer, check_bias_bits, check_not_pruned
from compression.schedule.range_linear import PTQ, int8_problem, is_range_linear
from compression.quantization.range_linear import bake_range_weights, range_linear_entry
from compression.schedule.scheduler import CompressionScheduler
from compression.schedule.zero_structures import merge_keep, zero_keep
from compression.budget.simd import note_block_widths
from compression.surgery.passes import pass_timer, passes_section
from compression.surgery.thinning import in_channels, kept_channels, thin
from learners.run import composition
from learners.base import Learner, Result
from learners.registry import register_learner
from learners.schedule.config import ScheduleConfig
from utils.lrn_rate import scaled_lr
from compression.artifacts import build_model, export_quantized

log = logging.getLogger("pocketflow")
MASK_SUFFIX = ".parametrizations.weight.0.mask"


def range_linear_int8(ctx, model: nn.Module, infos: list[dict]) -> dict:
    """The report's ``int8``: ``<stem>_int8.pte`` lowered from the range-linear fake-quantized
    model with its learned ranges, checked against it and the converted int8 model; or why none."""
    problem = int8_problem(infos)
    if problem:
        log.info("range-linear quantization: no int8 program (%s); the result stays fake-quantized",
                 problem)
        return {"written": False, "reason": problem}
    try:
        from compression.quantization.range_linear_int8 import lower_int8
        from deployment.pipeline import eval_batches
        from deployment.pte import export_pte
        from deployment.verify import verify_artifact
        batches = [x for x, _ in itertools.islice(ctx.train_loader(), CALIB_BATCHES)]
        example = torch.zeros(2, *ctx.helper.input_shape)
        was_training = model.training
        model.eval()
        int8, figures = lower_int8(model, example, batches)
        path = ctx.outputs.stem() + "_int8.pte"
        size = export_pte(int8, example, path, quantized=True)
        checks = eval_batches(ctx.helper, 4)
        vs_fake = verify_artifact(path, model, checks, kind="int8", strict=False)
        vs_int8 = verify_artifact(path, int8, checks, kind="int8", strict=False)
        model.train(was_training)
    except ImportError as exc:
        return {"written": False, "reason": f"int8 export unavailable: {exc}"}
    keep = ("max_abs_diff", "max_abs_output", "top1_agreement", "accuracy", "accuracy_torch",
            "parity_ok", "mismatch", "nb_samples")
    section = {"written": True, "pte": path, "bytes": size, **figures,
               "parity_vs_fakequant": {k: vs_fake[k] for k in keep if k in vs_fake},
               "parity_vs_converted": {k: vs_int8[k] for k in keep if k in vs_int8}}
    section["parity_ok"] = bool(vs_fake["parity_ok"] and vs_int8["parity_ok"])
    (log.info if section["parity_ok"] else log.error)(
        "int8 program %s: %d bytes | accuracy %.4f vs fake-quantized %.4f | top-1 agreement %.3f",
        path, size, vs_fake["accuracy"], vs_fake["accuracy_torch"], vs_fake["top1_agreement"])
    return section


ACTIVATION_BATCHES = 8   # training batches the activation-ranked pruners observe per event
CALIB_BATCHES = 4   # training batches calibrating the int8 points Distiller keeps in float
FINE_GRAINED = ("AutomatedGradualPruner", *LevelPruner.KEYS, "SplicingPruner")


def segment_starts(policy: Policy, nb_epochs: int) -> list[int]:
    """Epoch 0, every thinning epoch and every quantizer's first epoch (below ``nb_epochs``)."""
    starts = {0, *(e for p in policy.of_kind("extension") for e in p.active_epochs()),
              *(p.first_epoch for p in policy.of_kind("quantizer"))}
    return sorted(e for e in starts if e < nb_epochs)


def _bake_masks(model: nn.Module, layers: list, keep: dict, structured: set[str] = frozenset()) -> None:
    """Bake the masks of the layers thinning rebuilds (consumers, producers) and of the
    structured pruners' layers: exact zeros stay."""
    touched = set(structured)
    for layer in layers:
        if layer.name in keep:
            touched |= {layer.name, *([layer.producer] if layer.shrinks_producer else []),
                        *layer.followers}
    for name in touched:
        module = model.get_submodule(name)
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def policy_tags(policy: Policy) -> frozenset:
    """sparse: a fine-grained pruner, or a structured one with events after the last thinning
    (its zeros stay as zeros); thinned: a thinning extension; quantized: a quantizer."""
    tags = set()
    thin_at = [(e, i) for i, p in enumerate(policy.policies) if p.kind == "extension"
               for e in p.active_epochs()]
    last = max(thin_at, default=None)
    for index, entry in enumerate(policy.policies):
        if entry.kind != "pruner":
            continue
        if entry.instance.cls in FINE_GRAINED or last is None or \
                any((e, index) > last for e in entry.active_epochs()):
            tags.add("sparse")
    if policy.of_kind("extension"):
        tags.add("thinned")
    if policy.of_kind("quantizer"):
        tags.add("quantized")
    return frozenset(tags)


@register_learner("schedule", config=ScheduleConfig, prefix="sch")
class ScheduleLearner(Learner):
    produces = frozenset({"sparse", "thinned", "quantized"})
    refuses = {"quantized": composition.PRUNE_QUANTIZED}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._policy: Policy | None = None
        self._before: float | None = None   # accuracy when the policy first changed the model
        if self.ctx.cfg.exec_mode == "train":
            self._policy = self._load()  # a bad file fails before training

    def _load(self) -> Policy:
        return load_policy(self.cfg.compress, inclusive_end=self.cfg.ending_epoch == "inclusive")

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            self._policy = self._load()
        return self._policy

    def result_tags(self) -> frozenset:
        return policy_tags(self.policy)

    # -- segments --------------------------------------------------------------------------
    def _resumed(self, tags: list[str]) -> tuple[int, dict, list[str]] | None:
        """(segment index, spec, masked layers) of an interrupted run (``--resume``)."""
        ckpt = self.ctx.resume_state(self.ctx.checkpoint, "checkpoint")
        if ckpt is None or ckpt.get("tag") not in tags or not ckpt.get("meta", {}).get("spec"):
            return None
        masked = [k[: -len(MASK_SUFFIX)] for k in ckpt["model"] if k.endswith(MASK_SUFFIX)]
        return tags.index(ckpt["tag"]), ckpt["meta"]["spec"], masked

    def _quantize(self, model: nn.Module, start: int, resumed: bool, info: list) -> None:
        for entry in self.policy.of_kind("quantizer"):
            if entry.first_epoch == start or (resumed and entry.first_epoch <= start):
                check_not_pruned(model, entry.instance, set(masks_of(model)), "a pruner still")
                batches = itertools.islice((x for x, _ in self.ctx.train_loader()), ACTIVATION_BATCHES)
                info.append(apply_quantizer(model, entry.instance, batches))

    def _boundary(self, model: nn.Module, spec: dict, scheduler: CompressionScheduler, start: int,
                  sections: dict, quant: list) -> tuple[nn.Module, dict]:
        """What happens when epoch ``start`` begins a segment: pruning, thinning, quantizers."""
        scheduler.set_segment(model, start)
        thin_at = [i for i, p in enumerate(self.policy.policies)
                   if p.kind == "extension" and start in p.active_epochs()]
        scheduler.fire(start, before=thin_at[0] if thin_at else None)
        if thin_at:
            model, spec = self._thin(model, spec, scheduler, start, sections)
            scheduler.fire(start)
        before = len(quant)
        self._quantize(model, start, False, quant)
        if len(quant) > before and "thinning" not in sections:
            self._before = self.ctx.accuracy(model)
        return model, spec

    def _thin(self, model: nn.Module, spec: dict, scheduler: CompressionScheduler, start: int,
              sections: dict) -> tuple[nn.Module, dict]:
        """The thinning extension: the pruners' selections and every exactly-zero channel."""
        layers = analyse(model, self.ctx.helper.input_shape)
        zeros, found = zero_keep(model, layers)
        keep = merge_keep(scheduler.keep, zeros)
        if not keep:
            log.warning("thinning at epoch %d: no structured pruner has selected channels and no "
                        "channel is zero; nothing to remove", start)
        else:
            _bake_masks(model, layers, keep, scheduler.structured_layers())
            dead: dict = {}
            thinned, spec = thin(model, layers, keep, spec, stats=dead,
                                 timer=pass_timer(self.ctx.helper.input_shape,
                                                  self.ctx.cfg.report_latency))
            sections["thinning"] = {"epoch": start, **self._parity(model, thinned), **found}
            sections.update(passes_section(dead))
            sections["dead_channels"] = dead
            sections["graph"] = {"unknown_ops": dead.get("unknown_ops", [])}
            model = thinned.to(self.ctx.device)
            self._before = self.ctx.accuracy(model)
            log.info("thinned at epoch %d: masked vs thinned max |diff| = %.2e | accuracy %.4f",
                     start, sections["thinning"]["max_abs_diff"], self._before)
        scheduler.reset_structure(model, start)
        scheduler.set_segment(model, start)
        return model, spec

    @torch.no_grad()
    def _parity(self, masked: nn.Module, thinned: nn.Module) -> dict:
        inputs, _ = next(iter(self.ctx.eval_loader()))
        inputs = inputs.to(self.ctx.device)
        a, b = masked.eval()(inputs), thinned.eval()(inputs)
        masked.train(), thinned.train()
        return {"max_abs_diff": float((a - b).abs().max()), "max_abs_output": float(a.abs().max())}

    # -- the flow ----------------------------------------------------------------------------
    def compress(self, full: nn.Module, spec: dict) -> Result:
        cfg, policy, ctx, sections = self.cfg, self.policy, self.ctx, {}
        mapped = resolve_names(policy, full, getattr(ctx.helper, "distiller_aliases", None))
        for old, new in mapped.items():
            log.info("schedule name %s -> %s", old, new)
        nb_epochs = cfg.nb_epochs or policy.last_epoch + 1
        if not cfg.nb_epochs:
            log.info("schedule: %d epochs (the policies' last epoch + 1; --sch_nb_epochs sets the "
                     "run's length, as Distiller's --epochs)", nb_epochs)
        for note in check_epochs(policy, nb_epochs):
            log.info("schedule: %s", note)
        fine = set()
        for entry in policy.of_kind("pruner"):
            if entry.instance.cls in FINE_GRAINED:
                pruner = PRUNERS[entry.instance.cls](entry.instance, entry, [], list(maskable_layers(full)))
                fine |= set(pruner.mask_layers())
        for entry in policy.of_kind("quantizer"):
            if is_range_linear(entry.instance.cls):
                check_not_pruned(full, entry.instance, fine, "a fine-grained pruner")
                continue
            check_bias_bits(entry.instance)
            check_not_pruned(full, entry.instance, fine, "a fine-grained pruner")
        iters = cfg.epoch_iters or len(ctx.train_loader())
        base_lr = cfg.lrn_rate or scaled_lr(ctx.helper.cfg.lrn_rate_init,
                                            ctx.helper.global_batch(ctx.mgw.size()),
                                            ctx.helper.cfg.batch_size_norm)
        schedule = policy_lr(policy, base_lr, iters, nb_epochs)
        start_channels = in_channels(full)
        model = copy.deepcopy(full)
        scheduler = CompressionScheduler(policy, model, ctx.helper.input_shape, iters,
                                         ctx.mgw.broadcast_object if ctx.mgw.size() > 1 else None,
                                         batches=lambda: itertools.islice(
                                             (x for x, _ in ctx.train_loader()), ACTIVATION_BATCHES))
        starts = segment_starts(policy, nb_epochs)
        ends = [*starts[1:], nb_epochs]
        tags = [f"epochs_{s}_{e - 1}" for s, e in zip(starts, ends)]
        resumed = self._resumed(tags)
        quant: list[dict] = []
        teacher = ctx.teacher()
        for index, (start, end, tag) in enumerate(zip(starts, ends, tags)):
            if resumed is not None and index < resumed[0]:
                continue
            if resumed is not None and index == resumed[0]:
                spec = resumed[1]
                model = build_model(spec, base=ctx.base).to(ctx.device)
                if resumed[2]:
                    attach_masks(model, resumed[2])
                scheduler.rebuild(model, start)
                self._quantize(model, start, True, quant)
                scheduler.set_segment(model, start, attach=False)
            else:
                model, spec = self._boundary(model, spec, scheduler, start, sections, quant)
            log.info("schedule segment %s: epochs %d..%d, %d steps", tag, start, end - 1,
                     (end - start) * iters)
            if self._post_train_only():
                log.info("schedule: PostTrainLinearQuantizer only: no training")
                break
            ctx.fit(model, schedule.segment(start, end), tag=tag, spec=spec, callbacks=[scheduler],
                    teacher=teacher)
        accuracy = ctx.accuracy(model)
        targets = scheduler.zeros_targets()
        pruned = sorted(set(masks_of(model)))
        detach_masks(model)
        packed = None
        ranged = [q for q in quant if q["method"].startswith("range_linear")]
        if ranged:
            if ctx.mgw.is_primary():
                sections["int8"] = range_linear_int8(ctx, model, ranged)
            spec = {**spec, "transforms": [*spec.get("transforms", []), range_linear_entry(model)]}
            bake_range_weights(model)
        elif quant:
            spec = {**spec, "transforms": [*spec.get("transforms", []), clipped_quant_entry(model)]}
            if ctx.mgw.is_primary():  # k-bit codes of every quantized weight, exact round trip
                packed = export_quantized(ctx.outputs.derived("quant"),
                                          model, spec, {"learner": self.learner_name}, ctx.base)
            bake_weights(model)
        sparse = "sparse" in self.result_tags()
        if "thinned" in self.result_tags():
            sections["kept_channels"] = kept = kept_channels(start_channels, model)
            note_block_widths(kept, ctx.device)
        if sparse:
            sections["sparsity"] = sparsity_of(model, pruned, targets)
        if quant:
            sections["quantization"] = [dict(q) for q in quant]
        sections["policy"] = {**policy.summary(), "names": mapped,
                              "ending_epoch": self.cfg.ending_epoch}
        if packed is not None:
            sections["quantized_file"] = packed
        return Result(model, spec, before_finetune=self._before, accuracy=accuracy,
                      sections=sections, deploy_kind="fakequant" if quant else "fp32")

    def _post_train_only(self) -> bool:
        """Only post-training quantizers (and LR schedules): nothing to train."""
        kinds = {p.kind for p in self.policy.policies} - {"lr_scheduler"}
        return kinds == {"quantizer"} and all(p.instance.cls == PTQ for p in self.policy.of_kind("quantizer"))

    def finish(self, result: Result, report) -> None:
        """Sparse copies of a pruned result; the bit-packed file of a quantized one is its
        size on disk."""
        if "sparse" in self.result_tags():
            self.ctx.write_sparse_copies(result, report)
        if "quantized_file" in result.sections:
            report.bytes_on_disk.compressed = result.sections["quantized_file"]["file"]["bytes"]
