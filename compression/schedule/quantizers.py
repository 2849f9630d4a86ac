"""DoReFa / PACT quantizers of a compression schedule (``compression.quantization.dorefa_pact``).

Distiller's semantics: ``bits_weights`` quantizes the weight of every conv/linear layer and
``bits_activations`` replaces every ReLU module by a clipped quantizer; ``overrides`` (module-name
regular expressions matched whole, the first match wins, names resolved by
``compression.schedule.names``) give a module its own bits, ``null`` leaving it in floating
point; a key an override omits keeps the default. This project's ``weights: [..]`` key
restricts weight quantization to the listed layers. ``bits_bias`` quantizes biases with the
weights' bits (any other bias width is refused).
"""
from __future__ import annotations

import re

from torch import nn

from compression.quantization.dorefa_pact import RELUS, attach_clipped_quantizers, optional_bits
from compression.sparsity.masks import maskable_layers
from compression.schedule.policy import Instance
from compression.schedule.range_linear import apply_range_linear, is_range_linear, range_bits

QUANTIZER_METHODS = {"DorefaQuantizer": "dorefa", "PACTQuantizer": "pact",
                     "QuantAwareTrainRangeLinearQuantizer": "range_linear_qat",
                     "PostTrainLinearQuantizer": "range_linear_ptq"}


def _override(instance: Instance, name: str) -> dict:
    for pattern, bits in (instance.params.get("overrides") or {}).items():
        if re.fullmatch(pattern, name):
            return bits
    return {}


def bits_of(model: nn.Module, instance: Instance) -> tuple[dict[str, int], dict[str, int]]:
    """(conv/linear layer -> weight bits, ReLU module -> activation bits) of the quantized ones."""
    p = instance.params
    if is_range_linear(instance.cls):
        weights, acts, _ = range_bits(model, instance)
        return weights, acts
    listed = {w[: -len(".weight")] for w in p["weights"]} if p.get("weights") else None
    weights, acts = {}, {}
    for name in maskable_layers(model):
        bits = optional_bits(_override(instance, name).get("bits_weights", p["bits_weights"]))
        if bits is not None and (listed is None or name in listed):
            weights[name] = bits
    for name, module in model.named_modules():
        if name and isinstance(module, RELUS):
            bits = optional_bits(_override(instance, name).get("bits_activations", p["bits_activations"]))
            if bits is not None:
                acts[name] = bits
    return weights, acts


def weight_layers(model: nn.Module, instance: Instance) -> list[str]:
    return list(bits_of(model, instance)[0])


def check_not_pruned(model: nn.Module, instance: Instance, pruned: set[str], by: str) -> None:
    """A quantizer may not cover weights a pruner masks (DoReFa would turn the pruned zeros into
    +-1/(2^k - 1)); the error names the quantizer's place in the file."""
    both = sorted(pruned & set(weight_layers(model, instance)))
    if both:
        raise instance.where.error(
            f"the quantizer would quantize weights {by} masks ({', '.join(both)}); leave them in "
            "floating point with overrides ({layer: {bits_weights: null}}) or list the quantized "
            "layers under 'weights:'")


def check_bias_bits(instance: Instance) -> None:
    p = instance.params
    if is_range_linear(instance.cls):   # Distiller's bits_bias: biases on their own grid
        return
    if p.get("bits_bias") is not None and optional_bits(p["bits_bias"]) != optional_bits(p["bits_weights"]):
        raise instance.at("bits_bias").error(
            f"biases are quantized with the weights' bits ({p['bits_weights']}); got bits_bias "
            f"{p['bits_bias']} (use null, or the same bits)")


def apply_quantizer(model: nn.Module, instance: Instance, batches=None) -> dict:
    """Attach the instance's weight and activation quantizers to ``model`` (in place);
    ``batches``: inputs a post-training quantizer may collect ranges on."""
    if is_range_linear(instance.cls):
        return apply_range_linear(model, instance, batches)
    p = instance.params
    check_bias_bits(instance)
    method = QUANTIZER_METHODS[instance.cls]
    weights, acts = bits_of(model, instance)
    bias = p["quantize_bias"] or p.get("bits_bias") is not None
    alpha = p.get("act_clip_init_val", 8.0)
    for bits in sorted(set(weights.values())):
        attach_clipped_quantizers(model, method, bits, None, [n for n, b in weights.items() if b == bits],
                                  [], alpha_init=alpha, quantize_bias=bias)
    for bits in sorted(set(acts.values())):
        attach_clipped_quantizers(model, method, None, bits, [], [n for n, b in acts.items() if b == bits],
                                  alpha_init=alpha)
    return {"instance": instance.name, "method": method,
            "weight_bits": optional_bits(p["bits_weights"]),
            "activation_bits": optional_bits(p["bits_activations"]),
            "weight_layers": list(weights), "activation_modules": list(acts),
            "bits": {"weights": weights, "activations": acts}}
