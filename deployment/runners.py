"""Saved models as runners (``x -> outputs``) in their own runtime, and timings side by side.

``runner_for(path)`` picks the runtime by the file's suffix in ``compression.artifacts.files``:
a model artifact (eager torch), an ONNX model (onnxruntime), an ExecuTorch program, uniform-tf's
int8 program (torch.export, run eagerly), or a file of a format added with
``deployment.formats.register_format`` (its ``load``).
``compare_latency`` and ``time_runners`` time runners with the same inputs and threads.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

from compression.artifacts import model_suffixes, rows, runtime_for
from deployment.formats import loadable_format
from utils.model_stats import time_side_by_side


class RunnerError(ValueError):
    """A model file cannot be run: missing, unknown extension, or not on this device."""


class Runner:
    """``runner(x) -> outputs`` for one saved model, run by ``runtime`` on ``device``;
    ``input_shape`` (no batch) is what the file records, or None."""

    def __init__(self, path: str, runtime: str, forward: Callable[[torch.Tensor], object],
                 input_shape: tuple | None, device: str = "cpu") -> None:
        self.path, self.runtime, self.forward = path, runtime, forward
        self.input_shape, self.device = input_shape, device

    def __call__(self, x: torch.Tensor) -> object:
        return self.forward(x)

    def describe(self) -> dict:
        return {"path": self.path, "runtime": self.runtime, "device": self.device}


def runner_for(path: str, nb_threads: int | None = None, device: str = "cpu",
               load: Callable[[str], tuple] | None = None) -> Runner:
    """A runner by file suffix (``compression.artifacts.runtime_for``): a model artifact
    (``.ckpt``/``.pt``/``.pth``: eager torch, eval mode, no grad, on ``device``), an ONNX model
    (onnxruntime, CPU provider, ``intra_op_num_threads = nb_threads``), an ExecuTorch program
    (its thread pool set to ``nb_threads``), the int8 program (torch.export) or a registered
    format's file (``DeployFormat.load(path, nb_threads)``). ``load(path) -> (model, file
    dict)`` loads artifacts (default ``compression.artifacts.load_model``)."""
    runtime = runtime_for(path)
    if runtime is None:
        suffix = os.path.splitext(path)[1].lower()
        others = [f"{row.what} ({row.suffix})" for row in rows("deployment")
                  if row.suffix.startswith(".")]
        raise RunnerError(f"{path}: unknown model file type {suffix or '(no extension)'!r}; expected "
                          f"a model artifact ({', '.join(model_suffixes())}), {', '.join(others)}")
    if not os.path.isfile(path):
        raise RunnerError(f"no such file: {path}")
    device = str(device)
    if device != "cpu" and runtime != "torch":
        raise RunnerError(f"--device={device} runs only model artifacts (eager torch); {path} is run "
                          f"by {runtime} on the CPU: use --device=cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunnerError(f"--device={device}: no CUDA device is available")
    if runtime == "torch":
        if load is None:
            from compression.artifacts import load_model as load
        model, obj = load(path)
        model = model.to(device).eval()
        shape = (obj.get("meta") or {}).get("input_shape")

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(x.to(device))
        return Runner(path, runtime, forward, tuple(shape) if shape else None, device)
    if runtime == "torch.export":
        from deployment.pte import load_int8_program

        program = load_int8_program(path)

        def run_program(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return program(x.to("cpu", torch.float32))
        return Runner(path, runtime, run_program, None)
    if runtime == "onnxruntime":
        from deployment.onnx_export import onnx_session, run_session, session_input_shape

        session = onnx_session(path, nb_threads)
        return Runner(path, runtime, lambda x: run_session(session, x), session_input_shape(session))
    if runtime != "executorch":
        fmt = loadable_format(path)
        if fmt is None:
            raise RunnerError(f"{path}: no registered format runs {runtime} files (give its "
                              "DeployFormat a load function)")
        return Runner(path, runtime, fmt.load(path, nb_threads), None)
    from deployment.pte import PteModel, set_runtime_threads

    if nb_threads:   # before loading: the pool cannot be resized under a loaded program
        set_runtime_threads(nb_threads)
    program = PteModel(path)
    return Runner(path, runtime, program, tuple(program.planned_shape[1:]))


def compare_latency(runner_a: Callable, runner_b: Callable, input_shape: Sequence[int],
                    batch_sizes: Sequence[int] = (1, 64), nb_threads: int | None = None,
                    warmup: int = 5, repeats: int = 20, device: str = "cpu",
                    rounds: int = 3) -> dict:
    """Median ms per batch of A and of B, timed side by side (``time_side_by_side``: same random
    inputs' shape, same threads, ``rounds`` alternating rounds), and ``ratio_b_over_a`` per
    batch size (> 1: B is slower): ``{"a": {"bs1": ms, ..}, "b": {..}, "ratio_b_over_a": {..},
    "input_shape", "batch_sizes", "threads", "warmup", "repeats", "rounds", "device"}``."""
    ms = time_side_by_side({"a": runner_a, "b": runner_b}, input_shape, batch_sizes, nb_threads,
                           warmup, repeats, rounds, device)
    a, b = ms["a"], ms["b"]
    return {"a": a, "b": b, "ratio_b_over_a": {k: b[k] / a[k] for k in a},
            "input_shape": list(input_shape), "batch_sizes": list(batch_sizes), "threads": nb_threads,
            "warmup": warmup, "repeats": repeats, "rounds": rounds, "device": str(device)}


def time_runners(runners: dict, input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 64),
                 nb_threads: int | None = None, warmup: int = 5, repeats: int = 20,
                 rounds: int = 3) -> dict:
    """Median ms per batch of every runner (name -> ``x -> outputs``), measured side by side
    (``utils.model_stats.time_side_by_side``): ``{name: {"bs1": ms, ..}}``. ExecuTorch's pool
    ignores torch's setting and is sized when a program loads (``runner_for(path,
    nb_threads)``); runners loaded with another size get ``deployment.pte.PoolResizeError``
    here rather than timings at a thread count they do not use."""
    if nb_threads and any(getattr(r, "runtime", "") == "executorch" for r in runners.values()):
        from deployment.pte import set_runtime_threads

        set_runtime_threads(nb_threads)
    return time_side_by_side(runners, input_shape, batch_sizes, nb_threads, warmup, repeats,
                             rounds)
