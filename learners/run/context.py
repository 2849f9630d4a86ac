"""What the runner gives a learner: device, processes, data, the one training loop (with
checkpoints, resume and NaN checks), evaluation, the teacher, the original model and rank-0
searches. A learner never reads flags, paths of other learners or the report.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from training.callbacks import LoggingCallback, LrScheduleCallback
from learners.run.checkpointing import CheckpointCallback, restore, save_checkpoint
from learners.config import LearnerConfig
from training.distillation import DistillationCallback
from learners.run.resume import check_resumable, stamp
from training.trainer import AMP_DTYPES, Callback, Trainer, TrainingDivergedError, set_memory_format
from utils import cpu_share
from utils.checkpoint import load_file
from utils.data_loading import make_eval_loader, make_train_loader
from compression.artifacts import build_model
from utils.model_io import unwrap
from utils.stopping import phase as in_phase
from utils.multi_gpu_wrapper import MultiGpuWrapper

log = logging.getLogger("pocketflow")


@dataclass
class Context:
    """Services of one learner's run. ``checkpoint`` is the learner's resumable state file
    (other state files go beside it: ``state_path``); ``settings`` and ``learner`` stamp every
    state file so that ``--resume`` can check it (``learners.run.resume``)."""

    helper: object                       # nets.abstract_model_helper.AbstractModelHelper
    cfg: LearnerConfig
    mgw: MultiGpuWrapper
    learner: str
    checkpoint: str
    settings: dict
    original: Callable[[], nn.Module]     # the full model (reference of the report)
    make_teacher: Callable[[], nn.Module | None]
    outputs: object = None                # learners.run.outputs.Outputs of the learner's artifact
    base: nn.Module | None = None         # the base a spec of an unregistered net builds on
    wall_s: dict = field(default_factory=dict)
    writer: object = None                 # TensorBoard SummaryWriter (primary) or None
    _eval_loader: object = None

    @property
    def device(self) -> torch.device:
        return self.mgw.device(self.cfg.device)

    @property
    def seed(self) -> int:
        return self.cfg.seed

    def write_sparse_copies(self, result, report) -> None:
        """COO and CSR files of a sparse result beside its artifact, each loaded back and
        compared on an eval batch; the smaller one is the compressed side's bytes on disk
        (primary process, from ``Learner.finish``)."""
        inputs, _ = next(iter(self.eval_loader()))
        files = self.outputs.export_sparse(result.model, result.spec, inputs.to(self.device),
                                           {"learner": self.learner}, self.base)
        report.add("sparse_files", files)
        report.bytes_on_disk.compressed = min(f["bytes"] for f in files.values())

    # -- data ----------------------------------------------------------------------------
    def train_loader(self, dataset=None, batch_size: int | None = None):
        dataset = dataset if dataset is not None else self.helper.build_dataset_train()
        return make_train_loader(dataset, batch_size or self.helper.cfg.batch_size,
                                 rank=self.mgw.rank(), world_size=self.mgw.size(),
                                 seed=self.cfg.seed, nb_threads=self.helper.cfg.nb_threads)

    def eval_loader(self):
        if self._eval_loader is None:
            self._eval_loader = make_eval_loader(self.helper.build_dataset_eval(),
                                                 self.helper.cfg.batch_size_eval, self.mgw.rank(),
                                                 self.mgw.size(), self.helper.cfg.nb_threads)
        return self._eval_loader

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
        """Cached batches for a search's rewards: ``nb_train`` from the training set without its
        held-out split, and up to ``nb_val`` from that held-out split."""
        train = self.cached_batches(self.helper.build_dataset_train(enbl_trn_val_split=True),
                                    max(1, nb_train))
        val = []
        for inputs, labels in make_eval_loader(self.helper.build_dataset_val(),
                                               self.helper.cfg.batch_size_eval):
            val.append((inputs.to(self.device), labels.to(self.device)))
            if len(val) >= nb_val:
                break
        return train, val

    # -- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader=None, local: bool = False) -> dict:
        """Mean loss and accuracy over the WHOLE eval set (shards summed over processes);
        ``local``: this process's ``loader`` only, no collective (a rank-0 search)."""
        model = unwrap(model)
        was_training = model.training
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, correct, n
        self.helper.evaluation_begin()
        for inputs, labels in loader or self.eval_loader():
            cpu_share.poll()
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            outputs = self.helper.forward_eval(model, inputs)
            loss, metrics = self.helper.calc_loss(labels, outputs)
            n = labels.numel()
            sums += torch.stack([loss.double() * n, metrics["accuracy"].double() * n,
                                 torch.tensor(float(n), dtype=torch.float64, device=self.device)])
        self.helper.evaluation_end()
        model.train(was_training)
        if not local:
            sums = self.mgw.allreduce(sums)
        count = max(float(sums[2]), 1.0)
        return {"loss": float(sums[0]) / count, "accuracy": float(sums[1]) / count}

    def accuracy(self, model: nn.Module) -> float:
        return self.evaluate(model)["accuracy"]

    # -- training ------------------------------------------------------------------------
    def teacher(self) -> nn.Module | None:
        """The distillation teacher of a fine-tuning (None without ``--enbl_dst``)."""
        return self.make_teacher()

    def optimizer(self, model: nn.Module, lr: float = 0.0) -> torch.optim.Optimizer:
        """Momentum SGD with the helper's weight decay (lr is set by the schedule)."""
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=self.cfg.momentum,
                               weight_decay=self.helper.weight_decay)

    def fit(self, model: nn.Module, schedule, tag: str = "train", spec: dict | None = None,
            callbacks: Sequence[Callback] = (), teacher: nn.Module | None = None,
            optimizer: torch.optim.Optimizer | None = None, dataset=None) -> nn.Module:
        """The one training loop over ``schedule.nb_iters`` steps, resuming when asked.

        Every ``save_step`` the model is evaluated and, when that is finite, checkpointed (tag
        ``tag``, architecture ``spec``); only the primary process logs and writes."""
        start = time.perf_counter()
        model.to(self.device)
        optimizer = optimizer or self.optimizer(model)
        callbacks = [LrScheduleCallback(schedule), *callbacks]
        if teacher is not None:
            callbacks.append(DistillationCallback(teacher, self.cfg.loss_w_dst, self.cfg.tempr_dst))
        ckpt = self.resume_state(self.checkpoint, "checkpoint")
        start_step = 0
        if ckpt is not None and ckpt.get("tag") == tag:   # another tag: another stage, start it
            start_step = restore(ckpt, model, optimizer, callbacks, self.checkpoint)
            if self.mgw.is_primary():
                log.info("resumed %s from %s at step %d", tag, self.checkpoint, start_step)
        else:
            self.mgw.broadcast_parameters(model)
        if self.cfg.channels_last:   # before DDP wraps it: its gradient buckets copy the strides
            set_memory_format(model, torch.channels_last)
        wrapped = self.mgw.wrap_model(model)
        optimizer = self.mgw.wrap_optimizer(optimizer, model)
        loader = self.train_loader(dataset)
        if self.mgw.is_primary():
            callbacks.append(LoggingCallback(self.cfg.summ_step,
                                             self.helper.global_batch(self.mgw.size()),
                                             self.writer, prefix=tag))
        meta = {**self.state_meta(), "spec": spec, **self.helper.describe()}

        def save(payload: dict) -> None:
            if self.mgw.is_primary():
                save_checkpoint(self.checkpoint, payload, meta)

        def logged(step: int, metrics: dict) -> None:
            if self.mgw.is_primary():
                log.info("%s step %d | eval loss = %.4f | eval accuracy = %.4f", tag, step,
                         metrics["loss"], metrics["accuracy"])
                if self.writer is not None:
                    self.writer.add_scalar(f"{tag}/eval_accuracy", metrics["accuracy"], step)

        checkpoints = CheckpointCallback(self.cfg.save_step, model, optimizer, callbacks, tag,
                                         self.evaluate, save, self.mgw.broadcast_parameters,
                                         logged, last_saved=start_step or None)
        trainer = Trainer(wrapped, optimizer, self.helper.calc_loss, loader, schedule.nb_iters,
                          self.device, [*callbacks, checkpoints], forward=self.helper.forward_train,
                          start_step=start_step,
                          check_every=self.cfg.nan_check_step or self.cfg.summ_step,
                          reduce=self.mgw.allreduce if self.mgw.size() > 1 else None,
                          channels_last=self.cfg.channels_last,
                          amp_dtype=AMP_DTYPES[self.cfg.amp_dtype], compile=self.cfg.compile)
        try:
            with in_phase(tag):
                trainer.fit()
        except TrainingDivergedError as exc:
            kept = (f"the last good checkpoint (step {checkpoints.last_saved}) is kept at "
                    f"{self.checkpoint}" if checkpoints.last_saved
                    else "no checkpoint of this training was written")
            raise TrainingDivergedError(
                f"{tag}: {exc}; {kept}. Lower the learning rate (--lrn_rate_init, or the "
                "learner's own) or check the data.", exc.step) from None
        self.mgw.broadcast_parameters(model)  # rank 0's BN statistics everywhere, once at the end
        self._check_replicas(model, tag)
        self.wall_s[tag] = self.wall_s.get(tag, 0.0) + time.perf_counter() - start
        return model

    def _check_replicas(self, model: nn.Module, tag: str) -> None:
        """After multi-process training every process must hold the same parameters."""
        if self.mgw.size() == 1:
            return
        if not self.mgw.parameters_identical(unwrap(model)):
            raise RuntimeError(f"{tag}: parameters differ between ranks after training")
        log.info("%s: parameters identical on all %d ranks", tag, self.mgw.size())

    def short_finetune(self, model: nn.Module, batches: list, lr: float, nb_iters: int) -> None:
        """A few Adam steps over cached ``(inputs, labels)`` batches in this process only (the
        fast fine-tune of a search's reward; the same loop, no checkpoints or logs)."""
        if nb_iters <= 0:
            return
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        Trainer(model, optimizer, self.helper.calc_loss, batches, nb_iters, self.device,
                forward=self.helper.forward_train).fit()

    def local_retrain(self, model: nn.Module) -> None:
        """Momentum SGD on the helper's schedule over this process's share of the training
        set, no checkpoints or logs (a retraining inside a selection on the primary process)."""
        schedule = self.helper.lr_schedule(1)
        Trainer(model, self.optimizer(model), self.helper.calc_loss, self.train_loader(),
                schedule.nb_iters, self.device, [LrScheduleCallback(schedule)],
                forward=self.helper.forward_train).fit()

    @contextlib.contextmanager
    def timed(self, phase: str):
        """Adds the wall time of the block to the report's ``wall_s[phase]``."""
        start = time.perf_counter()
        with in_phase(phase):
            yield
        self.wall_s[phase] = self.wall_s.get(phase, 0.0) + time.perf_counter() - start

    # -- rank 0 --------------------------------------------------------------------------
    def on_primary(self, compute):
        """``compute()`` on the primary process only; every process returns its result."""
        return self.mgw.broadcast_object(compute() if self.mgw.is_primary() else None)

    def search(self, make_env, ddpg_cfg, nb_rlouts: int, nb_rlouts_min: int,
               keep_top: int = 1) -> tuple[dict, dict]:
        """DDPG strategy search (``learners.search.search``) on the primary process only; every
        process receives ``(best, section)``: the ``info`` of the best roll-out (``"top"``: the
        infos of the best ``keep_top``, best first) and the report's ``search`` section. The
        search checkpoints to ``search.pt`` beside the checkpoint and resumes with ``--resume``."""
        from learners.search.search import run_search

        path = self.state_path("search.pt")

        def search() -> dict:
            result = run_search(make_env(), ddpg_cfg, nb_rlouts, nb_rlouts_min, seed=self.cfg.seed,
                                checkpoint_path=path, resumed=self.resume_state(path, "search"),
                                meta=self.state_meta(), keep_top=keep_top)
            return {"best": result.best, "reward": result.best_reward,
                    "history": result.history, "top": [info for _, info in result.top],
                    "kept_baseline": result.kept_baseline,
                    "seconds_per_rollout": result.seconds_per_rollout}

        with self.timed("search"):
            payload = self.on_primary(search)
        best, top = payload.pop("best"), payload.pop("top")
        section = {**payload, **{k: v for k, v in best.items() if not isinstance(v, list)}}
        return {**best, "top": top}, section

    # -- state files ---------------------------------------------------------------------
    def state_path(self, name: str) -> str:
        """A state file of this learner beside its checkpoint."""
        return os.path.join(os.path.dirname(self.checkpoint) or ".", name)

    def state_meta(self) -> dict:
        """``meta`` entries of every resumable file (checked by ``resume_state``)."""
        return stamp(self.learner, self.settings)

    def resume_state(self, path: str, kind: str) -> dict | None:
        """With ``--resume``, the state file at ``path`` (None when absent), refused when it
        belongs to another learner or was written with other settings."""
        if not (self.cfg.resume and os.path.isfile(path)):
            return None
        obj = load_file(path, kind=kind)
        check_resumable(obj, path, self.learner, self.settings)
        return obj

    def resumed_architecture(self, tag: str) -> tuple[nn.Module, dict] | None:
        """With ``--resume``, the architecture of an interrupted ``fit`` of ``tag`` whose model
        differs from the start (thinned): ``(model, spec)``; ``fit`` then restores its weights,
        optimizer and step from the same checkpoint."""
        ckpt = self.resume_state(self.checkpoint, "checkpoint")
        if ckpt is None or ckpt.get("tag") != tag or not ckpt.get("meta", {}).get("spec"):
            return None
        spec = ckpt["meta"]["spec"]
        return build_model(spec, base=self.base).to(self.device), spec
