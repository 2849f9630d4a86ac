"""AbstractModelHelper: what a learner needs to know about a (model, dataset) pair.

A ModelHelper builds the model and the datasets, defines the loss and metrics, and owns the
learning-rate schedule. It knows nothing of flags, of distributed training or of compression:
it receives a plain config dataclass, and the learner hands it the number of workers.
Write a subclass for your own net and data (see ``examples/convnet_at_fmnist.py``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from nets.registry import build_from_spec
from utils.config import check, option
from utils.lrn_rate import PiecewiseLr, iters_for_epochs, scaled_lr


@dataclass
class HelperConfig:
    """Data and schedule options shared by every ModelHelper (PocketFlow's names)."""

    data_dir_local: str = option("", "directory holding the dataset files (layouts: README)",
                                 run_only=True)
    batch_size: int = option(128, "training mini-batch size per process")
    batch_size_eval: int = option(100, "evaluation mini-batch size", run_only=True)
    nb_epochs_rat: float = option(1.0, "multiplier on the helper's number of training epochs")
    lrn_rate_init: float = option(0.1, "initial learning rate for a global batch of batch_size_norm")
    batch_size_norm: int = option(128, "global batch size that lrn_rate_init refers to")
    loss_w_dcy: float = option(2e-4, "weight decay (L2) coefficient")
    nb_threads: int = option(0, "data-loading worker processes per training process",
                             run_only=True)

    def __post_init__(self) -> None:
        check(self.batch_size > 0, "batch_size", f"must be positive, got {self.batch_size}")
        check(self.batch_size_eval > 0, "batch_size_eval", "must be positive")
        check(self.nb_epochs_rat > 0, "nb_epochs_rat", f"must be positive, got {self.nb_epochs_rat}")
        check(self.nb_threads >= 0, "nb_threads", "must be >= 0")
        check(self.lrn_rate_init > 0, "lrn_rate_init", f"must be positive, got {self.lrn_rate_init}")
        check(self.batch_size_norm > 0, "batch_size_norm",
              f"must be positive, got {self.batch_size_norm}")
        check(self.loss_w_dcy >= 0, "loss_w_dcy", f"must be >= 0, got {self.loss_w_dcy}")


class AbstractModelHelper(ABC):
    """Model + data + loss + schedule for one (net, dataset) pair."""

    Config: type = HelperConfig
    nb_epochs: float = 100.0              # full training schedule, before nb_epochs_rat
    lr_decay_epochs: tuple = (30, 60, 80)  # piecewise-constant schedule (epochs)
    lr_decay_rates: tuple = (1.0, 0.1, 0.01, 0.001)

    def __init__(self, cfg: HelperConfig | None = None, seed: int = 0) -> None:
        self.cfg = cfg if cfg is not None else self.Config()
        self.seed = seed
        self._nb_smpls_train: int | None = None

    # -- identity --------------------------------------------------------------------------
    @property
    @abstractmethod
    def model_name(self) -> str: ...

    @property
    @abstractmethod
    def dataset_name(self) -> str: ...

    @property
    @abstractmethod
    def num_classes(self) -> int: ...

    @property
    @abstractmethod
    def input_shape(self) -> tuple:
        """(C, H, W) of one evaluation input, used for FLOPs counting, export and latency."""

    # -- model -----------------------------------------------------------------------------
    @abstractmethod
    def net_spec(self) -> dict:
        """Architecture spec (``nets.registry.net_spec``) stored with saved models."""

    def build_model(self) -> nn.Module:
        return build_from_spec(self.net_spec())

    def forward_train(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs)

    def forward_eval(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs)

    def evaluation_begin(self) -> None:
        """Called before each evaluation pass over the eval set (e.g. to open a dump)."""

    def evaluation_end(self) -> None:
        """Called after each evaluation pass, before the metrics are summed over processes."""

    # -- data ------------------------------------------------------------------------------
    @abstractmethod
    def build_dataset_train(self, enbl_trn_val_split: bool = False) -> torch.utils.data.Dataset:
        """The training set; with ``enbl_trn_val_split`` the part not held out for validation."""

    @abstractmethod
    def build_dataset_val(self) -> torch.utils.data.Dataset:
        """A held-out split of the TRAINING data, for searches (RL rewards, sensitivity)."""

    @abstractmethod
    def build_dataset_eval(self) -> torch.utils.data.Dataset:
        """The test/validation set reported as accuracy."""

    @property
    def nb_smpls_train(self) -> int:
        """Training samples (PocketFlow's ``--nb_smpls_train``, counted here)."""
        if self._nb_smpls_train is None:
            self._nb_smpls_train = len(self.build_dataset_train())
        return self._nb_smpls_train

    @property
    def nb_smpls_eval(self) -> int:
        """Evaluation samples (PocketFlow's ``--nb_smpls_eval``)."""
        return len(self.build_dataset_eval())

    @property
    def nb_classes(self) -> int:
        """PocketFlow's name of ``num_classes``."""
        return self.num_classes

    # -- loss and schedule -----------------------------------------------------------------
    def calc_loss(self, labels: torch.Tensor, outputs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Cross-entropy; metrics always hold ``accuracy`` (a 0-d tensor, not synced)."""
        loss = F.cross_entropy(outputs, labels)
        accuracy = (outputs.detach().argmax(dim=1) == labels).float().mean()
        return loss, {"accuracy": accuracy}

    @property
    def weight_decay(self) -> float:
        return self.cfg.loss_w_dcy

    def global_batch(self, nb_workers: int) -> int:
        return self.cfg.batch_size * nb_workers

    def nb_iters_train(self, nb_workers: int) -> int:
        epochs = self.nb_epochs * self.cfg.nb_epochs_rat
        return iters_for_epochs(epochs, self.nb_smpls_train, self.global_batch(nb_workers))

    def lr_schedule(self, nb_workers: int = 1) -> Callable[[int], float]:
        """``step -> lr`` with an ``nb_iters`` attribute; LR scaled by the global batch."""
        global_batch = self.global_batch(nb_workers)
        base = scaled_lr(self.cfg.lrn_rate_init, global_batch, self.cfg.batch_size_norm)
        nb_iters = self.nb_iters_train(nb_workers)
        iters_per_epoch = nb_iters / (self.nb_epochs * self.cfg.nb_epochs_rat)
        boundaries = [int(e * self.cfg.nb_epochs_rat * iters_per_epoch) for e in self.lr_decay_epochs]
        return PiecewiseLr(base, boundaries, self.lr_decay_rates, nb_iters)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "dataset": self.dataset_name,
                "input_shape": list(self.input_shape)}


class _EpochSubset(torch.utils.data.Subset):
    """A Subset that forwards ``set_epoch`` (augmentation seeds) to its dataset."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class ImageClassificationHelper(AbstractModelHelper):
    """A helper whose data is a training set (with a seeded held-out split) and a test set.

    Subclasses implement ``load_train(augment)`` and ``load_eval()``; the split of
    ``nb_smpls_val`` training samples held out for searches is computed once and cached.
    """

    nb_smpls_val: int = 5000

    @abstractmethod
    def load_train(self, augment: bool) -> torch.utils.data.Dataset: ...

    @abstractmethod
    def load_eval(self) -> torch.utils.data.Dataset: ...

    def splits(self) -> dict:
        """``{"train", "train_sub", "val", "test"}`` datasets, built once."""
        if getattr(self, "_splits", None) is None:
            train = self.load_train(augment=True)
            nb_val = min(self.nb_smpls_val, len(train) // 5)
            # a fixed split (not the run seed), so every run is scored on the same samples
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
            val_idx, sub_idx = perm[:nb_val].tolist(), perm[nb_val:].tolist()
            if hasattr(train, "subset"):
                val, sub = train.subset(val_idx, augment=None), train.subset(sub_idx)
            else:
                val = _EpochSubset(self.load_train(augment=False), val_idx)
                sub = _EpochSubset(train, sub_idx)
            self._splits = {"train": train, "train_sub": sub, "val": val, "test": self.load_eval()}
        return self._splits

    def build_dataset_train(self, enbl_trn_val_split: bool = False) -> torch.utils.data.Dataset:
        return self.splits()["train_sub" if enbl_trn_val_split else "train"]

    def build_dataset_val(self) -> torch.utils.data.Dataset:
        return self.splits()["val"]

    def build_dataset_eval(self) -> torch.utils.data.Dataset:
        return self.splits()["test"]
