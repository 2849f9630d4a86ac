"""AbstractLearner: what every learner shares (data, optimizer, the loop, saving, reports).

A learner knows the ModelHelper interface, never a particular net, and never reads flags: it
receives the common ``LearnerConfig``, its own options dataclass and a MultiGpuWrapper.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import nn

from deployment.formats import formats_for
from deployment.pipeline import deploy, eval_batches
from learners import composition
from learners.callbacks import LoggingCallback, LrScheduleCallback, PeriodicCallback
from learners.config import LearnerConfig
from learners.distillation import DistillationCallback
from learners.registry import learner_class
from learners.trainer import Callback, Trainer, TrainingDivergedError, model_is_finite
from nets.abstract_model_helper import AbstractModelHelper
from utils.checkpoint import CheckpointError, load_file, rng_state, save_file, set_rng_state
from utils.data_loading import make_eval_loader, make_train_loader
from utils.model_io import build_model, load_model, load_weights, save_model, unwrap
from utils.model_stats import count_flops, count_params, measure_latency
from utils.multi_gpu_wrapper import MultiGpuWrapper, SingleProcess
from utils.report import empty_report, format_report, write_report

log = logging.getLogger("pocketflow")


class AbstractLearner(ABC):
    learner_name = "abstract"
    # Chains (``learners.composition``): properties this learner's result has, and the
    # properties of a warm-start model it refuses (property -> why).
    produces: frozenset = frozenset()
    refuses: dict = {}

    def __init__(self, helper: AbstractModelHelper, cfg: LearnerConfig, own_cfg=None,
                 mgw: MultiGpuWrapper | None = None, run_meta: dict | None = None) -> None:
        self.helper = helper
        self.cfg = cfg
        self.own_cfg = own_cfg
        self.mgw = mgw or SingleProcess()
        self.device = self.mgw.device(cfg.device)
        self.run_meta = run_meta or {}
        self._writer = None
        self._eval_loader = None
        self.wall_s: dict[str, float] = {}
        self._original: nn.Module | None = None
        self.chain: list[dict] = []  # stages before this learner's (set by load_start)
        self.export_formats()  # an export format that is not installed fails before training

    # -- what a learner must provide -------------------------------------------------------
    @abstractmethod
    def train(self) -> dict:
        """Train or compress; save the artifact; return the report."""

    @property
    def checkpoint_path(self) -> str:
        """Resumable training state of this learner."""
        return self.cfg.save_path

    @property
    def artifact_path(self) -> str:
        """The final model this learner produces (``report.json`` goes beside it)."""
        return self.cfg.save_path_eval

    def evaluate(self) -> dict:
        """``--exec_mode=eval``: evaluate the saved artifact; no search or training is re-run."""
        if not os.path.isfile(self.artifact_path):
            raise CheckpointError(f"no saved model at {self.artifact_path}; train first "
                                  f"(--exec_mode=train) or point the save path at a model artifact")
        model, saved = load_model(self.artifact_path)
        trained_on = saved.get("meta", {}).get("input_shape")
        if trained_on is not None and list(trained_on) != list(self.helper.input_shape):
            raise CheckpointError(
                f"{self.artifact_path} was trained on inputs of shape {list(trained_on)} but the "
                f"helper now feeds {list(self.helper.input_shape)}; pass the training run's data "
                "flags (e.g. --image_size) to evaluate it")
        metrics = self.run_evaluation(model.to(self.device))
        if self.mgw.is_primary():
            log.info("eval %s: loss = %.4f | accuracy = %.4f", self.artifact_path,
                     metrics["loss"], metrics["accuracy"])
        return metrics

    # -- data --------------------------------------------------------------------------------
    def train_loader(self, dataset=None, batch_size: int | None = None):
        dataset = dataset if dataset is not None else self.helper.build_dataset_train()
        return make_train_loader(dataset, batch_size or self.helper.cfg.batch_size,
                                 rank=self.mgw.rank(), world_size=self.mgw.size(),
                                 seed=self.cfg.seed, nb_threads=self.helper.cfg.nb_threads)

    def eval_loader(self, dataset=None):
        if dataset is not None:
            return make_eval_loader(dataset, self.helper.cfg.batch_size_eval, self.mgw.rank(),
                                    self.mgw.size(), self.helper.cfg.nb_threads)
        if self._eval_loader is None:
            self._eval_loader = self.eval_loader(self.helper.build_dataset_eval())
        return self._eval_loader

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def run_evaluation(self, model: nn.Module, loader=None, local: bool = False) -> dict:
        """Mean loss and accuracy over the WHOLE eval set (shards summed over ranks).

        ``local``: this process's loader only, no collective (a search run by rank 0 alone).
        """
        model = unwrap(model)
        was_training = model.training
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, correct, n
        for inputs, labels in loader or self.eval_loader():
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            outputs = self.helper.forward_eval(model, inputs)
            loss, metrics = self.helper.calc_loss(labels, outputs)
            n = labels.numel()
            sums += torch.stack([loss.double() * n, metrics["accuracy"].double() * n,
                                 torch.tensor(float(n), dtype=torch.float64, device=self.device)])
        model.train(was_training)
        if not local:
            sums = self.mgw.allreduce(sums)
        count = max(float(sums[2]), 1.0)
        return {"loss": float(sums[0]) / count, "accuracy": float(sums[1]) / count}

    # -- training ----------------------------------------------------------------------------
    def build_optimizer(self, model: nn.Module, lr: float = 0.0) -> torch.optim.Optimizer:
        """Momentum SGD with the helper's weight decay (lr is set by the schedule)."""
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=self.cfg.momentum,
                               weight_decay=self.helper.weight_decay)

    def short_finetune(self, model: nn.Module, batches: list, lr: float, nb_iters: int) -> None:
        """A few Adam steps over cached ``(inputs, labels)`` batches in this process only
        (the fast fine-tune of a search's reward; the same loop, no checkpoints or logs)."""
        if nb_iters <= 0:
            return
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        Trainer(model, optimizer, self.helper.calc_loss, batches, nb_iters, self.device,
                forward=self.helper.forward_train).fit()

    def cached_batches(self, dataset, nb_batches: int, batch_size: int | None = None) -> list:
        """The first ``nb_batches`` ``(inputs, labels)`` of a seeded pass over ``dataset``, on
        the device, read by this process alone."""
        loader = make_train_loader(dataset, batch_size or self.helper.cfg.batch_size, rank=0,
                                   world_size=1, seed=self.cfg.seed, nb_threads=0)
        loader.sampler.set_epoch(0)
        batches = []
        for inputs, labels in loader:
            batches.append((inputs.to(self.device), labels.to(self.device)))
            if len(batches) >= nb_batches:
                break
        return batches

    def search_batches(self, nb_train: int, nb_val: int) -> tuple[list, list]:
        """Cached batches for a strategy search's rewards: ``nb_train`` from the training set
        without its held-out split, and up to ``nb_val`` from that held-out split."""
        train = self.cached_batches(self.helper.build_dataset_train(enbl_trn_val_split=True),
                                    max(1, nb_train))
        val = []
        for inputs, labels in make_eval_loader(self.helper.build_dataset_val(),
                                               self.helper.cfg.batch_size_eval):
            val.append((inputs.to(self.device), labels.to(self.device)))
            if len(val) >= nb_val:
                break
        return train, val

    def distillation_teacher(self) -> nn.Module | None:
        """The teacher of a compression learner's fine-tuning: None without ``--enbl_dst``,
        ``--dst_model_path`` when given, else (a copy of) the original full model (also when
        the learner warm-started from another learner's result)."""
        if not self.cfg.enbl_dst:
            return None
        return self.teacher() if self.cfg.dst_model_path else copy.deepcopy(self.original())

    def on_primary(self, compute):
        """``compute()`` on the primary process only; every rank returns its result (a
        measurement or a search whose outcome must be the same on all ranks)."""
        return self.mgw.broadcast_object(compute() if self.mgw.is_primary() else None)

    def search_on_primary(self, make_env, nb_rlouts: int, nb_rlouts_min: int,
                          report: dict, keep_top: int = 1) -> dict:
        """DDPG strategy search (``learners.rl.search``) on the primary process only; every rank
        receives the best strategy (the ``info`` dict of its roll-out, whose ``"top"`` lists the
        infos of the best ``keep_top`` roll-outs, best first). The search
        checkpoints to ``search.pt`` beside the training checkpoint and resumes with
        ``--resume``."""
        from learners.rl.search import run_search

        def search() -> dict:
            result = run_search(make_env(), self.own_cfg, nb_rlouts, nb_rlouts_min,
                                seed=self.cfg.seed, checkpoint_path=os.path.join(
                                    os.path.dirname(self.checkpoint_path) or ".", "search.pt"),
                                resume=self.cfg.resume, keep_top=keep_top)
            return {"best": result.best, "reward": result.best_reward,
                    "history": result.history, "top": [info for _, info in result.top],
                    "kept_baseline": result.kept_baseline,
                    "seconds_per_rollout": result.seconds_per_rollout}

        start = time.perf_counter()
        payload = self.on_primary(search)
        best, top = payload.pop("best"), payload.pop("top")
        report["search"] = {**payload, **{k: v for k, v in best.items()
                                          if not isinstance(v, list)}}
        self.wall_s["search"] = time.perf_counter() - start
        return {**best, "top": top}

    def teacher(self) -> nn.Module:
        """The distillation teacher: ``--dst_model_path`` or the helper's pre-trained model."""
        path = self.cfg.dst_model_path or self.cfg.save_path_eval
        if not os.path.isfile(path):
            raise CheckpointError(f"distillation needs a teacher model artifact at {path}; train "
                                  "one with --learner=full-prec or set --dst_model_path")
        model, _ = load_model(path)
        return model.to(self.device)

    def load_pretrained(self) -> tuple[nn.Module, dict]:
        """The full-precision model every compression starts from (``--save_path_eval``);
        trained first with ``full-prec`` when it does not exist yet."""
        path = self.cfg.save_path_eval
        if not os.path.isfile(path):
            log.info("no pre-trained model at %s: training one with full-prec first", path)
            start = time.perf_counter()
            full_prec = learner_class("full-prec")(self.helper, self.cfg, None, self.mgw, self.run_meta)
            full_prec.train()
            self.wall_s["pretrain"] = time.perf_counter() - start
        model, saved = load_model(path)
        return model.to(self.device), saved

    @property
    def warm_started(self) -> bool:
        """``--enbl_warm_start`` from an artifact other than the full model's."""
        path = self.cfg.warm_start_path
        if not (self.cfg.enbl_warm_start and path):
            return False
        return os.path.abspath(path) != os.path.abspath(self.cfg.save_path_eval)

    def load_start(self) -> tuple[nn.Module, dict]:
        """The model this learner compresses: the full model (``load_pretrained``), or with
        ``--enbl_warm_start --warm_start_path=<artifact>`` another learner's result, checked
        to fit this learner (``learners.composition``). The full model stays the report's
        reference (``original``) and the distillation teacher."""
        full, saved = self.load_pretrained()
        self._original = full
        full_stage = composition.recorded_chain(self.cfg.save_path_eval, saved, full,
                                                self.helper.input_shape)
        if not self.warm_started:
            self.chain = full_stage[-1:]
            return full, saved
        model, obj, chain = composition.load_start(self.cfg.warm_start_path, type(self), self.helper)
        self.chain = chain if chain[0]["learner"] == "full-prec" else [*full_stage[-1:], *chain]
        log.info("warm start from %s (chain %s)", self.cfg.warm_start_path,
                 " -> ".join(e["learner"] for e in self.chain))
        return model.to(self.device), obj

    def begin(self) -> tuple[dict, nn.Module, dict]:
        """The start of every compression: a new report holding the original's accuracy, the
        model to compress (``load_start``) and its architecture spec."""
        report = self.new_report()
        full, saved = self.load_start()
        spec = saved.get("spec") or saved.get("meta", {}).get("spec")
        report["accuracy"]["full"] = self.run_evaluation(self.original())["accuracy"]
        return report, full, spec

    def original(self) -> nn.Module:
        """The full-precision model of ``--save_path_eval`` (the reference of every report)."""
        if self._original is None:
            self._original, _ = self.load_pretrained()
        return self._original

    def resumed_architecture(self, tag: str) -> tuple[nn.Module, dict] | None:
        """With ``--resume``, the architecture of an interrupted ``fit`` of ``tag`` whose model
        differs from the start (thinned): ``(model, spec)`` from the checkpoint's spec; ``fit``
        then restores its weights, optimizer and step from the same checkpoint."""
        if not (self.cfg.resume and os.path.isfile(self.checkpoint_path)):
            return None
        ckpt = load_file(self.checkpoint_path, kind="checkpoint")
        if ckpt.get("tag") != tag or not ckpt.get("meta", {}).get("spec"):
            return None
        spec = ckpt["meta"]["spec"]
        return build_model(spec).to(self.device), spec

    def fit(self, model: nn.Module, schedule, tag: str = "train", spec: dict | None = None,
            callbacks: Sequence[Callback] = (), teacher: nn.Module | None = None,
            optimizer: torch.optim.Optimizer | None = None, dataset=None) -> nn.Module:
        """Run the shared loop over ``schedule.nb_iters`` steps, resuming when asked.

        Checkpoints (tagged with ``tag``) go to ``self.checkpoint_path`` every ``save_step``,
        and the model is evaluated there; only the primary process logs and writes.
        """
        start = time.perf_counter()
        model.to(self.device)
        optimizer = optimizer or self.build_optimizer(model)
        callbacks = [LrScheduleCallback(schedule), *callbacks]
        if teacher is not None:
            callbacks.append(DistillationCallback(teacher, self.cfg.loss_w_dst, self.cfg.tempr_dst))
        start_step = self._maybe_resume(model, optimizer, callbacks, tag)
        if start_step == 0:
            self.mgw.broadcast_parameters(model)
        wrapped = self.mgw.wrap_model(model)
        optimizer = self.mgw.wrap_optimizer(optimizer, model)
        loader = self.train_loader(dataset)
        if self.mgw.is_primary():
            callbacks.append(LoggingCallback(self.cfg.summ_step,
                                             self.helper.global_batch(self.mgw.size()),
                                             self.summary_writer(), prefix=tag))
        trainer = Trainer(wrapped, optimizer, self.helper.calc_loss, loader, schedule.nb_iters,
                          self.device, callbacks, forward=self.helper.forward_train,
                          start_step=start_step)

        def save_and_eval(tr: Trainer, step: int) -> None:
            self.mgw.broadcast_parameters(model)  # identical BN statistics on every rank
            self._save_checkpoint(model, optimizer, callbacks, tag, step, spec)
            metrics = self.run_evaluation(model)
            if self.mgw.is_primary():
                log.info("%s step %d | eval loss = %.4f | eval accuracy = %.4f", tag, step,
                         metrics["loss"], metrics["accuracy"])
                if self._writer is not None:
                    self._writer.add_scalar(f"{tag}/eval_accuracy", metrics["accuracy"], step)

        trainer.callbacks.append(PeriodicCallback(self.cfg.save_step, save_and_eval))
        trainer.fit()
        self.mgw.broadcast_parameters(model)  # rank 0's BN statistics everywhere, once at the end
        self._check_replicas(model, tag)
        self.wall_s[tag] = self.wall_s.get(tag, 0.0) + time.perf_counter() - start
        return model

    def _check_replicas(self, model: nn.Module, tag: str) -> None:
        """After multi-process training every rank must hold the same parameters."""
        if self.mgw.size() == 1:
            return
        if not self.mgw.parameters_identical(unwrap(model)):
            raise RuntimeError(f"{tag}: parameters differ between ranks after training")
        log.info("%s: parameters identical on all %d ranks", tag, self.mgw.size())

    def _save_checkpoint(self, model, optimizer, callbacks, tag, step, spec) -> None:
        if not self.mgw.is_primary():
            return
        save_file(self.checkpoint_path, "checkpoint", {
            "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "step": step,
            "tag": tag,
            "rng": rng_state(),
            "callbacks": [cb.state_dict() for cb in callbacks],
            "meta": {"learner": self.learner_name, "spec": spec, "config": self.run_meta,
                     **self.helper.describe()},
        })

    def _maybe_resume(self, model, optimizer, callbacks, tag) -> int:
        if not (self.cfg.resume and os.path.isfile(self.checkpoint_path)):
            return 0
        ckpt = load_file(self.checkpoint_path, kind="checkpoint")
        if ckpt.get("tag") != tag:
            return 0
        load_weights(model, ckpt["model"], self.checkpoint_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        for callback, state in zip(callbacks, ckpt.get("callbacks", [])):
            callback.load_state_dict(state)
        if self.mgw.is_primary():
            log.info("resumed %s from %s at step %d", tag, self.checkpoint_path, ckpt["step"])
        return int(ckpt["step"])

    def summary_writer(self):
        if self._writer is None and self.cfg.log_dir and self.mgw.is_primary():
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(os.path.join(self.cfg.log_dir, self.learner_name))
        return self._writer

    # -- outputs -----------------------------------------------------------------------------
    def save_artifact(self, model: nn.Module, spec: dict, meta: dict | None = None) -> int | None:
        """Write the final model artifact (primary only); returns its size in bytes."""
        if not model_is_finite(model):
            raise TrainingDivergedError("the model holds NaN/inf values; not saving it "
                                        f"over {self.artifact_path}")
        size = None
        if self.mgw.is_primary():
            size = save_model(self.artifact_path, model, spec,
                              {"learner": self.learner_name, **self.helper.describe(),
                               "produces": sorted(self.result_tags()), "chain": self.chain,
                               **(meta or {})})
        self.mgw.barrier()
        return size

    def model_report(self, model: nn.Module, side: str, report: dict, size: int | None) -> None:
        """Fill FLOPs, parameters, bytes on disk and latency of ``model`` as ``side``."""
        model = unwrap(model)
        report["flops"][side] = count_flops(model, self.helper.input_shape)
        report["params"][side] = count_params(model)
        report["bytes_on_disk"][side] = size
        if self.cfg.report_latency:
            report["latency_ms"][side] = measure_latency(model, self.helper.input_shape)

    def report_sides(self, report: dict, model: nn.Module, size: int | None) -> None:
        """FLOPs, params, bytes and latency of the original (``full``) and of ``model``
        (``compressed``, ``size`` bytes on disk)."""
        self.model_report(self.original(), "full", report, os.path.getsize(self.cfg.save_path_eval))
        self.model_report(model, "compressed", report, size)

    def new_report(self) -> dict:
        return empty_report(self.learner_name, self.helper.model_name, self.helper.dataset_name)

    def result_tags(self) -> frozenset:
        """The properties of this run's result (``produces``; a learner whose result depends on
        its options, e.g. a YAML policy, overrides this). Recorded in the chain."""
        return self.produces

    def finish_report(self, report: dict) -> dict:
        if self.chain:  # the stages before this one, then this one
            report["chain"] = [*self.chain, {
                "learner": self.learner_name, "produces": sorted(self.result_tags()),
                "artifact": self.artifact_path,
                "accuracy": report["accuracy"]["compressed"],
                "flops": report["flops"]["compressed"], "params": report["params"]["compressed"],
                "bytes": report["bytes_on_disk"]["compressed"]}]
        report["wall_s"] = {k: round(v, 2) for k, v in self.wall_s.items()}
        if self.mgw.is_primary():
            write_report(os.path.join(os.path.dirname(self.artifact_path) or ".", "report.json"),
                         report)
            print(format_report(report), flush=True)
        if self._writer is not None:
            self._writer.close()
        return report

    def export_sparse(self, model: nn.Module, spec: dict, report: dict) -> dict:
        """COO and CSR files of a sparse result beside the artifact, each loaded back and
        compared on an eval batch; ``bytes_on_disk.compressed`` becomes the smaller one."""
        from compression.sparse_format import export_sparse_files

        inputs, _ = next(iter(self.eval_loader()))
        files = export_sparse_files(model, spec, os.path.splitext(self.artifact_path)[0],
                                    inputs.to(self.device), {"learner": self.learner_name})
        for layout, f in files.items():
            log.info("sparse %s file %s: %d bytes | round-trip max |diff| = %.1e", layout,
                     f["path"], f["bytes"], f["max_abs_diff"])
        report["sparse_files"] = files
        report["bytes_on_disk"]["compressed"] = min(f["bytes"] for f in files.values())
        return files

    # -- deployment --------------------------------------------------------------------------
    export_kinds: tuple = ("fp32",)  # what this learner's result deploys as (uniform-tf: int8 too)

    def export_formats(self) -> list:
        """The formats of ``--export_format``; an explicit one must be installed (checked when
        the learner is built, before any training)."""
        return formats_for(self.cfg.export_format, self.export_kinds)

    def deploy(self, report: dict, models: dict, formats: list | None = None,
               max_batch: int = 256) -> dict:
        """Export ``models`` (kind -> (model, path stem)) to the chosen formats, each checked
        in its runtime (``deployment.pipeline``); fills ``report["deploy"]`` (and ``report["onnx"]``
        for the fp32 ONNX file). Primary process only. A file that does not reproduce its model
        is kept and recorded with ``parity_ok: false`` and the reason, and logged as an error
        (the model artifact is saved already)."""
        formats = self.export_formats() if formats is None else formats
        if not formats:
            return {}
        start = time.perf_counter()
        example = torch.zeros(2, *self.helper.input_shape)
        batches = eval_batches(self.helper, self.cfg.deploy_eval_batches)
        results = deploy(models, formats, batches, example, max_batch=max_batch)
        self.wall_s["export"] = self.wall_s.get("export", 0.0) + time.perf_counter() - start
        report.setdefault("deploy", {}).update(results)
        onnx = results.get("onnx_fp32") or results.get("onnx_fakequant")
        if onnx is not None:
            report["onnx"] = {key: onnx[key] for key in ("path", "max_abs_diff", "max_abs_output",
                                                         "parity_ok", "bytes")}
        return results

    def deploy_model(self, model: nn.Module, report: dict, kind: str = "fp32") -> dict:
        """The float result beside the artifact (``<artifact stem>.onnx`` / ``.pte``); ``kind``
        ``fakequant`` for a float model with rounded activations (``deployment.verify``)."""
        return self.deploy(report, {kind: (model, os.path.splitext(self.artifact_path)[0])})
