"""Model size and cost: parameters, FLOPs (torch.utils.flop_counter), latency."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from utils.malloc import note_untuned_timing


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
    if device.type == "cpu":
        note_untuned_timing()
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


def time_side_by_side(forwards: dict, input_shape: Sequence[int],
                      batch_sizes: Sequence[int] = (1, 64), nb_threads: int | None = None,
                      warmup: int = 5, repeats: int = 20, rounds: int = 3,
                      device: torch.device | str = "cpu") -> dict:
    """Median ms per batch of every forward (name -> ``x -> outputs``), measured side by side:
    ``rounds`` rounds, each timing every forward in turn (``repeats / rounds`` calls after
    ``warmup``), round ``r`` starting at forward ``r mod n`` so that none is always first, and
    drift of the machine (a 2-vCPU guest has slow spells of seconds) hits all of them alike;
    ``{name: {"bs1": ms, ..}}``."""
    per_round = max(1, -(-repeats // max(1, rounds)))
    samples: dict = {name: {f"bs{b}": [] for b in batch_sizes} for name in forwards}
    order = list(forwards.items())
    for r in range(max(1, rounds)):
        start = r % max(1, len(order))
        for name, forward in order[start:] + order[:start]:
            times = time_forward(forward, input_shape, batch_sizes, nb_threads, warmup, per_round,
                                 device)
            for key, ms in times.items():
                samples[name][key].append(ms)
    return {name: {key: statistics.median(values) for key, values in by_batch.items()}
            for name, by_batch in samples.items()}


@contextmanager
def _eval_mode(models: Iterable[nn.Module]) -> Iterator[None]:
    models = list(models)
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def measure_latency(model: nn.Module, input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 64),
                    nb_threads: int | None = None, warmup: int = 5, repeats: int = 20) -> dict:
    """Median wall time in ms of an eval-mode forward pass, per batch size (``{"bs1": ..}``)."""
    device = _device(model)
    with _eval_mode([model]):
        return time_forward(model, input_shape, batch_sizes, nb_threads, warmup, repeats, device)


def measure_latencies(models: dict, input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 64),
                      nb_threads: int | None = None, warmup: int = 5, repeats: int = 30,
                      rounds: int = 3) -> dict:
    """``measure_latency`` of several models (name -> module) side by side when they share a
    device (``time_side_by_side``), so that their ratios are not a drift of the machine between
    two measurements; one after the other otherwise: ``{name: {"bs1": ms, ..}}``."""
    devices = {_device(m) for m in models.values()}
    if len(devices) > 1:   # nothing to interleave across devices
        return {name: measure_latency(m, input_shape, batch_sizes, nb_threads, warmup, repeats)
                for name, m in models.items()}
    with _eval_mode(models.values()):
        return time_side_by_side(models, input_shape, batch_sizes, nb_threads, warmup, repeats,
                                 rounds, devices.pop())


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


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

