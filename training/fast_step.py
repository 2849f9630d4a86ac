"""How the one training loop can run the same step faster (docs/speed.md): memory formats,
autocast outputs back in float32, and the compile error handling of ``--compile``."""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

# --amp_dtype: float16 would need a GradScaler (its gradients underflow), so it is not offered
AMP_DTYPES = {"none": None, "bfloat16": torch.bfloat16}


def set_memory_format(model: nn.Module, memory_format: torch.memory_format) -> None:
    """Every 4-D parameter and buffer of ``model`` in ``memory_format``, in place (the
    Parameter objects, and so an optimizer's references to them, stay the same). The strides
    are the format's canonical ones even where size-1 dimensions make several layouts equal
    (a 1x1 kernel): the ones gradients get, which DDP's buckets expect."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dim() == 4:
                laid_out = torch.empty_like(tensor.data, memory_format=memory_format)
                if laid_out.stride() != tensor.stride():
                    tensor.data = laid_out.copy_(tensor.data)


def as_float32(outputs: Any) -> Any:
    """``outputs`` (a tensor, or a list/tuple/dict of them) with half-precision tensors cast
    to float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.dtype in (torch.float16, torch.bfloat16) else outputs
    if type(outputs) in (list, tuple):
        return type(outputs)(as_float32(value) for value in outputs)
    if isinstance(outputs, dict):
        return {key: as_float32(value) for key, value in outputs.items()}
    return outputs


def compile_error_reason(exc: BaseException) -> str:
    """One line naming why: the innermost cause's type and first non-empty line of its message
    (torch wraps a compiler's error in its own: ``__cause__``, dynamo's ``inner_exception``)."""
    names = [type(exc).__name__]
    while (inner := exc.__cause__ or getattr(exc, "inner_exception", None)) is not None:
        exc = inner
        names.append(type(exc).__name__)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{': '.join(dict.fromkeys(names))}: {lines[0] if lines else ''}"[:400]


def compile_guard():
    """Compile the backward together with the forward, so that any compilation error is
    raised by the first compiled forward (where the trainer falls back to eager) rather than
    by a later backward; a no-op on torch versions without this option."""
    try:
        from torch._functorch import config
    except ImportError:
        return contextlib.nullcontext()
    if not hasattr(config, "force_non_lazy_backward_lowering"):
        return contextlib.nullcontext()
    return config.patch(force_non_lazy_backward_lowering=True)
