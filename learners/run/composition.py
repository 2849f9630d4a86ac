"""Chains of learners: one learner starts from another learner's saved result.

``--enbl_warm_start --warm_start_path=<artifact>`` makes a learner compress that artifact
instead of the full-precision model (``--save_path_eval``), which stays the reference of the
report and the distillation teacher. Every artifact records in its meta the ``chain`` of
stages that made it (the full model first); the next stage appends its own, so the last
report lists them all.

A chain whose stages do not fit is refused before any work: each learner class declares the
properties its result ``produces`` (``sparse``, ``thinned``, ``quantized``) and the ones it
``refuses`` to start from, with the reason. Deployment files (the ``deployment`` rows of
``compression.artifacts.files``: ExecuTorch and ONNX programs, the int8 program) are never a
start: they are programs for a runtime, not trainable models.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from learners.registry import learner_class
from utils.checkpoint import CheckpointError, load_file
from compression.artifacts import file_of, load_model, path_of, rows
from utils.model_stats import count_flops, count_params


# Why a learner refuses a start with a property (its ``refuses`` values).
REQUANTIZE = ("quantizing an already quantized model again only compounds the rounding; "
              "quantize the model it came from")
PRUNE_QUANTIZED = ("prune before quantizing: pruning and fine-tuning would move the weights off "
                   "the quantization grid; start from the model before quantization")


class ChainError(CheckpointError):
    """The warm-start artifact cannot start this learner."""


def stage(learner: str, artifact: str | None, model: nn.Module, input_shape, accuracy,
          nbytes: int | None = None) -> dict:
    """One row of a chain: who made the model, where it is, and what it costs."""
    return {"learner": learner, "artifact": artifact, "accuracy": accuracy,
            "flops": count_flops(model, input_shape), "params": count_params(model),
            "bytes": nbytes}


def stored_bytes(path: str) -> int:
    """The smallest stored form of an artifact: itself, or the sparse (COO / CSR) copy a
    sparse learner wrote beside it."""
    stem = os.path.splitext(path)[0]
    sizes = [os.path.getsize(p) for p in (path, *(path_of(stem, row.name) for row in rows("sparse")))
             if os.path.isfile(p)]
    return min(sizes)


def recorded_chain(path: str, obj: dict, model: nn.Module, input_shape) -> list[dict]:
    """The stages of the artifact at ``path`` (loaded as ``obj``), its own one last."""
    meta = obj.get("meta", {})
    previous = list(meta.get("chain") or [])
    own = stage(meta.get("learner", "unknown"), path, model, input_shape, meta.get("accuracy"),
                stored_bytes(path))
    if meta.get("produces") is not None:
        own["produces"] = list(meta["produces"])
    return [*previous, own]


def chain_tags(chain: list[dict]) -> dict[str, str]:
    """property -> the learner of the chain that gave the model that property."""
    tags = {}
    for entry in chain:
        produced = entry.get("produces")  # recorded by the stage (policy-driven learners)
        if produced is None:
            try:
                produced = learner_class(entry["learner"]).produces
            except ValueError:  # a stage made by a learner this process does not know
                continue
        for tag in produced:
            tags.setdefault(tag, entry["learner"])
    return tags


def check_fits(learner_cls: type, chain: list[dict], path: str) -> None:
    """Refuse a start whose properties this learner cannot build on."""
    tags = chain_tags(chain)
    route = " -> ".join(entry["learner"] for entry in chain)
    for tag, maker in tags.items():
        reason = getattr(learner_cls, "refuses", {}).get(tag)
        if reason:
            raise ChainError(f"{learner_cls.learner_name} cannot start from {path}: the model is "
                             f"{tag} (by {maker}; chain {route}); {reason}")


def load_start(path: str, learner_cls: type, helper,
               base: nn.Module | None = None) -> tuple[nn.Module, dict, list[dict]]:
    """Load and check the warm-start artifact: ``(model, file dict, its chain)``; ``base``: the
    module an artifact of an unregistered net builds on."""
    row = file_of(path)
    if row is not None and row.role == "deployment":
        raise ChainError(f"--warm_start_path={path} is {row.what} (a deployment artifact), not a "
                         "trainable model; start from the model artifact (.ckpt) it was exported "
                         "from. An int8 model cannot be compressed or quantized again.")
    if not os.path.isfile(path):
        raise ChainError(f"--warm_start_path={path} does not exist; give a model artifact written "
                         "by a learner's --*_save_path_eval")
    obj = load_file(path)
    if obj.get("kind") != "model":
        raise ChainError(f"--warm_start_path={path} holds a {obj.get('kind')!r}, not a model "
                         "artifact (a learner's --*_save_path_eval)")
    model, obj = load_model(path, base=base)
    shape = obj.get("meta", {}).get("input_shape")
    if shape is not None and list(shape) != list(helper.input_shape):
        raise ChainError(f"{path} takes inputs of shape {list(shape)} but this helper feeds "
                         f"{list(helper.input_shape)}")
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, *helper.input_shape))
    classes = getattr(helper, "num_classes", None)
    if classes is not None and out.shape[-1] != classes:
        raise ChainError(f"{path} predicts {out.shape[-1]} classes, this helper has {classes}")
    chain = recorded_chain(path, obj, model, helper.input_shape)
    check_fits(learner_cls, chain, path)
    return model, obj, chain

