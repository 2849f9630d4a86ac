"""Model size and cost: parameters, FLOPs (torch.utils.flop_counter), latency."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on one input (multiply-add = 2 FLOPs), as counted by
    ``torch.utils.flop_counter`` (convolutions and matrix products)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
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
