"""The ``act_quant`` architecture transform: activation quantizers recorded in a model spec.

A quantized artifact keeps its activation quantizers (their frozen ranges are buffers in the
state dict), so ``compression.artifacts.load_model`` rebuilds the model exactly as it was evaluated.
"""
from __future__ import annotations

from torch import nn

from compression.quantization.activations import attach_activation_quantizers
from utils.model_io import register_spec_transform


def act_quant_entry(names: list[str], bits: int) -> dict:
    return {"type": "act_quant", "names": list(names), "bits": int(bits)}


@register_spec_transform("act_quant")
def _attach(model: nn.Module, entry: dict) -> nn.Module:
    attach_activation_quantizers(model, entry["names"], entry["bits"])
    return model
