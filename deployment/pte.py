"""ExecuTorch (XNNPACK) programs and int8 PyTorch programs: export, load, run.

``export_pte`` lowers a float or converted int8 model (``compression.quantization.int8_qat``) to a ``.pte``;
``PteModel`` runs one with ExecuTorch's runtime alone. ExecuTorch plans memory for an upper
bound, so a program's batch is dynamic in ``[1, max_batch]`` (default) or static; the constant
methods ``max_batch`` / ``dynamic_batch`` record which, and ``PteModel`` splits larger batches
(and pads smaller ones for a static program). ``save_int8_program`` / ``load_int8_program``:
the converted int8 model as a ``.pt2`` (``torch.export``), runnable in eager PyTorch.
"""
from __future__ import annotations

import copy
import gc
import logging
import weakref
from pathlib import Path
from typing import Union

import torch
from torch import nn

from compression.quantization.int8_qat import (INSTALL_HINT, Int8ExportUnavailable, QatModel,
                                               batch_of, convert_int8, is_quantized,
                                               no_batch_size_guards, quiet, torchao_api)
from utils.checkpoint import CheckpointError, atomic_write

log = logging.getLogger("pocketflow")


def runtime():
    """ExecuTorch's Python runtime (``executorch.runtime.Runtime``), or Int8ExportUnavailable."""
    try:
        with quiet():
            from executorch.runtime import Runtime
    except ImportError as exc:
        raise Int8ExportUnavailable(f"running a .pte needs executorch: {INSTALL_HINT} ({exc})") from exc
    return Runtime.get()


def export_pte(model: nn.Module, example_inputs: torch.Tensor, path: Union[str, Path],
               quantized: bool, max_batch: int = 256, dynamic: bool = True) -> int:
    """Lower ``model`` to ExecuTorch with the XNNPACK delegate and write ``path`` atomically.

    ``quantized=True``: an int8 model from :func:`convert_int8` (a :class:`QatModel` is
    converted first); ``False``: a float model (exported in eval mode). The program takes
    ``[b, *example_inputs.shape[1:]]`` float inputs, ``b`` in ``[1, max_batch]`` if ``dynamic``
    else ``b == max_batch``; where ExecuTorch cannot plan a dynamic batch (the net's forward
    fixes it, e.g. ``x.view(n, ...)`` of a channel shuffle), a static plan of batch 1 (any
    batch runs, in chunks), with a warning. Returns the file size in bytes."""
    if isinstance(model, QatModel):
        if not quantized:
            raise ValueError("a QatModel is fake-quantized: export it with quantized=True")
        model = convert_int8(model)
    if quantized != is_quantized(model):
        raise ValueError(f"quantized={quantized} but the model {'has no' if quantized else 'has'}"
                         " quantize/dequantize ops (use convert_int8 for int8)")
    if any(t.device.type != "cpu" for t in model.state_dict().values()):
        model = copy.deepcopy(model).cpu()  # XNNPACK is a CPU backend
    et = _lowered(model, example_inputs, quantized, max_batch, dynamic)
    planned = _planned_batch(et)
    if planned != max_batch and dynamic:
        # ExecuTorch specialised the batch (a view / reshape of the net fixes it): a static
        # plan of batch 1 runs any batch (PteModel splits larger ones), at batch 1's speed
        log.warning("ExecuTorch planned this net for batch %d, not a dynamic batch up to %d "
                    "(a view or reshape of its forward fixes the batch); the .pte is planned "
                    "for batch 1 and runs larger batches in chunks", planned, max_batch)
        et = _lowered(model, example_inputs, quantized, 1, False)
        planned, max_batch = _planned_batch(et), 1
    if planned != max_batch:
        raise RuntimeError(f"ExecuTorch planned batch {planned}, not {max_batch}")
    return _write_atomic(et.buffer, path)


def _lowered(model: nn.Module, example_inputs: torch.Tensor, quantized: bool, max_batch: int,
             dynamic: bool):
    """The ExecuTorch program of ``model`` (XNNPACK delegate) for ``[b, ...]`` inputs."""
    api = torchao_api()
    x = batch_of(example_inputs.detach().cpu(), 2 if dynamic else max_batch)
    dims = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if dynamic else None
    was_training = model.training
    if not quantized:
        model.eval()
    try:
        with quiet(), no_batch_size_guards(), torch.no_grad():
            program = torch.export.export(model, (x,), dynamic_shapes=dims)
            edge = api.lower(program, partitioner=[api.partitioner()], constant_methods={
                "max_batch": max_batch, "dynamic_batch": int(dynamic)})
            return edge.to_executorch()
    finally:
        if not quantized:
            model.train(was_training)


def _planned_batch(et) -> int:
    """The batch ExecuTorch's memory plan holds for the program's input."""
    program = et.exported_program()
    spec = next(n for n in program.graph.nodes if n.name == program.graph_signature.user_inputs[0])
    return int(spec.meta["spec"].shape[0])


def export_int8_program(model: nn.Module, example_inputs: torch.Tensor,
                        max_batch: int = 1024) -> torch.export.ExportedProgram:
    """The converted int8 model (:func:`convert_int8`) as an exported program with a dynamic
    batch in ``[1, max_batch]`` (what ``.pt2`` files and the int8 ONNX export hold)."""
    if not is_quantized(model):
        raise ValueError("not an int8 model: convert the QAT model with convert_int8 first")
    x = batch_of(example_inputs.detach().cpu(), 2)
    dims = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    with quiet(), no_batch_size_guards(), torch.no_grad():
        return torch.export.export(model, (x,), dynamic_shapes=dims)


def save_int8_program(model: nn.Module, example_inputs: torch.Tensor, path: Union[str, Path],
                      max_batch: int = 1024) -> int:
    """The int8 PyTorch model as a ``.pt2`` (``torch.export.save``), loadable and runnable in
    eager PyTorch without this code (:func:`load_int8_program`), the source of the int8
    deployment exports. Written atomically; returns the size in bytes."""
    program = export_int8_program(model, example_inputs, max_batch)
    atomic_write(str(path), lambda handle: torch.export.save(program, handle))
    return Path(path).stat().st_size


def load_int8_program(path: Union[str, Path]) -> nn.Module:
    """The int8 model of a ``.pt2`` (:func:`save_int8_program`) as a callable module."""
    with quiet():
        torchao_api()  # registers the quantized_decomposed ops the program calls
        try:
            return torch.export.load(str(path)).module()
        except Exception as exc:  # a foreign or damaged file: say what was expected
            raise CheckpointError(f"{path} is not an exported int8 program (.pt2 written by "
                                  f"uniform-tf): {exc}") from exc


def _write_atomic(buffer: bytes, path: Union[str, Path]) -> int:
    atomic_write(str(path), lambda handle: handle.write(buffer))
    return len(buffer)


class PoolResizeError(RuntimeError):
    """ExecuTorch's thread pool cannot be resized while programs are loaded."""


_LOADED: "weakref.WeakSet[PteModel]" = weakref.WeakSet()   # programs alive in this process


def set_runtime_threads(n: int) -> None:
    """Resize ExecuTorch's (XNNPACK's) thread pool, which ignores ``torch.set_num_threads``;
    only when its size changes, and only while no program is loaded: a loaded XNNPACK
    delegate keeps the old pool, and runs after a resize crashed the process (segfault).
    Set the threads first, then load programs (``deployment.runners.runner_for`` does)."""
    runtime()
    with quiet():
        from executorch.extension.pybindings import portable_lib
    if portable_lib._threadpool_get_thread_count() == int(n):
        return
    gc.collect()   # programs no longer referenced are not a reason to refuse
    if len(_LOADED):
        raise PoolResizeError(
            f"ExecuTorch's thread pool has {portable_lib._threadpool_get_thread_count()} threads "
            f"and {len(_LOADED)} programs are loaded ({', '.join(sorted({m.path for m in _LOADED}))})"
            f": resizing it to {int(n)} now would crash them; set the threads before loading")
    portable_lib._unsafe_reset_threadpool(int(n))


class PteModel:
    """A ``.pte`` program run by ExecuTorch's runtime: ``PteModel(path)(x) -> logits``.

    Batches larger than the program's planned batch are split; for a static program smaller
    ones are zero-padded (and the padding rows dropped from the output)."""

    def __init__(self, path: Union[str, Path], method: str = "forward") -> None:
        self.path = str(path)
        self.program = runtime().load_program(Path(path))
        _LOADED.add(self)
        self.method = self.program.load_method(method)
        meta = self.method.metadata.input_tensor_meta(0)
        self.planned_shape = tuple(meta.sizes())
        self.max_batch = self.planned_shape[0]
        names = self.program.method_names
        # without the constant method (a foreign file) padding to the planned batch is safe
        self.dynamic_batch = bool("dynamic_batch" in names
                                  and self.program.load_method("dynamic_batch").execute([])[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        if tuple(x.shape[1:]) != self.planned_shape[1:]:
            raise ValueError(f"expected inputs [b, {', '.join(map(str, self.planned_shape[1:]))}],"
                             f" got {list(x.shape)}")
        outs = []
        for chunk in x.split(self.max_batch):
            n = chunk.shape[0]
            if not self.dynamic_batch and n < self.max_batch:
                chunk = torch.cat([chunk, chunk.new_zeros(self.max_batch - n, *chunk.shape[1:])])
            outs.append(self.method.execute((chunk,))[0][:n].clone())  # outputs reuse buffers
        return torch.cat(outs)
