"""Model size and cost: parameters, FLOPs (torch.utils.flop_counter), latency."""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def probe_forward(model: nn.Module, input_shape: Sequence[int], handles: Sequence = ()) -> object:
    """One forward pass of a zero input of ``input_shape`` (batch 1) in eval mode without
    gradients, on the model's device; the training mode is restored and the hook ``handles``
    (registered by the caller to observe the pass) are removed afterwards, even on error."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on one input (multiply-add = 2 FLOPs), as counted by
    ``torch.utils.flop_counter`` (convolutions and matrix products)."""
    with FlopCounterMode(display=False) as counter:
        probe_forward(model, input_shape)
    return int(counter.get_total_flops())


@contextmanager
def torch_threads(nb_threads: int | None) -> Iterator[None]:
    """Temporarily fix the number of intra-op threads (None: leave as is)."""
    previous = torch.get_num_threads()
    if nb_threads:
        torch.set_num_threads(nb_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_forward(forward: Callable[[torch.Tensor], object], input_shape: Sequence[int],
                 batch_sizes: Sequence[int] = (1, 64), nb_threads: int | None = None,
                 warmup: int = 5, repeats: int = 20, device: torch.device | str = "cpu") -> dict:
    """Median wall time in ms of ``forward(inputs)`` per batch size (``{"bs1": ..}``): any
    callable (an eager model, an ExecuTorch program, an onnxruntime session wrapper)."""
    device = torch.device(device)
    results = {}
    with torch.no_grad(), torch_threads(nb_threads):
        for batch in batch_sizes:
            inputs = torch.randn(batch, *input_shape, device=device)
            for _ in range(warmup):
                forward(inputs)
            times = []
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                forward(inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - start) * 1e3)
            results[f"bs{batch}"] = statistics.median(times)
    return results


def measure_latency(model: nn.Module, input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 64),
                    nb_threads: int | None = None, warmup: int = 5, repeats: int = 20) -> dict:
    """Median wall time in ms of an eval-mode forward pass, per batch size (``{"bs1": ..}``)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return time_forward(model, input_shape, batch_sizes, nb_threads, warmup, repeats, device)
    finally:
        model.train(was_training)


# -- latency of saved models (tools/latency.py) ------------------------------------------------
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth")
RUNTIMES = {**{s: "torch" for s in TORCH_SUFFIXES}, ".onnx": "onnxruntime", ".pte": "executorch",
            ".pt2": "torch.export"}  # .pt2: uniform-tf's int8 PyTorch model, run eagerly


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
    """A runner by file extension: a model artifact (``.ckpt``/``.pt``/``.pth``: eager torch,
    eval mode, no grad, on ``device``), an ``.onnx`` (onnxruntime, CPU provider,
    ``intra_op_num_threads = nb_threads``) or a ``.pte`` (ExecuTorch, its thread pool set to
    ``nb_threads``). ``load(path) -> (model, file dict)`` loads artifacts (default
    ``utils.model_io.load_model``)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in RUNTIMES:
        raise RunnerError(f"{path}: unknown model file type {suffix or '(no extension)'!r}; expected "
                          f"a model artifact ({', '.join(TORCH_SUFFIXES)}), an .onnx, a .pte or an "
                          "int8 .pt2 file")
    if not os.path.isfile(path):
        raise RunnerError(f"no such file: {path}")
    runtime = RUNTIMES[suffix]
    device = str(device)
    if device != "cpu" and runtime != "torch":
        raise RunnerError(f"--device={device} runs only model artifacts (eager torch); {path} is run "
                          f"by {runtime} on the CPU: use --device=cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunnerError(f"--device={device}: no CUDA device is available")
    if runtime == "torch":
        if load is None:
            from utils.model_io import load_model as load
        model, obj = load(path)
        model = model.to(device).eval()
        shape = (obj.get("meta") or {}).get("input_shape")

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(x.to(device))
        return Runner(path, runtime, forward, tuple(shape) if shape else None, device)
    if runtime == "torch.export":
        from compression.int8_qat import load_int8_program

        program = load_int8_program(path)

        def run_program(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return program(x.to("cpu", torch.float32))
        return Runner(path, runtime, run_program, None)
    if runtime == "onnxruntime":
        from utils.onnx_export import onnx_session, run_session, session_input_shape

        session = onnx_session(path, nb_threads)
        return Runner(path, runtime, lambda x: run_session(session, x), session_input_shape(session))
    from compression.int8_qat import PteModel, set_runtime_threads

    program = PteModel(path)
    if nb_threads:
        set_runtime_threads(nb_threads)
    return Runner(path, runtime, program, tuple(program.planned_shape[1:]))


def compare_latency(runner_a: Callable, runner_b: Callable, input_shape: Sequence[int],
                    batch_sizes: Sequence[int] = (1, 64), nb_threads: int | None = None,
                    warmup: int = 5, repeats: int = 20, device: str = "cpu") -> dict:
    """Median ms per batch of A and of B (``time_forward``, same random inputs' shape, same
    threads), and ``ratio_b_over_a`` per batch size (> 1: B is slower):
    ``{"a": {"bs1": ms, ..}, "b": {..}, "ratio_b_over_a": {..}, "input_shape", "batch_sizes",
    "threads", "warmup", "repeats", "device"}``."""
    timing = dict(batch_sizes=batch_sizes, nb_threads=nb_threads, warmup=warmup, repeats=repeats,
                  device=device)
    a = time_forward(runner_a, input_shape, **timing)
    b = time_forward(runner_b, input_shape, **timing)
    return {"a": a, "b": b, "ratio_b_over_a": {k: b[k] / a[k] for k in a},
            "input_shape": list(input_shape), "batch_sizes": list(batch_sizes), "threads": nb_threads,
            "warmup": warmup, "repeats": repeats, "device": str(device)}


def time_runners(runners: dict, input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 64),
                 nb_threads: int | None = None, warmup: int = 5, repeats: int = 20,
                 rounds: int = 3) -> dict:
    """Median ms per batch of every runner (name -> ``x -> outputs``), measured side by side:
    ``rounds`` rounds, each timing every runner in turn (``repeats / rounds`` calls after
    ``warmup``), round ``r`` starting at runner ``r mod n`` so that no runner is always first,
    and drift of the machine hits all of them alike; ``{name: {"bs1": ms, ..}}``.
    ExecuTorch's pool is resized to ``nb_threads`` as well (it ignores torch's setting)."""
    if nb_threads and any(getattr(r, "runtime", "") == "executorch" for r in runners.values()):
        from compression.int8_qat import set_runtime_threads

        set_runtime_threads(nb_threads)
    per_round = max(1, -(-repeats // rounds))
    samples: dict = {name: {f"bs{b}": [] for b in batch_sizes} for name in runners}
    order = list(runners.items())
    for r in range(rounds):
        start = r % max(1, len(order))
        for name, runner in order[start:] + order[:start]:
            times = time_forward(runner, input_shape, batch_sizes, nb_threads, warmup, per_round)
            for key, ms in times.items():
                samples[name][key].append(ms)
    return {name: {key: statistics.median(values) for key, values in by_batch.items()}
            for name, by_batch in samples.items()}


class OutputShapeMismatch(ValueError):
    """Two runners give outputs of different shapes for the same inputs."""


def compare_runners(runner: Callable, reference: Callable, batches: Iterable,
                    max_batches: int = 0) -> dict:
    """``runner`` vs ``reference`` (callables ``x -> logits``) over ``(inputs, labels)``
    batches (``labels`` None: no accuracies): ``{"max_abs_diff", "max_abs_output" (of the
    reference), "nb_samples", "accuracy_torch" (the reference's), "accuracy" (the runner's),
    "top1_agreement"}``; accuracy = argmax of the logits == label."""
    diff, scale, count, correct_ref, correct_run, agree, labelled = 0.0, 0.0, 0, 0, 0, 0, False
    with torch.no_grad():
        for i, (inputs, labels) in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            inputs = inputs.to("cpu", torch.float32)
            expected, got = reference(inputs).float(), runner(inputs).float()
            if got.shape != expected.shape:
                raise OutputShapeMismatch(f"outputs of shape {list(got.shape)}, the model gives "
                                          f"{list(expected.shape)}")
            diff = max(diff, float((got - expected).abs().max()))
            scale = max(scale, float(expected.abs().max()))
            count += inputs.shape[0]
            agree += int((got.argmax(1) == expected.argmax(1)).sum())
            if labels is not None:
                labelled = True
                correct_ref += int((expected.argmax(1) == labels).sum())
                correct_run += int((got.argmax(1) == labels).sum())
    accuracy = (lambda n: n / count) if labelled and count else (lambda n: None)
    return {"max_abs_diff": diff, "max_abs_output": scale, "nb_samples": count,
            "accuracy_torch": accuracy(correct_ref), "accuracy": accuracy(correct_run),
            "top1_agreement": agree / count if count else None}

