"""DoReFa / PACT quantizers of a compression schedule (``compression.dorefa_pact``)."""
from __future__ import annotations

from torch import nn

from compression.dorefa_pact import attach_clipped_quantizers
from compression.masks import maskable_layers
from compression.schedule.policy import Instance

QUANTIZER_METHODS = {"DorefaQuantizer": "dorefa", "PACTQuantizer": "pact"}


def weight_layers(model: nn.Module, instance: Instance) -> list[str]:
    """The YAML's ``weights`` or every conv/linear layer except the first and the last."""
    if instance.params.get("weights"):
        return [w[: -len(".weight")] for w in instance.params["weights"]]
    names = list(maskable_layers(model))
    return names[1:-1] if len(names) > 2 else names


def check_not_pruned(model: nn.Module, instance: Instance, pruned: set[str], by: str) -> None:
    """A quantizer may not cover weights a pruner masks (DoReFa would turn the pruned zeros into
    +-1/(2^k - 1)); the error names the quantizer's place in the file."""
    both = sorted(pruned & set(weight_layers(model, instance)))
    if both:
        raise instance.where.error(
            f"the quantizer would quantize weights {by} masks ({', '.join(both)}); list the "
            "quantized layers under 'weights:' without them")


def apply_quantizer(model: nn.Module, instance: Instance) -> dict:
    """Attach the instance's weight and activation quantizers to ``model`` (in place)."""
    p = instance.params
    info = attach_clipped_quantizers(model, QUANTIZER_METHODS[instance.cls], p["bits_weights"],
                                     p["bits_activations"], weight_layers(model, instance),
                                     alpha_init=p.get("act_clip_init_val", 8.0),
                                     quantize_bias=p["quantize_bias"])
    return {"instance": instance.name, **info}
