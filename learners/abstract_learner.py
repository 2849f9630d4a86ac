"""AbstractLearner: what every learner shares (data, optimizer, the loop, saving, reports).

A learner knows the ModelHelper interface, never a particular net, and never reads flags: it
receives the common ``LearnerConfig``, its own options dataclass and a MultiGpuWrapper.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import nn

from datasets.errors import DataError
from deployment.formats import formats_for
from deployment.pipeline import deploy, eval_batches
from learners import composition
from learners.callbacks import LoggingCallback, LrScheduleCallback, PeriodicCallback
from learners.config import LearnerConfig
from learners.distillation import DistillationCallback
from learners.registry import learner_class
from learners.resume import check_resumable, stamp
from learners.trainer import Callback, Trainer, TrainingDivergedError, model_is_finite
from nets.abstract_model_helper import AbstractModelHelper
from utils.checkpoint import CheckpointError, load_file, rng_state, save_file, set_rng_state
from utils.config import settings
from utils.data_loading import check_one_batch, make_eval_loader, make_train_loader
from utils.model_io import build_model, load_model, load_weights, save_model, unwrap
from utils.model_stats import count_flops, count_params, measure_latency
from utils.multi_gpu_wrapper import MultiGpuWrapper, SingleProcess
from utils.report import empty_report, format_report, write_report
from utils.run_lock import RunLock, RunLockedError

log = logging.getLogger("pocketflow")
# Files derived from an artifact ``<stem>.<ext>``: exports and sparse/packed copies. A run that
# replaces the artifact removes the previous run's ones first, so none is left stale.
DERIVED_SUFFIXES = (".onnx", ".pte", ".pt2", "_fp32.onnx", "_fp32.pte", ".coo.pt", ".csr.pt",
                    ".quant.pt")


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
        # the options that decide what this run computes: a resumed run must share them
        self.run_settings = settings((cfg, ""), (helper.cfg, ""),
                                     (own_cfg, getattr(type(self), "flag_prefix", "")))
        self.lock: RunLock | None = None  # the run's output-directory lock (launch.run)
        self._outputs_begun = False       # remove_stale_outputs ran
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

    def output_dirs(self) -> list[str]:
        """The directories this learner writes to: its checkpoint's, its artifact's and those
        of its own ``*save_path*`` options (the run holds a lock on each, ``utils.run_lock``)."""
        paths = [self.checkpoint_path, self.artifact_path]
        if self.own_cfg is not None:
            paths += [getattr(self.own_cfg, name) for name in vars(self.own_cfg)
                      if "save_path" in name and getattr(self.own_cfg, name)]
        return sorted({os.path.dirname(os.path.abspath(p)) for p in paths})

    def resume_files(self) -> list[tuple[str, str]]:
        """``(path, kind)`` of every state file ``--resume`` continues from."""
        return [(self.checkpoint_path, "checkpoint"), (self.search_path, "search")]

    def preflight(self) -> None:
        """Checks that need no training, before anything is written: every resumable file
        belongs to this learner and these settings; the data give one batch per process."""
        for path, kind in self.resume_files():
            self.resume_state(path, kind)
        check_one_batch(len(self.helper.build_dataset_train()), self.helper.cfg.batch_size,
                        self.mgw.size())
        if len(self.helper.build_dataset_eval()) == 0:
            raise DataError("the evaluation set is empty: no accuracy could be measured; check "
                            "--data_dir_local and the helper's load_eval / build_dataset_eval")

    def resume_state(self, path: str, kind: str) -> dict | None:
        """With ``--resume``, the state file at ``path`` (None when absent), refused when it
        belongs to another learner or was written with other settings (``learners.resume``)."""
        if not (self.cfg.resume and os.path.isfile(path)):
            return None
        obj = load_file(path, kind=kind)
        check_resumable(obj, path, self.learner_name, self.run_settings)
        return obj

    def state_meta(self) -> dict:
        """``meta`` entries of every resumable file this learner writes."""
        return stamp(self.learner_name, self.run_settings)

    @property
    def search_path(self) -> str:
        """A strategy search's resumable state, beside the training checkpoint."""
        return os.path.join(os.path.dirname(self.checkpoint_path) or ".", "search.pt")

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
            result = run_search(make_env(), self.own_cfg.ddpg, nb_rlouts, nb_rlouts_min,
                                seed=self.cfg.seed, checkpoint_path=self.search_path,
                                resumed=self.resume_state(self.search_path, "search"),
                                meta=self.state_meta(), keep_top=keep_top)
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
            self.lock_more(full_prec.output_dirs())
            full_prec.preflight()
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

    def lock_more(self, directories: list[str]) -> None:
        """Add ``directories`` to this run's lock (a pre-training writes the full model's)."""
        if self.lock is None:
            return
        error = None
        if self.mgw.is_primary():
            try:
                self.lock.add(directories)
            except RunLockedError as exc:
                error = str(exc)
        error = self.mgw.broadcast_object(error)
        if error:
            raise RunLockedError(error)

    def original(self) -> nn.Module:
        """The full-precision model of ``--save_path_eval`` (the reference of every report)."""
        if self._original is None:
            self._original, _ = self.load_pretrained()
        return self._original

    def resumed_architecture(self, tag: str) -> tuple[nn.Module, dict] | None:
        """With ``--resume``, the architecture of an interrupted ``fit`` of ``tag`` whose model
        differs from the start (thinned): ``(model, spec)`` from the checkpoint's spec; ``fit``
        then restores its weights, optimizer and step from the same checkpoint."""
        ckpt = self.resume_state(self.checkpoint_path, "checkpoint")
        if ckpt is None or ckpt.get("tag") != tag or not ckpt.get("meta", {}).get("spec"):
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
        last_saved = start_step or None   # the step of the last good checkpoint of this fit
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
                          start_step=start_step,
                          check_every=self.cfg.nan_check_step or self.cfg.summ_step,
                          reduce=self.mgw.allreduce if self.mgw.size() > 1 else None)

        def save_and_eval(tr: Trainer, step: int) -> None:
            nonlocal last_saved
            self.mgw.broadcast_parameters(model)  # identical BN statistics on every rank
            metrics = self.run_evaluation(model)  # first: only a model that evaluates is saved
            if not math.isfinite(metrics["loss"]):
                raise TrainingDivergedError(
                    f"at step {step} the model evaluates to a NaN or infinite loss (its weights "
                    "exploded); stopped without saving it", step)
            self._save_checkpoint(model, optimizer, callbacks, tag, step, spec)
            last_saved = step
            if self.mgw.is_primary():
                log.info("%s step %d | eval loss = %.4f | eval accuracy = %.4f", tag, step,
                         metrics["loss"], metrics["accuracy"])
                if self._writer is not None:
                    self._writer.add_scalar(f"{tag}/eval_accuracy", metrics["accuracy"], step)

        trainer.callbacks.append(PeriodicCallback(self.cfg.save_step, save_and_eval))
        try:
            trainer.fit()
        except TrainingDivergedError as exc:
            kept = (f"the last good checkpoint (step {last_saved}) is kept at {self.checkpoint_path}"
                    if last_saved else "no checkpoint of this training was written")
            raise TrainingDivergedError(
                f"{tag}: {exc}; {kept}. Lower the learning rate (--lrn_rate_init, or the "
                "learner's own) or check the data.", exc.step) from None
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
            "meta": {**self.state_meta(), "spec": spec, "config": self.run_meta,
                     **self.helper.describe()},
        })

    def _maybe_resume(self, model, optimizer, callbacks, tag) -> int:
        ckpt = self.resume_state(self.checkpoint_path, "checkpoint")
        if ckpt is None or ckpt.get("tag") != tag:  # another stage of this learner: start it
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
            self.remove_stale_outputs()
            size = save_model(self.artifact_path, model, spec,
                              {"learner": self.learner_name, **self.helper.describe(),
                               "produces": sorted(self.result_tags()), "chain": self.chain,
                               **(meta or {})})
        self.mgw.barrier()
        return size

    def derived_paths(self) -> list[str]:
        """Every file derived from the artifact, and the report beside it."""
        stem = os.path.splitext(self.artifact_path)[0]
        return [stem + suffix for suffix in DERIVED_SUFFIXES] + [self.report_path]

    @property
    def report_path(self) -> str:
        return os.path.join(os.path.dirname(self.artifact_path) or ".", "report.json")

    def output_stem(self) -> str:
        """``<artifact without extension>``, the stem of every file derived from the artifact;
        asking for it starts this run's outputs (``remove_stale_outputs``)."""
        self.remove_stale_outputs()
        return os.path.splitext(self.artifact_path)[0]

    def remove_stale_outputs(self) -> None:
        """Before this run writes its first output beside the artifact: remove the files a
        previous run derived from it (exports, sparse/packed copies, its report), so that every
        file beside the new artifact comes from this run (primary process only; later calls do
        nothing). A run that fails before writing any output leaves the previous ones whole."""
        if self._outputs_begun:
            return
        self._outputs_begun = True
        for path in self.derived_paths():
            if os.path.abspath(path) != os.path.abspath(self.artifact_path) and os.path.isfile(path):
                os.remove(path)
                log.info("removed %s, written by the previous run of this artifact", path)

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
            report["files"] = files_with_digests([self.artifact_path, *self.derived_paths()[:-1]])
            write_report(self.report_path, report)
            print(format_report(report), flush=True)
        if self._writer is not None:
            self._writer.close()
        return report

    def export_sparse(self, model: nn.Module, spec: dict, report: dict) -> dict:
        """COO and CSR files of a sparse result beside the artifact, each loaded back and
        compared on an eval batch; ``bytes_on_disk.compressed`` becomes the smaller one."""
        from compression.sparse_format import export_sparse_files

        inputs, _ = next(iter(self.eval_loader()))
        files = export_sparse_files(model, spec, self.output_stem(),
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
        return self.deploy(report, {kind: (model, self.output_stem())})


def files_with_digests(paths: list[str]) -> dict:
    """``{path: {"bytes", "sha256"}}`` of the files of ``paths`` that exist."""
    import hashlib

    files = {}
    for path in paths:
        if os.path.isfile(path):
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            files[path] = {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}
    return files
