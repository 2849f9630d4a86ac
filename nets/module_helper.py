"""A ModelHelper for any ``nn.Module`` and datasets, built by the Python API (``learners.api``).

``ModuleHelper.for_module(model, train, eval)`` needs no subclass and no registered net: the
input shape comes from the first training sample, the number of classes from the model's
output, the architecture spec is ``utils.model_io.module_spec`` (artifacts rebuild from an
instance of the model's class), and the loss is cross-entropy unless a ``loss_fn(outputs,
labels)`` is given. A fixed share of the training set is held out for searches
(``ImageClassificationHelper``). The learning rate follows a cosine decay over the run.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from nets.abstract_model_helper import HelperConfig, ImageClassificationHelper
from utils.config import ConfigError, option
from utils.lrn_rate import CosineLr, scaled_lr
from utils.model_io import module_spec


@dataclass
class ModuleConfig(HelperConfig):
    lrn_rate_init: float = option(0.01, "initial learning rate (fine-tuning a trained model)")
    batch_size_norm: int = option(128, "global batch size that lrn_rate_init refers to")
    epochs: float = option(10.0, "training epochs of a fine-tuning (full-prec: of the training)")


class ModuleHelper(ImageClassificationHelper):
    Config = ModuleConfig

    def __init__(self, cfg: ModuleConfig, model: nn.Module, train: Dataset, evaluation: Dataset,
                 seed: int = 0, loss_fn: Callable | None = None, name: str = "",
                 dataset_name: str = "data", spec: dict | None = None) -> None:
        super().__init__(cfg, seed)
        self.model, self.train, self.evaluation = model, train, evaluation
        self.loss_fn, self.spec = loss_fn, spec
        self._name, self._dataset_name = name or type(model).__name__.lower(), dataset_name
        self.nb_epochs = float(cfg.epochs)
        self._shape = _single_input_shape(model, train)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            self._classes = int(model(torch.zeros(1, *self._shape, device=device)).shape[-1])
        model.train(was_training)

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def dataset_name(self) -> str:
        return self._dataset_name

    @property
    def num_classes(self) -> int:
        return self._classes

    @property
    def input_shape(self) -> tuple:
        return self._shape

    def net_spec(self) -> dict:
        return self.spec or module_spec(self.model)

    def build_model(self) -> nn.Module:
        return copy.deepcopy(self.model)

    def load_train(self, augment: bool) -> Dataset:
        return self.train

    def load_eval(self) -> Dataset:
        return self.evaluation

    def calc_loss(self, labels: torch.Tensor, outputs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self.loss_fn is None:
            return super().calc_loss(labels, outputs)
        accuracy = (outputs.detach().argmax(dim=1) == labels).float().mean()
        return self.loss_fn(outputs, labels), {"accuracy": accuracy}

    def lr_schedule(self, nb_workers: int = 1):
        global_batch = self.global_batch(nb_workers)
        return CosineLr(scaled_lr(self.cfg.lrn_rate_init, global_batch, self.cfg.batch_size_norm),
                        self.nb_iters_train(nb_workers))


def _single_input_shape(model: nn.Module, train: Dataset) -> tuple:
    """The shape of one training input; a model or data with several inputs is refused by
    name (every learner, export and tool takes one input tensor)."""
    item = train[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ConfigError(f"training items must be (input, label) pairs; item 0 of "
                          f"{type(train).__name__} is a {type(item).__name__} of "
                          f"{len(item) if isinstance(item, (tuple, list)) else 1} element(s)")
    required = [p.name for p in inspect.signature(model.forward).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if isinstance(item[0], (tuple, list, dict)) or len(required) > 1:
        raise ConfigError(
            f"{type(model).__name__}.forward takes several inputs ({', '.join(required)}) or the "
            f"data gives them ((x1, x2, ...), y): models with several inputs are not supported "
            "(the channel graph, the exports and the tools take one tensor); wrap the model in "
            "a module whose forward takes one tensor (e.g. the inputs concatenated along a dim)")
    if not isinstance(item[0], torch.Tensor):
        raise ConfigError(f"training inputs must be tensors; item 0's input is a "
                          f"{type(item[0]).__name__}")
    return tuple(item[0].shape)
