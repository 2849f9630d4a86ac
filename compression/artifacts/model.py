"""The model artifact (``.ckpt``): writing it (architecture spec + weights) and rebuilding it,
the architecture of a spec (a registered net, or a copy of the given ``base`` module) with
every recorded transform (thinning, quantizers...), then the weights. An artifact loads with
nothing but this module imported: it registers every built-in transform (the registry itself
is ``utils.model_io``, below the nets).

``load_model`` refuses, before reading anything, what is not a model artifact by its place or
name (a directory, a missing file, a deployment file of ``compression.artifacts.files``), and
names the copies beside an artifact (sparse, bit-packed) with the loader that reads them.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import compression.quantization.dorefa_pact  # noqa: F401  (registers the transforms of the artifacts'
import compression.quantization.spec  # noqa: F401   specs)
import compression.surgery.thinning  # noqa: F401
from compression.artifacts.files import file_of, model_suffixes
from nets.registry import build_from_spec
from utils.checkpoint import CheckpointError, check_state_dict_fits, load_file, save_file
from utils.model_io import apply_transforms, load_weights, unwrap

log = logging.getLogger("pocketflow")

# file kind (``utils.checkpoint``) of the copies beside an artifact -> the function reading it
COPY_LOADERS = {"sparse_model": "compression.artifacts.load_sparse_model",
                "quantized_model": "compression.artifacts.load_quantized_model"}


class NotAModelArtifact(CheckpointError):
    """The path is not a model artifact (a directory, a missing or a deployment file)."""


def save_model(path: str, model: nn.Module, spec: dict, meta: dict | None = None) -> int:
    """Write the artifact atomically; returns its size in bytes."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    save_file(path, "model", {"spec": spec, "state_dict": state, "meta": meta or {}})
    return os.path.getsize(path)


def check_model_path(path: str) -> None:
    """Refuse a path that cannot hold a model artifact, saying what it is and what to do."""
    name = os.path.basename(os.path.normpath(str(path))) or str(path)
    if os.path.isdir(path):
        raise NotAModelArtifact(f"{path} is a directory, not a model artifact: give the file a "
                                "learner wrote there (its --*_save_path_eval, e.g. model.ckpt)")
    row = file_of(path)
    if row is not None and row.role == "deployment":
        raise NotAModelArtifact(
            f"{name} is {row.what} (a deployment file), not a model artifact: run it with "
            "tools.latency / deployment.runners.runner_for, or load the "
            f"{model_suffixes()[0]} it was exported from")
    if not os.path.exists(path):
        raise NotAModelArtifact(f"no such file: {path} (expected a model artifact, the "
                                f"{model_suffixes()[0]} a learner writes at its --*_save_path_eval)")


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


# A spec is data from a file: no number in it may ask for more than this (channels, classes,
# layers, an input size...), and no structure may nest deeper, before anything is built.
MAX_SPEC_INT = 1 << 20
MAX_SPEC_DEPTH = 32


def check_spec(spec: Any, path: str, where: str = "spec", depth: int = 0) -> None:
    """CheckpointError naming the field of ``spec`` whose number is out of bounds (a shared
    artifact must not be able to make the loader allocate or loop without bound)."""
    if depth > MAX_SPEC_DEPTH:
        raise CheckpointError(f"{path}: {where} nests deeper than {MAX_SPEC_DEPTH} levels")
    if isinstance(spec, bool):
        return
    if isinstance(spec, (int, float)) and abs(spec) > MAX_SPEC_INT:
        raise CheckpointError(f"{path}: {where} = {spec!r} is out of bounds (at most "
                              f"{MAX_SPEC_INT} in a spec): the file was edited or is not an "
                              "artifact of this project")
    items = spec.items() if isinstance(spec, dict) else enumerate(spec) \
        if isinstance(spec, (list, tuple)) else ()
    for key, value in items:
        check_spec(value, path, f"{where}[{key!r}]", depth + 1)


class _NoInPlaceOnMeta(TorchFunctionMode):
    """In-place ops on meta tensors (weight initialisation: ``normal_``, ``zero_``...) do
    nothing: shapes are all a meta build is for, and meta ``normal_`` imports half of torch."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.startswith("__") and name != "resize_" and args and \
                isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def rebuild(path: str, spec: Any, state_dict: dict, base: nn.Module | None = None) -> nn.Module:
    """The model of ``spec`` with ``state_dict`` loaded (strict), errors naming ``path``.

    Bounded: the spec's numbers are checked first, then the model is built on the ``meta``
    device (no memory) and every shape compared with the stored tensors; only a spec that
    matches them is built for real (its memory is then that of the tensors already read)."""
    check_spec(spec, path)
    try:
        with torch.device("meta"), _NoInPlaceOnMeta():
            shadow = build_model(spec, None if base is None else copy.deepcopy(base).to("meta"))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the architecture: {exc}") from exc
    except (NotImplementedError, RuntimeError) as exc:   # a net that cannot be built on meta
        log.debug("%s: no meta build (%s); building for real", path, exc)
    else:
        check_state_dict_fits(shadow, state_dict, path)
    try:
        model = build_model(spec, base)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the architecture: {exc}") from exc
    load_weights(model, state_dict, path)
    return model


def load_model(path: str, map_location: Any = "cpu",
               base: nn.Module | None = None, inference: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild the model of an artifact; returns ``(model, file dict)``.

    ``inference=True``: the eager serving form, in eval mode with every BatchNorm that follows
    a conv or linear layer folded into it (``compression.surgery.inference.fold_batchnorm``:
    the same outputs, a pass fewer per layer; not for further training).

    A training checkpoint is accepted too when it records the architecture spec. ``base``: an
    instance of the original model's class, for an artifact of a net that is not registered.
    A directory, a missing file or a deployment file (``.onnx``, ``.pte``, ``.pt2``) is
    refused with :class:`NotAModelArtifact` before anything is read.
    """
    check_model_path(path)
    obj = load_file(path, map_location=map_location)
    if obj["kind"] == "checkpoint":
        spec = obj.get("meta", {}).get("spec")
        state_dict = obj.get("model")
    elif obj["kind"] == "model":
        spec, state_dict = obj.get("spec"), obj.get("state_dict")
    else:
        loader = COPY_LOADERS.get(obj["kind"])
        hint = f"; read it with {loader}, or load the model artifact it was written beside" \
            if loader else ""
        raise CheckpointError(f"{path} holds a {obj['kind']!r}, not a model{hint}")
    if spec is None or state_dict is None:
        raise CheckpointError(f"{path} does not record an architecture spec and weights")
    model = rebuild(path, spec, state_dict, base)
    if inference:
        model = _serving_form(model, path)
    return model, obj


def _serving_form(model: nn.Module, path: str) -> nn.Module:
    """``model`` in eval mode without gradients, its BatchNorms folded where the net traces."""
    from compression.surgery.inference import fold_batchnorm
    model = model.eval().requires_grad_(False)
    try:
        return fold_batchnorm(model).requires_grad_(False)
    except Exception as error:     # noqa: BLE001  (a net fx cannot trace: serve it unfolded)
        log.warning("%s: BatchNorm not folded (the net does not trace: %s)", path, error)
        return model


def load_weights_from(model: nn.Module, path: str) -> dict:
    """Load an artifact's (or checkpoint's) weights into an existing model of the same shape."""
    check_model_path(path)
    obj = load_file(path)
    state_dict = obj.get("state_dict") if obj["kind"] == "model" else obj.get("model")
    if state_dict is None:
        raise CheckpointError(f"{path} holds no model weights")
    load_weights(model, state_dict, path)
    return obj
