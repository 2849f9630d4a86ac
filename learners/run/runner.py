"""The runner: everything around a learner's ``compress``.

``Runner(helper, cfg, mgw).run(learner)``: the starting model (the pre-trained full model,
trained first with ``full-prec`` when missing, or ``--enbl_warm_start``'s result, checked to
fit: ``learners.run.composition``), the original's accuracy, ``compress``, the delivery pass
(``compression.surgery.passes.fold_delivered``), the artifact, both sides' figures, sparse and
deployment files (checked in their runtimes), report.json. ``evaluate``: ``--exec_mode=eval``.
Output folders are locked and resume files checked before anything is written (``preflight``).
"""
from __future__ import annotations

import copy
import logging
import os
import time
from torch import nn

from datasets.errors import DataError
from learners.run import composition
from learners.base import Learner, Result
from learners.config import LearnerConfig
from learners.run.context import Context
from learners.run.outputs import Outputs
from learners.registry import learner_class
from learners.run.report import Report
from utils.checkpoint import CheckpointError
from utils.config import ConfigError, formatted, settings
from utils.data_loading import check_one_batch
from compression.artifacts import (IncompleteResult, check_complete, load_model,
                                   load_weights_from, mark_complete)
from compression.surgery.passes import fold_delivered
from utils.model_stats import count_flops, count_params, measure_latencies, measure_latency
from utils.multi_gpu_wrapper import MultiGpuWrapper, SingleProcess
from deployment.verify import parity_failure, parity_section
from utils.report import format_report, write_report
from utils.run_lock import RunLock, on_primary

log = logging.getLogger("pocketflow")


class Runner:
    def __init__(self, helper, cfg: LearnerConfig, mgw: MultiGpuWrapper | None = None,
                 run_meta: dict | None = None, base: nn.Module | None = None) -> None:
        self.helper = helper
        self.cfg = cfg
        self.mgw = mgw or SingleProcess()
        self.device = self.mgw.device(cfg.device)
        self.run_meta = run_meta or {}
        # the module a spec of an unregistered net builds on: the helper's own by default
        self.base = base if base is not None or helper.net_spec().get("net") else helper.build_model()
        self.wall_s: dict[str, float] = {}
        self.lock: RunLock | None = None
        self.chain: list[dict] = []       # stages before the learner's (set by ``start``)
        self._original: nn.Module | None = None
        self._writer = None

    # -- learners --------------------------------------------------------------------------
    def learner(self, name: str, own_cfg=None) -> Learner:
        """The registered learner ``name`` with its options and a context of this run."""
        cls = learner_class(name)
        if own_cfg is not None:
            own_cfg = formatted(own_cfg, cls.flag_prefix)
        checkpoint = getattr(own_cfg, "save_path", None) or self.cfg.save_path
        artifact = getattr(own_cfg, "save_path_eval", None) or self.cfg.save_path_eval
        outputs = Outputs(artifact, self.mgw, self.helper, self.cfg.export_format,
                          cls.export_kinds, self.cfg.deploy_eval_batches, self.wall_s)
        ctx = Context(self.helper, self.cfg, self.mgw, cls.learner_name, checkpoint,
                      settings((self.cfg, ""), (self.helper.cfg, ""), (own_cfg, cls.flag_prefix)),
                      self.original, self.teacher if cls.from_scratch else self.distillation_teacher,
                      outputs=outputs, base=self.base, wall_s=self.wall_s,
                      writer=self.summary_writer(cls.learner_name))
        return cls(own_cfg, ctx)

    def output_dirs(self, learner: Learner) -> list[str]:
        """The folders the learner writes to, each locked by the run (``utils.run_lock``)."""
        paths = [learner.ctx.checkpoint, learner.ctx.outputs.artifact]
        if learner.cfg is not None:
            paths += [value for name, value in vars(learner.cfg).items()
                      if "save_path" in name and isinstance(value, str) and value]
        return sorted({os.path.dirname(os.path.abspath(p)) for p in paths})

    def preflight(self, learner: Learner) -> None:
        """Checks that need no training, before anything is written: every resumable file
        belongs to this learner and these settings; the data give one batch per process; the
        multi-process backend can reduce the gradients of ``--channels_last``."""
        ctx = learner.ctx
        for path, kind in [(ctx.checkpoint, "checkpoint"), (ctx.state_path("search.pt"), "search"),
                           *learner.resume_files()]:
            ctx.resume_state(path, kind)
        check_one_batch(len(self.helper.build_dataset_train()), self.helper.cfg.batch_size,
                        self.mgw.size())
        if self.cfg.channels_last and self.mgw.size() > 1 and not self.mgw.strided_gradients:
            raise ConfigError(f"--channels_last: the {self.mgw.name} backend needs contiguous "
                              "gradients (its allreduce refuses channels_last ones); launch with "
                              "--mgw_backend=torch, or run without --channels_last")
        if len(self.helper.build_dataset_eval()) == 0:
            raise DataError("the evaluation set is empty: no accuracy could be measured; check "
                            "--data_dir_local and the helper's load_eval / build_dataset_eval")

    def lock_more(self, directories: list[str]) -> None:
        """Add ``directories`` to this run's lock (a pre-training writes the full model's)."""
        if self.lock is not None:
            on_primary(self.mgw, lambda: self.lock.add(directories))

    # -- starting models ---------------------------------------------------------------------
    def load_pretrained(self) -> tuple[nn.Module, dict]:
        """The full-precision model every compression starts from (``--save_path_eval``);
        trained first with ``full-prec`` when it does not exist yet."""
        path = self.cfg.save_path_eval
        if not os.path.isfile(path):
            log.info("no pre-trained model at %s: training one with full-prec first", path)
            start = time.perf_counter()
            pretrain = Runner(self.helper, self.cfg, self.mgw, self.run_meta, self.base)
            full_prec = pretrain.learner("full-prec")
            self.lock_more(pretrain.output_dirs(full_prec))
            pretrain.preflight(full_prec)
            pretrain.run(full_prec)
            self.wall_s["pretrain"] = time.perf_counter() - start
        self._check_complete(path)
        model, saved = load_model(path, base=self.base)
        self._check_full_model(saved, path)
        return model.to(self.device), saved

    def _check_complete(self, path: str) -> None:
        """The primary process checks the folder's INCOMPLETE mark (it removes the mark of a
        run it just finished); every process raises the same error."""
        problem = None
        if self.mgw.is_primary():
            try:
                check_complete(path)
            except IncompleteResult as exc:
                problem = str(exc)
        problem = self.mgw.broadcast_object(problem)
        if problem:
            raise IncompleteResult(problem)

    def _check_full_model(self, saved: dict, path: str) -> None:
        """The full model must be this helper's net and data: another net's model (or one
        trained on other data) is refused, not compressed under this helper's name."""
        spec = _spec(saved) or {}
        own = self.helper.net_spec()
        base = {k: v for k, v in spec.items() if k != "transforms"}
        meta = saved.get("meta") or {}
        problems = []
        if base != {k: v for k, v in own.items() if k != "transforms"}:
            problems.append(f"its architecture is {_describe(base)}, the helper builds "
                            f"{_describe(own)}")
        for key, ours in (("dataset", self.helper.dataset_name),
                          ("input_shape", list(self.helper.input_shape))):
            theirs = meta.get(key)
            if theirs is not None and theirs != ours:
                problems.append(f"it was trained on {key} {theirs!r}, the helper has {ours!r}")
        if problems:
            raise CheckpointError(
                f"--save_path_eval={path} is not this helper's full model: {'; '.join(problems)}. "
                "Point --save_path_eval at the full model of this net and data (a missing file is "
                "trained first with full-prec)")

    def original(self) -> nn.Module:
        """The full-precision model of ``--save_path_eval`` (the reference of every report)."""
        if self._original is None:
            self._original, _ = self.load_pretrained()
        return self._original

    def teacher(self) -> nn.Module | None:
        """``--enbl_dst``: the teacher model, ``--dst_model_path`` or the pre-trained model."""
        if not self.cfg.enbl_dst:
            return None
        path = self.cfg.dst_model_path or self.cfg.save_path_eval
        if not os.path.isfile(path):
            raise CheckpointError(f"distillation needs a teacher model artifact at {path}; train "
                                  "one with --learner=full-prec or set --dst_model_path")
        model, _ = load_model(path, base=self.base)
        return model.to(self.device)

    def distillation_teacher(self) -> nn.Module | None:
        """The teacher of a compression's fine-tuning: ``--dst_model_path`` when given, else a
        copy of the original full model (also when the learner warm-started elsewhere)."""
        if not self.cfg.enbl_dst:
            return None
        return self.teacher() if self.cfg.dst_model_path else copy.deepcopy(self.original())

    @property
    def warm_started(self) -> bool:
        """``--enbl_warm_start`` from an artifact other than the full model's."""
        path = self.cfg.warm_start_path
        if not (self.cfg.enbl_warm_start and path):
            return False
        return os.path.abspath(path) != os.path.abspath(self.cfg.save_path_eval)

    def start(self, learner: Learner) -> tuple[nn.Module, dict]:
        """The model a learner starts from and its spec (see the module's docstring)."""
        if learner.from_scratch:
            return self._scratch(learner)
        full, saved = self.load_pretrained()
        self._original = full
        full_stage = composition.recorded_chain(self.cfg.save_path_eval, saved, full,
                                                self.helper.input_shape)
        if not self.warm_started:
            self.chain = full_stage[-1:]
            return full, _spec(saved)
        model, obj, chain = composition.load_start(self.cfg.warm_start_path, type(learner),
                                                   self.helper, self.base)
        self.chain = chain if chain[0]["learner"] == "full-prec" else [*full_stage[-1:], *chain]
        log.info("warm start from %s (chain %s)", self.cfg.warm_start_path,
                 " -> ".join(e["learner"] for e in self.chain))
        return model.to(self.device), _spec(obj)

    def _scratch(self, learner: Learner) -> tuple[nn.Module, dict]:
        """full-prec: the helper's model, or with ``--enbl_warm_start`` any learner's result
        (its architecture included) or the saved full model's weights."""
        if self.warm_started:
            model, obj, self.chain = composition.load_start(self.cfg.warm_start_path,
                                                            type(learner), self.helper, self.base)
            log.info("warm start from %s", self.cfg.warm_start_path)
            return model.to(self.device), obj["spec"]
        model = self.helper.build_model()
        if self.cfg.enbl_warm_start:  # continue training the full model
            load_weights_from(model, self.cfg.save_path_eval)
            log.info("warm start from %s", self.cfg.save_path_eval)
        return model.to(self.device), self.helper.net_spec()

    # -- the run -------------------------------------------------------------------------
    def run(self, learner: Learner) -> dict:
        """Compress (or train) with ``learner``; write its outputs; return the report."""
        report = Report(learner.learner_name, self.helper.model_name, self.helper.dataset_name)
        model, spec = self.start(learner)
        if not learner.from_scratch:
            report.accuracy.full = learner.ctx.accuracy(self.original())
            if self.chain and self.chain[0].get("accuracy") is None:  # a full model saved bare
                self.chain[0]["accuracy"] = report.accuracy.full
        result = learner.compress(model, copy.deepcopy(spec))
        if result.accuracy is None and result.spec is not None:  # (collective)
            result.accuracy = learner.ctx.accuracy(result.model)
        return self.finish(learner, result, report)

    def finish(self, learner: Learner, result: Result, report: Report) -> dict:
        """The artifact, both sides' figures, sparse and deployment files, the report."""
        outputs, tags = learner.ctx.outputs, learner.result_tags()
        if learner.from_scratch:          # full-prec: the result IS the full model
            report.accuracy.full = result.accuracy
        else:
            report.accuracy.compressed = result.accuracy
            report.accuracy.compressed_before_finetune = result.before_finetune
        report.accuracy.extra.update(result.accuracy_extra)
        fold_delivered(result, self.helper.input_shape, self.cfg.report_latency, self.mgw)
        for name, value in result.sections.items():
            report.add(name, value)
        size = None
        if result.spec is not None:
            size = outputs.save_artifact(result.model, result.spec, {
                "learner": learner.learner_name, **self.helper.describe(),
                "produces": sorted(tags), "chain": self.chain, "accuracy": result.accuracy,
                **result.meta})
        if self.mgw.is_primary():
            self._figures(learner, result, report, size)
        self.mgw.barrier()
        return self.finish_report(learner, report)

    def _figures(self, learner: Learner, result: Result, report: Report, size) -> None:
        outputs, model = learner.ctx.outputs, result.model
        learner.finish(result, report)
        if learner.from_scratch:
            self.model_report(model, report, "full", size)
        else:
            original = self.original()
            eager = None   # both eager: timed side by side, so the ratio is not a drift
            if self.cfg.report_latency and report.latency_ms.compressed is None:
                eager = measure_latencies({"full": original, "compressed": model},
                                          self.helper.input_shape)
            self.model_report(original, report, "full", os.path.getsize(self.cfg.save_path_eval),
                              eager and eager["full"])
            self.model_report(model, report, "compressed", size, eager and eager["compressed"])
        if result.deploy_kind:
            for name, value in outputs.deploy_sections(model, result.deploy_kind).items():
                report.add(name, value)
        elif result.deploy_reason:
            report.add("onnx", {"path": None, "max_abs_diff": None, "reason": result.deploy_reason})

    def model_report(self, model: nn.Module, report: Report, side: str, size: int | None,
                     latency: dict | None = None) -> None:
        """FLOPs, parameters, bytes on disk and latency of ``model`` as ``side``; a figure the
        learner already gave (``Learner.finish``) is kept."""
        def put(sides, value):
            if getattr(sides, side) is None:
                setattr(sides, side, value() if callable(value) else value)

        put(report.flops, lambda: count_flops(model, self.helper.input_shape))
        put(report.params, lambda: count_params(model))
        put(report.bytes_on_disk, size)
        if self.cfg.report_latency:
            put(report.latency_ms, lambda: latency or measure_latency(model, self.helper.input_shape))

    def finish_report(self, learner: Learner, report: Report) -> dict:
        if self.chain:  # the stages before this one, then this one
            report.add("chain", [*self.chain, {
                "learner": learner.learner_name, "produces": sorted(learner.result_tags()),
                "artifact": learner.ctx.outputs.artifact, "accuracy": report.accuracy.compressed,
                "flops": report.flops.compressed, "params": report.params.compressed,
                "bytes": report.bytes_on_disk.compressed}])
        report.wall_s = self.wall_s
        if self.mgw.is_primary():
            report.add("files", learner.ctx.outputs.files())
        if report.sections.get("deploy"):
            report.add("parity", parity_section(report.sections["deploy"]))
        out = report.to_dict()
        if self.mgw.is_primary():
            write_report(learner.ctx.outputs.report_path, out)
            mark_complete(learner.ctx.outputs.artifact)
            print(format_report(out), flush=True)
        if self._writer is not None:
            self._writer.close()
        if not out.get("parity", {"ok": True})["ok"] and not self.cfg.allow_parity_failure:
            raise parity_failure(out["parity"], out)
        return out

    # -- eval mode ---------------------------------------------------------------------------
    def evaluate(self, learner: Learner) -> dict:
        """``--exec_mode=eval``: evaluate the saved artifact; no search or training is re-run."""
        path = learner.ctx.outputs.artifact
        if not os.path.isfile(path):
            raise CheckpointError(f"no saved model at {path}; train first (--exec_mode=train) or "
                                  "point the save path at a model artifact")
        check_complete(path)
        model = learner.load_result(path)
        metrics = learner.ctx.evaluate(model.to(self.device))
        if self.mgw.is_primary():
            log.info("eval %s: loss = %.4f | accuracy = %.4f", path, metrics["loss"],
                     metrics["accuracy"])
        return metrics

    def summary_writer(self, name: str):
        """TensorBoard events of the learner ``name`` under ``--log_dir`` (primary only)."""
        if self._writer is None and self.cfg.log_dir and self.mgw.is_primary():
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(os.path.join(self.cfg.log_dir, name))
        return self._writer


def _spec(saved: dict) -> dict:
    return saved.get("spec") or saved.get("meta", {}).get("spec")


def _describe(spec: dict) -> str:
    if spec.get("net") is None:
        return f"the module {spec.get('module')}"
    kwargs = ", ".join(f"{k}={v!r}" for k, v in (spec.get("kwargs") or {}).items())
    return f"{spec.get('net')}({kwargs})"

