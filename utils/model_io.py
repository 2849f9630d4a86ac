"""Model artifacts: architecture spec + weights, loadable without any training code.

The spec is the plain dict of ``nets.registry.net_spec``; compression steps that change the
architecture (e.g. physical thinning) append entries to ``spec["transforms"]``, each applied
by the function registered for its ``type`` with ``register_spec_transform``. A model that is
not a registered net (a plain ``nn.Module`` handed to the Python API) has the spec
``module_spec(model)``: it rebuilds from an instance of the same class given as ``base``.
"""
from __future__ import annotations

import copy
import importlib
import os
from typing import Any, Callable

from torch import nn

from nets.registry import build_from_spec
from utils.checkpoint import CheckpointError, check_state_dict_fits, load_file, save_file

SpecTransform = Callable[[nn.Module, dict], nn.Module]
_TRANSFORMS: dict[str, SpecTransform] = {}
# Modules whose import registers the built-in transforms (imported when a spec needs them, so
# an artifact loads with nothing but this module imported).
BUILTIN_TRANSFORM_MODULES = ("compression.thinning", "compression.quant_spec", "compression.dorefa_pact")


def register_spec_transform(name: str) -> Callable[[SpecTransform], SpecTransform]:
    def decorate(fn: SpecTransform) -> SpecTransform:
        _TRANSFORMS[name] = fn
        return fn

    return decorate


def module_spec(model: nn.Module) -> dict:
    """The spec of a model that is not a registered net: its class, rebuilt from a ``base``."""
    cls = type(model)
    return {"net": None, "module": f"{cls.__module__}.{cls.__qualname__}", "kwargs": {}}


def build_model(spec: dict, base: nn.Module | None = None) -> nn.Module:
    """Base net from the spec (a copy of ``base`` when given), then every recorded
    architecture transform in order."""
    if base is not None:
        model = copy.deepcopy(base)
    elif isinstance(spec, dict) and spec.get("net") is None and "module" in spec:
        raise CheckpointError(
            f"the base architecture is the module {spec['module']}, not a registered net: pass "
            "an instance of it (base=...), or register a builder with nets.registry.register_net")
    else:
        model = build_from_spec(spec)
    for entry in spec.get("transforms", []):
        if entry.get("type") not in _TRANSFORMS:
            for module in BUILTIN_TRANSFORM_MODULES:
                importlib.import_module(module)
        if entry.get("type") not in _TRANSFORMS:
            raise CheckpointError(f"unknown architecture transform {entry.get('type')!r} in spec; "
                                  f"known: {', '.join(sorted(_TRANSFORMS)) or 'none'}")
        model = _TRANSFORMS[entry["type"]](model, entry)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


def save_model(path: str, model: nn.Module, spec: dict, meta: dict | None = None) -> int:
    """Write the artifact atomically; returns its size in bytes."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    save_file(path, "model", {"spec": spec, "state_dict": state, "meta": meta or {}})
    return os.path.getsize(path)


def load_model(path: str, map_location: Any = "cpu",
               base: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model of an artifact; returns ``(model, file dict)``.

    A training checkpoint is accepted too when it records the architecture spec. ``base``: an
    instance of the original model's class, for an artifact of a net that is not registered.
    """
    obj = load_file(path, map_location=map_location)
    if obj["kind"] == "checkpoint":
        spec = obj.get("meta", {}).get("spec")
        state_dict = obj.get("model")
    elif obj["kind"] == "model":
        spec, state_dict = obj.get("spec"), obj.get("state_dict")
    else:
        raise CheckpointError(f"{path} holds a {obj['kind']!r}, not a model")
    if spec is None or state_dict is None:
        raise CheckpointError(f"{path} does not record an architecture spec and weights")
    try:
        model = build_model(spec, base)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the architecture: {exc}") from exc
    load_weights(model, state_dict, path)
    return model, obj


def load_weights(model: nn.Module, state_dict: dict, source: str) -> None:
    """Strict load that names missing, unexpected and mismatched keys on failure."""
    check_state_dict_fits(model, state_dict, source)
    model.load_state_dict(state_dict)


def load_weights_from(model: nn.Module, path: str) -> dict:
    """Load an artifact's (or checkpoint's) weights into an existing model of the same shape."""
    obj = load_file(path)
    state_dict = obj.get("state_dict") if obj["kind"] == "model" else obj.get("model")
    if state_dict is None:
        raise CheckpointError(f"{path} holds no model weights")
    load_weights(model, state_dict, path)
    return obj
