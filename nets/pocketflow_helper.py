"""PocketFlow's ModelHelper interface, so a PocketFlow helper ports by rewriting its TensorFlow
ops in torch (``docs/migrating.md`` puts the two side by side).

A port subclasses ``PocketFlowModelHelper`` and keeps PocketFlow's method names and arguments:

- ``__init__(data_format, forward_w_labels=False)``: datasets may be built here;
- ``build_dataset_train(enbl_trn_val_split)`` / ``build_dataset_eval()``: a torch ``Dataset``
  of ``(image, label)`` (or a DataLoader over one) instead of a tf.data iterator; ``(train,
  val)`` with the split. Labels may be one-hot, as PocketFlow's ``parse_fn`` makes them;
- ``forward_train(inputs, labels=None)`` / ``forward_eval(inputs)``: ``self.model`` is the
  network being trained or evaluated (TensorFlow's model scope); optional;
- ``calc_loss(labels, outputs, trainable_vars)``: one-hot labels and the trainable parameters,
  weight decay included in the loss as PocketFlow's helpers add it (the optimizer then adds
  none);
- ``setup_lrn_rate(global_step) -> (lrn_rate, nb_iters)`` with numbers for tensors;
- ``warm_start(model)`` (PocketFlow: ``warm_start(sess)``) and ``dump_n_eval(outputs, action)``
  (``'init'``, ``'dump'`` per evaluation batch, ``'eval'``);
- ``model_name``, ``dataset_name``; ``nb_classes`` if the helper has it.

One addition: TensorFlow created the variables inside ``forward_fn``; torch keeps them in a
module, so ``forward_fn``'s layers become an ``nn.Module`` returned by ``build_model()`` (or a
registered net named by ``net_spec()``).

The learners talk to a ``PocketFlowAdapter`` wrapping the port (``framework_helper``); entry
scripts, ``--helper=`` and ``pocketflow_torch.compress`` wrap it themselves.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nets.abstract_model_helper import AbstractModelHelper, HelperConfig
from nets.pocketflow_compat import sync_flags
from nets.registry import build_from_spec
from utils.config import ConfigError, from_flag_dict
from utils.model_io import module_spec

DATA_FORMATS = ("channels_first", "channels_last")


class PocketFlowModelHelper:
    """Base class of a PocketFlow helper ported to torch (see the module's docstring)."""

    Config: type = HelperConfig

    def __init__(self, data_format: str = "channels_first", forward_w_labels: bool = False) -> None:
        if data_format not in DATA_FORMATS:
            raise ConfigError(f"data_format must be one of {', '.join(DATA_FORMATS)}, "
                              f"got {data_format!r}")
        if forward_w_labels:
            raise ConfigError(
                f"{type(self).__name__}: forward_w_labels=True is not supported: the learners "
                "run the network on inputs alone (channel pruning, quantization and the exports "
                "take a one-input model); compute what needs the labels in calc_loss")
        self.data_format, self.forward_w_labels = data_format, forward_w_labels
        if getattr(self, "cfg", None) is None:          # built directly, as in PocketFlow
            self.cfg, self.seed = _config_from_flags(self.Config), 0
        self.model: nn.Module | None = None

    # -- PocketFlow's interface (defaults where PocketFlow had them) -------------------------
    def build_dataset_train(self, enbl_trn_val_split: bool = False):
        raise NotImplementedError(f"{type(self).__name__}.build_dataset_train")

    def build_dataset_eval(self):
        raise NotImplementedError(f"{type(self).__name__}.build_dataset_eval")

    def forward_train(self, inputs: torch.Tensor, labels=None) -> torch.Tensor:
        return self.model(inputs)

    def forward_eval(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def calc_loss(self, labels, outputs, trainable_vars):
        raise NotImplementedError(f"{type(self).__name__}.calc_loss")

    def setup_lrn_rate(self, global_step: int):
        raise NotImplementedError(f"{type(self).__name__}.setup_lrn_rate")

    def build_model(self) -> nn.Module:
        raise NotImplementedError(
            f"{type(self).__name__}.build_model: return the network as an nn.Module (the "
            "layers PocketFlow's forward_fn created), or define net_spec() naming a registered net")

    def warm_start(self, model: nn.Module) -> None:
        """Called on every freshly built network (PocketFlow: ``warm_start(sess)``)."""

    def dump_n_eval(self, outputs, action: str) -> None:
        """``'init'`` before an evaluation, ``'dump'`` per batch, ``'eval'`` after it."""

    @property
    def model_name(self) -> str:
        raise NotImplementedError(f"{type(self).__name__}.model_name")

    @property
    def dataset_name(self) -> str:
        raise NotImplementedError(f"{type(self).__name__}.dataset_name")


def _config_from_flags(config_cls: type):
    """The options as absl's FLAGS hold them once parsed (a port built the PocketFlow way,
    after the command line), else the defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        return config_cls()
    return from_flag_dict(config_cls, flags.FLAGS.flag_values_dict())


def _overrides(obj, name: str) -> bool:
    return getattr(type(obj), name) is not getattr(PocketFlowModelHelper, name)


class _ClassLabels(Dataset):
    """A port's dataset with one-hot labels given as class indices (what every learner,
    sampler and accuracy count here expects); ``calc_loss`` turns them back into one-hot."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        inputs, label = self.dataset[index]
        if isinstance(label, torch.Tensor) and label.dim() > 0:
            label = int(label.argmax())
        return inputs, int(label)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def _as_dataset(data, where: str) -> Dataset:
    if isinstance(data, DataLoader):
        data = data.dataset
    if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        raise ConfigError(
            f"{where} returned a {type(data).__name__}: return a torch Dataset of (image, label) "
            "(__len__ and __getitem__) or a DataLoader over one; a PocketFlow tf.data iterator "
            "becomes a Dataset whose __getitem__ is its parse_fn (the learners shard, shuffle, "
            "batch and seed it)")
    return _ClassLabels(data)


class _PocketFlowLr:
    """``step -> lr`` from the port's ``setup_lrn_rate`` (its ``nb_iters`` read once)."""

    def __init__(self, port: PocketFlowModelHelper) -> None:
        self.port = port
        self.nb_iters = int(_number(port.setup_lrn_rate(0)[1], "setup_lrn_rate's nb_iters"))

    def __call__(self, step: int) -> float:
        return float(_number(self.port.setup_lrn_rate(int(step))[0], "setup_lrn_rate's lrn_rate"))


def _number(value, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (int, float)):
        return value
    raise ConfigError(f"{what} must be a number, got {type(value).__name__}")


class PocketFlowAdapter(AbstractModelHelper):
    """The framework's helper interface on top of a ``PocketFlowModelHelper`` port."""

    port_class: type = PocketFlowModelHelper
    Config = HelperConfig

    def __init__(self, cfg: HelperConfig | None = None, seed: int = 0,
                 port: PocketFlowModelHelper | None = None) -> None:
        super().__init__(cfg if cfg is not None else (port.cfg if port else self.Config()), seed)
        sync_flags(self.cfg)
        if port is None:            # PocketFlow's constructor, with the options already in place
            port = self.port_class.__new__(self.port_class)
            port.cfg, port.seed = self.cfg, seed
            port.__init__()
        self.port, self._data, self._evaluating = port, {}, False
        self._input_shape = self._classes = self._module_spec = None

    # -- identity ------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.port.model_name

    @property
    def dataset_name(self) -> str:
        return self.port.dataset_name

    @property
    def input_shape(self) -> tuple:
        if self._input_shape is None:
            self._input_shape = tuple(self.build_dataset_eval()[0][0].shape)
        return self._input_shape

    @property
    def num_classes(self) -> int:
        if self._classes is None:
            classes = getattr(self.port, "nb_classes", None)
            if not isinstance(classes, int):
                model = self.build_model().eval()
                with torch.no_grad():
                    classes = int(model(torch.zeros(1, *self.input_shape)).shape[-1])
            self._classes = classes
        return self._classes

    # -- model ---------------------------------------------------------------------------
    def net_spec(self) -> dict:
        if hasattr(self.port, "net_spec"):
            return self.port.net_spec()
        if self._module_spec is None:     # the module's class: one build, not one per call
            self._module_spec = module_spec(self.port.build_model())
        return dict(self._module_spec)

    def build_model(self) -> nn.Module:
        model = (build_from_spec(self.port.net_spec()) if hasattr(self.port, "net_spec")
                 else self.port.build_model())
        self.port.warm_start(model)
        return model

    @contextmanager
    def _bound(self, model: nn.Module):
        previous, self.port.model = self.port.model, model
        try:
            yield
        finally:
            self.port.model = previous

    def forward_train(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        self._last_model = model
        with self._bound(model):
            return self.port.forward_train(inputs)

    def forward_eval(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        self._last_model = model
        with self._bound(model):
            outputs = self.port.forward_eval(inputs)
        if self._evaluating:
            self.port.dump_n_eval(outputs, "dump")
        return outputs

    def evaluation_begin(self) -> None:
        self._evaluating = _overrides(self.port, "dump_n_eval")
        if self._evaluating:
            self.port.dump_n_eval(None, "init")

    def evaluation_end(self) -> None:
        if self._evaluating:
            self.port.dump_n_eval(None, "eval")
        self._evaluating = False

    # -- data ----------------------------------------------------------------------------
    def _train(self, split: bool):
        if split not in self._data:
            got = self.port.build_dataset_train(enbl_trn_val_split=split)
            where = f"{type(self.port).__name__}.build_dataset_train({split})"
            if split:
                if not (isinstance(got, (tuple, list)) and len(got) == 2):
                    raise ConfigError(f"{where} must return (train, val) as PocketFlow's did")
                got = tuple(_as_dataset(d, where) for d in got)
            else:
                got = _as_dataset(got, where)
            self._data[split] = got
        return self._data[split]

    def build_dataset_train(self, enbl_trn_val_split: bool = False) -> Dataset:
        return self._train(True)[0] if enbl_trn_val_split else self._train(False)

    def build_dataset_val(self) -> Dataset:
        return self._train(True)[1]

    def build_dataset_eval(self) -> Dataset:
        if "eval" not in self._data:
            self._data["eval"] = _as_dataset(self.port.build_dataset_eval(),
                                             f"{type(self.port).__name__}.build_dataset_eval()")
        return self._data["eval"]

    # -- loss and schedule -----------------------------------------------------------------
    def calc_loss(self, labels: torch.Tensor, outputs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        one_hot = F.one_hot(labels.long(), outputs.shape[-1]).to(outputs.dtype)
        model = getattr(self, "_last_model", None)
        params = [p for p in model.parameters() if p.requires_grad] if model is not None else []
        loss, metrics = self.port.calc_loss(one_hot, outputs, params)
        metrics = {k: torch.as_tensor(v) for k, v in dict(metrics or {}).items()}
        if "accuracy" not in metrics:
            metrics["accuracy"] = (outputs.detach().argmax(dim=1) == labels).float().mean()
        return loss, metrics

    @property
    def weight_decay(self) -> float:
        return 0.0      # the port's calc_loss adds its own (PocketFlow's loss_w_dcy term)

    def lr_schedule(self, nb_workers: int = 1) -> _PocketFlowLr:
        return _PocketFlowLr(self.port)

    def nb_iters_train(self, nb_workers: int) -> int:
        return self.lr_schedule(nb_workers).nb_iters


@lru_cache(maxsize=None)
def _adapter_for(port_class: type) -> type:
    return type(f"{port_class.__name__}Adapter", (PocketFlowAdapter,),
                {"port_class": port_class, "Config": port_class.Config,
                 "__module__": port_class.__module__,
                 "__doc__": f"The framework's view of {port_class.__qualname__}."})


def framework_helper(helper):
    """The helper the learners use: a ``PocketFlowModelHelper`` class or instance wrapped in
    its adapter; anything else unchanged."""
    if isinstance(helper, type) and issubclass(helper, PocketFlowModelHelper):
        return _adapter_for(helper)
    if isinstance(helper, PocketFlowModelHelper):
        return _adapter_for(type(helper))(helper.cfg, getattr(helper, "seed", 0), port=helper)
    return helper
