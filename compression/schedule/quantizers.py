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


def apply_quantizer(model: nn.Module, instance: Instance) -> dict:
    """Attach the instance's weight and activation quantizers to ``model`` (in place)."""
    p = instance.params
    info = attach_clipped_quantizers(model, QUANTIZER_METHODS[instance.cls], p["bits_weights"],
                                     p["bits_activations"], weight_layers(model, instance),
                                     alpha_init=p.get("act_clip_init_val", 8.0),
                                     quantize_bias=p["quantize_bias"])
    return {"instance": instance.name, **info}
