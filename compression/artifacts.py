"""Model artifacts, rebuilt: the architecture of a spec (a registered net, or a copy of the
given ``base`` module) with every recorded transform (thinning, quantizers...), then the
weights. An artifact loads with nothing but this module imported: it registers every built-in
transform (``utils.model_io`` holds the registry and the writing side)."""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

import compression.quantization.dorefa_pact  # noqa: F401  (registers the transforms of the artifacts'
import compression.quantization.spec  # noqa: F401   specs)
import compression.surgery.thinning  # noqa: F401
from nets.registry import build_from_spec
from utils.checkpoint import CheckpointError, load_file
from utils.model_io import apply_transforms, load_weights


def build_model(spec: dict, base: nn.Module | None = None) -> nn.Module:
    """Base net from the spec, then every recorded architecture transform in order. ``base``
    is used (copied) only when the spec's net is not registered (``module_spec``); a
    registered net is always built from the spec, whatever ``base`` is given."""
    unregistered = isinstance(spec, dict) and spec.get("net") is None and "module" in spec
    if unregistered and base is not None:
        model = copy.deepcopy(base)
    elif unregistered:
        raise CheckpointError(
            f"the base architecture is the module {spec['module']}, not a registered net: pass "
            "an instance of it (base=...), or register a builder with nets.registry.register_net")
    else:
        model = build_from_spec(spec)
    return apply_transforms(model, spec)


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
