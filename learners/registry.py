"""name -> learner class registry (``@register_learner("chn-pruned-rmt", config=CprConfig,
prefix="cpr")``): the learner's options dataclass and the prefix of its flags."""
from __future__ import annotations

import importlib
from typing import Callable

_LEARNERS: dict[str, type] = {}
_CONFIGS: dict[str, tuple[type, str]] = {}

# Modules whose import registers the built-in learners (imported lazily, on first lookup).
BUILTIN_MODULES = (
    "learners.full_precision",
    "learners.channel.rmt",
    "learners.channel.he2017",
    "learners.channel.gpu",
    "learners.channel.dcp",
    "learners.gate_decorator.learner",
    "learners.weight_sparse.learner",
    "learners.quant.uniform",
    "learners.quant.non_uniform",
    "learners.quant.uniform_tf",
    "learners.schedule.learner",
)


def register_learner(name: str, config: type | None = None,
                     prefix: str = "") -> Callable[[type], type]:
    """Class decorator; ``config`` is the learner's own options dataclass, whose fields become
    the flags ``--<prefix>_<field>``."""

    def decorate(cls: type) -> type:
        if name in _LEARNERS:
            raise ValueError(f"learner {name!r} is already registered ({_LEARNERS[name].__name__})")
        _LEARNERS[name] = cls
        if config is not None:
            _CONFIGS[name] = (config, prefix)
        cls.learner_name = name
        cls.config_cls, cls.flag_prefix = config, prefix
        return cls

    return decorate


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def list_learners() -> list[str]:
    _load_builtins()
    return sorted(_LEARNERS)


def learner_class(name: str) -> type:
    _load_builtins()
    if name not in _LEARNERS:
        raise ValueError(f"unknown learner {name!r}; valid learners: {', '.join(sorted(_LEARNERS))}")
    return _LEARNERS[name]


def learner_configs() -> dict[str, tuple[type, str]]:
    """Every registered learner's ``(options dataclass, flag prefix)``."""
    _load_builtins()
    return dict(_CONFIGS)
