"""What a ported PocketFlow helper imports besides torch: PocketFlow's ``mgw`` and its
learning-rate utilities, with PocketFlow's names and arguments (``docs/migrating.md``).

PocketFlow's helpers read their options from ``tf.app.flags.FLAGS``; in a port that is
``absl.flags.FLAGS`` (the same API: ``flags.DEFINE_integer(...)``, ``FLAGS.batch_size``). The
entry script parses it; ``sync_flags`` fills it from a config when a helper is built in Python
(``pocketflow_torch.compress``) so the same code runs both ways.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence


class mgw:  # noqa: N801 -- PocketFlow's name (``from utils.multi_gpu_wrapper import MultiGpuWrapper as mgw``)
    """PocketFlow's ``MultiGpuWrapper`` class methods a helper calls, read from the launcher's
    environment (torchrun's ``WORLD_SIZE``/``RANK``..., horovodrun's ``HOROVOD_SIZE``...);
    1 process when neither launched this one."""

    @staticmethod
    def _env(*names: str, default: int) -> int:
        for name in names:
            if os.environ.get(name, "").strip().isdigit():
                return int(os.environ[name])
        return default

    @classmethod
    def size(cls) -> int:
        return cls._env("WORLD_SIZE", "HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", default=1)

    @classmethod
    def rank(cls) -> int:
        return cls._env("RANK", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", default=0)

    @classmethod
    def local_size(cls) -> int:
        return cls._env("LOCAL_WORLD_SIZE", "HOROVOD_LOCAL_SIZE", default=cls.size())

    @classmethod
    def local_rank(cls) -> int:
        return cls._env("LOCAL_RANK", "HOROVOD_LOCAL_RANK", default=0)


def _flags():
    from absl import flags

    return flags.FLAGS


def _flag(name: str) -> Any:
    fv = _flags()
    if name not in fv:
        raise AttributeError(
            f"FLAGS.{name} is not defined: PocketFlow's learning-rate utilities read "
            f"--{name}; define it in the helper's module (flags.DEFINE_...('{name}', ...)) as "
            "PocketFlow's dataset modules do")
    return fv[name].value


def sync_flags(cfg: Any) -> None:
    """``FLAGS.<option>`` equal to ``cfg.<option>`` for every option of the helper's config,
    flags defined where missing and FLAGS marked parsed (its other flags keep their values):
    a helper built in Python (``pocketflow_torch.compress``) reads what an entry script would
    have parsed. In an entry script nothing changes: cfg came from FLAGS. The flags defined here
    give way to a port's module that defines the same name later (PocketFlow's dataset modules
    define ``batch_size``...), instead of failing its import."""
    from utils.config import define_flags

    fv = _flags()
    define_flags(type(cfg), fv, allow_override=True)
    for field in dataclasses.fields(cfg):
        if field.name in fv and fv[field.name].value != getattr(cfg, field.name):
            fv[field.name].value = getattr(cfg, field.name)
    if not fv.is_parsed():
        fv.mark_as_parsed()


def setup_lrn_rate_piecewise_constant(global_step: int, batch_size: int,
                                      idxs_epoch: Sequence[float],
                                      decay_rates: Sequence[float]) -> float:
    """PocketFlow's piecewise-constant schedule at ``global_step``: ``lrn_rate_init *
    batch_size / batch_size_norm`` times ``decay_rates[i]``, boundaries at ``idxs_epoch``
    (epochs, scaled by ``nb_epochs_rat``) of ``nb_smpls_train / batch_size`` steps."""
    if len(decay_rates) != len(idxs_epoch) + 1:
        raise ValueError("setup_lrn_rate_piecewise_constant: len(decay_rates) must be "
                         "len(idxs_epoch) + 1")
    lrn_rate_init = _flag("lrn_rate_init") * batch_size / _flag("batch_size_norm")
    nb_batches_per_epoch = float(_flag("nb_smpls_train")) / batch_size
    bounds = [int(nb_batches_per_epoch * e * _flag("nb_epochs_rat")) for e in idxs_epoch]
    index = sum(1 for bound in bounds if int(global_step) > bound)   # tf.train.piecewise_constant
    return lrn_rate_init * decay_rates[index]


def setup_lrn_rate_exponential_decay(global_step: int, batch_size: int, epoch_step: float,
                                     decay_rate: float) -> float:
    """PocketFlow's staircase exponential decay: x ``decay_rate`` every ``epoch_step`` epochs
    (scaled by ``nb_epochs_rat``)."""
    lrn_rate_init = _flag("lrn_rate_init") * batch_size / _flag("batch_size_norm")
    batch_step = int(_flag("nb_smpls_train") * epoch_step * _flag("nb_epochs_rat") / batch_size)
    return lrn_rate_init * decay_rate ** (int(global_step) // max(1, batch_step))
