"""Model artifacts, the part below compression: the registry of architecture transforms, the
spec of a plain module, and loading weights into a model.

The spec is the plain dict of ``nets.registry.net_spec``; compression steps that change the
architecture (e.g. physical thinning) append entries to ``spec["transforms"]``, each applied
by the function registered for its ``type`` with ``register_spec_transform``. A model that is
not a registered net (a plain ``nn.Module`` handed to the Python API) has the spec
``module_spec(model)``: it rebuilds from an instance of the same class given as ``base``.
Writing and rebuilding artifacts (``save_model``, ``build_model``, ``load_model``) needs the
nets and every transform: ``compression.artifacts``.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from utils.checkpoint import CheckpointError, check_state_dict_fits

SpecTransform = Callable[[nn.Module, dict], nn.Module]
_TRANSFORMS: dict[str, SpecTransform] = {}


def register_spec_transform(name: str) -> Callable[[SpecTransform], SpecTransform]:
    def decorate(fn: SpecTransform) -> SpecTransform:
        _TRANSFORMS[name] = fn
        return fn

    return decorate


def apply_transforms(model: nn.Module, spec: dict) -> nn.Module:
    """Every architecture transform of ``spec`` applied to ``model`` in order."""
    for entry in spec.get("transforms", []):
        if entry.get("type") not in _TRANSFORMS:
            raise CheckpointError(f"unknown architecture transform {entry.get('type')!r} in spec; "
                                  f"known: {', '.join(sorted(_TRANSFORMS)) or 'none'}")
        model = _TRANSFORMS[entry["type"]](model, entry)
    return model


def module_spec(model: nn.Module) -> dict:
    """The spec of a model that is not a registered net: its class, rebuilt from a ``base``."""
    cls = type(model)
    return {"net": None, "module": f"{cls.__module__}.{cls.__qualname__}", "kwargs": {}}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


def load_weights(model: nn.Module, state_dict: dict, source: str) -> None:
    """Strict load that names missing, unexpected and mismatched keys on failure."""
    check_state_dict_fits(model, state_dict, source)
    model.load_state_dict(state_dict)

