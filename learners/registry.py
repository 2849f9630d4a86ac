"""name -> learner class registry (``@register_learner("chn-pruned-rmt", config=CprConfig)``)."""
from __future__ import annotations

import importlib
from typing import Callable

_LEARNERS: dict[str, type] = {}
_CONFIGS: dict[str, type | None] = {}

# Modules whose import registers the built-in learners (imported lazily, on first lookup).
BUILTIN_MODULES = (
    "learners.full_precision.learner",
    "learners.channel_pruning_rmt.learner",
    "learners.channel.learner",
    "learners.chn_pruned_gpu.learner",
    "learners.dis_chn_pruned.learner",
    "learners.gate_decorator.learner",
    "learners.weight_sparse.learner",
    "learners.quant.uniform",
    "learners.quant.non_uniform",
    "learners.quant.uniform_tf",
    "learners.schedule.learner",
)


def register_learner(name: str, config: type | None = None) -> Callable[[type], type]:
    """Class decorator; ``config`` is the learner's own options dataclass (its flags)."""

    def decorate(cls: type) -> type:
        if name in _LEARNERS:
            raise ValueError(f"learner {name!r} is already registered ({_LEARNERS[name].__name__})")
        _LEARNERS[name] = cls
        _CONFIGS[name] = config
        cls.learner_name = name
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


def learner_configs() -> dict[str, type]:
    """Every registered learner's options dataclass (for flag definition)."""
    _load_builtins()
    return {name: cfg for name, cfg in _CONFIGS.items() if cfg is not None}
