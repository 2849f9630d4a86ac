"""The Python API: compress a plain ``nn.Module`` with any learner, no flags, no ModelHelper.

    from pocketflow_torch import compress, load_model
    result = compress(model, train_data, eval_data, "chn-pruned-rmt", prune_ratio=0.5, epochs=5)
    result.model                       # the compressed model (thinned: really smaller)
    result.report["accuracy"]          # the same report as report.json
    quantized = compress(model, train_data, eval_data, "uniform", start=result, weight_bits=4)
    model = load_model(result.artifact, base=MyNet())   # later, from the files alone

``train_data``/``eval_data`` are datasets of ``(input tensor, class label)`` or DataLoaders
(their dataset and batch size are used). ``model`` is the trained full model: the reference of
the report and the start of compression (saved as ``<out_dir>/full/model.ckpt``). Options are
the learner's own (unprefixed: ``prune_ratio``, ``weight_bits``, ``preserve_ratio``,
``ddpg_batch_size``...), the common ones of ``learners.config.LearnerConfig`` (``seed``,
``enbl_dst``, ``export_format``, ``report_latency``...) and the data/schedule ones of
``nets.module_helper.ModuleConfig`` (``batch_size``, ``lrn_rate_init``, ``epochs``...); an
unknown option is refused with the list of valid ones. ``start``: a previous ``Result`` (or an
artifact path) to continue a chain from. A ModelHelper can stand for the model and data:
``compress(MyHelper(cfg), learner=..., full_model="models_eval/model.ckpt", **options)``.
The same runner as the command line does the work, so the files, checks and report are the
same.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn
from torch.utils.data import DataLoader, Dataset

from compression.artifacts.files import runtime_for
from learners.config import LearnerConfig
from learners.launch import locked_run, seed_everything, setup_logging
from learners.registry import learner_class, learner_configs
from learners.run.runner import Runner
from nets.abstract_model_helper import AbstractModelHelper
from nets.module_helper import ModuleConfig, ModuleHelper
from nets.pocketflow_helper import framework_helper
from utils import cpu_share
from utils.checkpoint import CheckpointError
from utils.config import ConfigError, flag_fields, from_flag_dict
from compression.artifacts import file_of, save_model
from compression.artifacts import load_model as _load_model
from utils.model_io import module_spec

log = logging.getLogger("pocketflow")


@dataclass
class Result:
    """A compression's outcome: the model, the report (``report.json``), the files."""

    model: nn.Module
    report: dict
    artifact: str
    out_dir: str

    @property
    def files(self) -> dict:
        return self.report.get("files", {})


def _dataset(data) -> tuple[Dataset, int | None]:
    if isinstance(data, DataLoader):
        return data.dataset, data.batch_size
    return data, None


def _option_names(cls: type, prefix: str = "") -> set[str]:
    return {name for name, _, _ in flag_fields(cls, prefix)}


def compress(model: "nn.Module | AbstractModelHelper", train_data=None, eval_data=None,
             learner: str = "chn-pruned-rmt", *, out_dir: str | None = None,
             start: "Result | str | None" = None, full_model: str | None = None,
             loss_fn: Callable | None = None, spec: dict | None = None, **options: Any) -> Result:
    """Compress ``model`` with ``learner`` (see the module's docstring); returns a ``Result``.

    ``model`` may also be a ModelHelper (your own subclass, or a built-in one): its data, loss
    and schedule are used, no ``train_data``/``eval_data``; the full model is the artifact at
    ``full_model`` (default ``<out_dir>/full/model.ckpt``, trained first with ``full-prec``
    when missing)."""
    learner_class(learner)  # an unknown name lists the valid ones
    model = framework_helper(model)     # a PocketFlow helper's port: its adapter
    own_cls, _ = learner_configs().get(learner, (None, ""))
    out_dir = out_dir or tempfile.mkdtemp(prefix=f"pocketflow_{learner}_")
    is_helper = isinstance(model, AbstractModelHelper)
    if is_helper and (train_data is not None or eval_data is not None):
        raise ConfigError("a ModelHelper brings its own data: pass no train_data / eval_data")
    if not is_helper and (train_data is None or eval_data is None):
        raise ConfigError("compress(model, train_data, eval_data, ...) needs both datasets (or a "
                          "ModelHelper instead of the model)")
    options = _unprefixed(options, learner)
    _check_options(options, learner, own_cls, None if is_helper else ModuleConfig)
    values = {k: v for k, v in options.items() if v is not None}
    full_path = full_model or os.path.join(out_dir, "full", "model.ckpt")
    if is_helper:
        helper, base = model, None
    else:
        train, batch_size = _dataset(train_data)
        evaluation, _ = _dataset(eval_data)
        if batch_size is not None:
            values.setdefault("batch_size", batch_size)
        helper = ModuleHelper(from_flag_dict(ModuleConfig, values), model, train, evaluation,
                              seed=int(values.get("seed", 0)), loss_fn=loss_fn, spec=spec)
        base = model if helper.net_spec().get("net") is None else None
        save_model(full_path, model, helper.net_spec(), {"learner": "full-prec",
                                                         **helper.describe()})
    paths = {"save_path": os.path.join(out_dir, "full", "ckpt", "model.ckpt"),
             "save_path_eval": full_path, "learner": learner, "log_dir": "",
             "enbl_warm_start": start is not None,
             "warm_start_path": getattr(start, "artifact", start) or ""}
    cfg = from_flag_dict(LearnerConfig, {**values, **paths})
    own_cfg = None
    if own_cls is not None:
        own_paths = {f.name: _path(out_dir, learner, f) for f in dataclasses.fields(own_cls)
                     if "save_path" in f.name}
        own_cfg = from_flag_dict(own_cls, {**values, **own_paths})
    if not logging.getLogger("pocketflow").handlers:
        setup_logging(True)
    seed_everything(cfg.seed)
    cpu_share.configure(cfg.cpu_threads)
    runner = Runner(helper, cfg, base=base)
    chosen = runner.learner(learner, own_cfg)
    report = locked_run(runner, chosen)
    artifact = chosen.ctx.outputs.artifact
    return Result(chosen.load_result(artifact).eval(), report, artifact, out_dir)


def _check_options(options: dict, learner: str, own_cls: type | None,
                   helper_cls: type | None) -> None:
    """Refuse an option no config of this call has (a helper's own options are set on it)."""
    valid = _option_names(LearnerConfig) | (_option_names(own_cls) if own_cls else set())
    if helper_cls is not None:
        valid |= _option_names(helper_cls)
    valid = {name for name in valid if "save_path" not in name} - {
        "learner", "exec_mode", "enbl_multi_gpu", "enbl_warm_start", "warm_start_path"}
    unknown = sorted(set(options) - valid)
    if unknown:
        hint = "" if helper_cls is not None else " (data and schedule options are the helper's)"
        guesses = {name: difflib.get_close_matches(name, sorted(valid), n=3, cutoff=0.6)
                   for name in unknown}
        if all(guesses.values()):
            said = "; ".join(f"{name}: did you mean {' or '.join(close)}?"
                             for name, close in guesses.items())
            raise ConfigError(f"unknown option(s) for learner {learner!r}{hint}: {said}")
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for learner {learner!r}{hint}; "
                          f"valid: {', '.join(sorted(valid))}")


def _unprefixed(options: dict, learner: str) -> dict:
    """Options named as their flags (``cpr_prune_ratio``, how docs/learners.md writes them)
    are taken without the learner's prefix, with a note."""
    own_cls, prefix = learner_configs().get(learner, (None, ""))
    if own_cls is None or not prefix:
        return options
    own = _option_names(own_cls)
    out = {}
    for name, value in options.items():
        bare = name[len(prefix) + 1:] if name.startswith(prefix + "_") else None
        if bare in own and name not in own:
            if bare in options:
                raise ConfigError(f"both {name} and {bare} are given: the Python API takes the "
                                  f"learner's options without the --{prefix}_ prefix ({bare})")
            log.info("option %s: the Python API names it %s (no --%s_ prefix); taken as %s",
                     name, bare, prefix, bare)
            name = bare
        out[name] = value
    return out


def _path(out_dir: str, learner: str, field: dataclasses.Field) -> str:
    """Where an output option of the learner points under ``out_dir``: ``save_path`` ->
    ``<learner>/ckpt/``, ``save_path_eval`` -> ``<learner>/``, ``save_path_ws`` ->
    ``<learner>/ws/``, each with the file name of the option's default."""
    sub = {"save_path": "ckpt", "save_path_eval": ""}.get(field.name, field.name[len("save_path_"):])
    return os.path.join(out_dir, learner, sub, os.path.basename(field.default))


def evaluate(artifact: str, model: "nn.Module | AbstractModelHelper", eval_data=None,
             learner: str | None = None, **options: Any) -> dict:
    """Loss and accuracy of a saved result over the eval set: the helper's, or ``eval_data``
    for a plain ``model`` (the module the artifact was compressed from, the base of an
    unregistered class). ``learner``: the one that wrote it (default: from its file; an
    ExecuTorch ``.pte`` is uniform-tf's int8 program, run by ExecuTorch)."""
    if learner is None:
        learner = "uniform-tf" if getattr(file_of(artifact), "name", None) == "pte" else \
            _load_model_meta(artifact).get("learner", "full-prec")
    own_cls, _ = learner_configs().get(learner, (None, ""))
    model = framework_helper(model)
    if isinstance(model, AbstractModelHelper):
        helper, base = model, None
    else:
        evaluation, batch_size = _dataset(eval_data)
        values = {"batch_size_eval": batch_size} if batch_size else {}
        helper = ModuleHelper(from_flag_dict(ModuleConfig, {**values, **options}), model,
                              evaluation, evaluation)
        base = model if helper.net_spec().get("net") is None else None
    cfg = from_flag_dict(LearnerConfig, {**options, "learner": learner, "exec_mode": "eval",
                                         "save_path_eval": artifact, "log_dir": ""})
    own_cfg = from_flag_dict(own_cls, {"save_path_eval": artifact}) if own_cls else None
    runner = Runner(helper, cfg, base=base)
    return runner.evaluate(runner.learner(learner, own_cfg))


def _load_model_meta(path: str) -> dict:
    from utils.checkpoint import load_file

    return load_file(path).get("meta") or {}


def load_model(path: str, base: nn.Module | None = None) -> Callable:
    """The model of an artifact, ready to run (eval mode). ``base``: an instance of the
    original model's class, needed when that class is not a registered net.

    The programs a run writes load too, as callables ``x -> logits``: an ExecuTorch program
    (``.pte``, a ``deployment.pte.PteModel``) and the int8 program (``.pt2``, an exported
    module). Anything else (an ONNX model, a directory, a plain state_dict) is refused with
    what it is and what to do."""
    runtime = runtime_for(path) if os.path.isfile(path) else None
    if runtime == "executorch":
        from deployment.pte import PteModel
        try:
            return PteModel(path)
        except RuntimeError as exc:       # a damaged or foreign file
            raise CheckpointError(f"{path} is not an ExecuTorch program this runtime can load "
                                  f"({exc})") from exc
    if runtime == "torch.export":
        from deployment.pte import load_int8_program
        return load_int8_program(path)
    model, _ = _load_model(path, base=base)
    return model.eval()


__all__ = ["compress", "evaluate", "load_model", "Result", "module_spec"]
