"""Distiller's range-based linear quantizers of a schedule (``compression.quantization.range_linear``).

``QuantAwareTrainRangeLinearQuantizer``: weights of every conv/linear layer fake-quantized from
their own min/max (per tensor or per output channel) at every step, every ``nn.ReLU`` module's
output fake-quantized with EMA-tracked ranges, the model's input too (``quantize_inputs``);
trained by the schedule. ``PostTrainLinearQuantizer``: the same quantizers with fixed ranges,
the activations' from ``model_activation_stats`` (Distiller's stats YAML: ``<module>: {output:
{min, max, avg_min, avg_max, ...}}``, names resolved as the schedule's) or, without a file,
collected over a few training batches; nothing is trained. ``overrides`` (module-name regex,
first match wins) set a module's bits, ``null`` leaving it in floating point.
"""
from __future__ import annotations

import os
import re

import torch
import yaml
from torch import nn
from torch.nn.utils import parametrize

from compression.quantization.range_linear import (INPUTS, FakeLinearQuant, RangeLinearWeight,
                                                   attach_range_linear, range_quantizers_of)
from compression.quantization.quantizers import optional_bits
from compression.schedule.names import candidates
from compression.schedule.policy import Instance
from compression.sparsity.masks import maskable_layers

from compression.schedule.range_linear_fields import PTQ, QAT
from compression.schedule.yaml_bounds import check_size, compose
from compression.schedule.yaml_nodes import plain
def modes(params: dict) -> dict[str, str]:
    mode = params.get("mode", "SYMMETRIC")
    return dict(mode) if isinstance(mode, dict) else {"activations": mode, "weights": mode}


def weight_bits(params: dict):
    if "bits_parameters" in params and params.get("bits_weights") is None:
        return params["bits_parameters"]
    return params["bits_weights"]


def _override(instance: Instance, name: str) -> dict:
    for pattern, bits in (instance.params.get("overrides") or {}).items():
        if re.fullmatch(pattern, name):
            return bits
    return {}


def range_bits(model: nn.Module, instance: Instance) -> tuple[dict, dict, dict]:
    """(layer -> weight bits, ReLU -> activation bits, layer -> bias bits) of the quantized ones."""
    p = instance.params
    weights, acts, bias = {}, {}, {}
    for name in maskable_layers(model):
        o = _override(instance, name)
        bits = optional_bits(o.get("bits_weights", weight_bits(p)))
        if bits is not None:
            weights[name] = bits
        b = optional_bits(o.get("bits_bias", p.get("bits_bias")))
        if b is not None and bits is not None:
            bias[name] = b
    for name, module in model.named_modules():
        if name and type(module) is nn.ReLU:   # Distiller replaces nn.ReLU modules only
            bits = optional_bits(_override(instance, name).get("bits_activations", p["bits_activations"]))
            if bits is not None:
                acts[name] = bits
    return weights, acts, bias


def apply_range_linear(model: nn.Module, instance: Instance, batches=None) -> dict:
    """Attach the instance's quantizers to ``model`` in place (PTQ: set their ranges)."""
    p, mode = instance.params, modes(instance.params)
    weights, acts, bias = range_bits(model, instance)
    ptq = instance.cls == PTQ
    inputs = None
    if not ptq and p["quantize_inputs"]:
        inputs = optional_bits(p["num_bits_inputs"] if p["num_bits_inputs"] is not None
                               else p["bits_activations"])
    attach_range_linear(model, weights, acts, mode, p["per_channel_wts"], p.get("ema_decay", 0.999),
                        input_bits=inputs)
    for name, bits in bias.items():
        layer = model.get_submodule(name)
        if layer.bias is not None:
            parametrize.register_parametrization(layer, "bias",
                                                 RangeLinearWeight(bits, mode["weights"], False))
    info = {"instance": instance.name, "method": "range_linear_ptq" if ptq else "range_linear_qat",
            "mode": mode, "per_channel_wts": p["per_channel_wts"],
            "weight_bits": optional_bits(weight_bits(p)),
            "activation_bits": optional_bits(p["bits_activations"]),
            "weight_layers": list(weights), "activation_modules": list(acts),
            "input_bits": inputs, "bits": {"weights": weights, "activations": acts, "bias": bias},
            "float_layers": [n for n in maskable_layers(model) if n not in weights],
            "float_activations": [n for n, m in model.named_modules()
                                  if isinstance(m, nn.ReLU) and type(m) is nn.ReLU and n]}
    if ptq:
        info["ranges"] = set_ptq_ranges(model, instance, batches)
    return info


def stats_path(instance: Instance) -> str:
    """``model_activation_stats`` as written (from the working directory, as Distiller reads
    it), else relative to the schedule file's folder."""
    path = instance.params["model_activation_stats"]
    beside = os.path.join(os.path.dirname(instance.where.file), path)
    return path if os.path.isfile(path) or os.path.isabs(path) or not os.path.isfile(beside) \
        else beside


def load_stats(instance: Instance) -> dict:
    """Distiller's activation statistics YAML, read within the schedule files' bounds (size,
    nesting, aliases: a hostile file cannot exhaust the machine); errors name the key."""
    where, path = instance.at("model_activation_stats"), stats_path(instance)
    if not os.path.isfile(path):
        raise where.error(f"no such statistics file {path!r} (relative paths: from the working "
                          "directory or the schedule's folder)")
    too_large = check_size(path)
    try:
        if too_large:
            raise ValueError(too_large)
        with open(path, encoding="utf-8") as handle:
            node = compose(handle.read())
        stats = plain(node) if node is not None else None
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise where.error(f"cannot read the statistics file {path!r} ({exc})") from None
    if not isinstance(stats, dict):
        raise where.error(f"{path}: expected Distiller's activation statistics "
                          "(module: {inputs: ..., output: {min, max, avg_min, avg_max, ...}})")
    return stats


def _stats_for(stats: dict, name: str) -> dict | None:
    """The stats entry of model module ``name`` (file names mapped as the schedule's)."""
    for key, entry in stats.items():
        if name in candidates(str(key), {}) or str(key) == name:
            return entry
    return None


def set_ptq_ranges(model: nn.Module, instance: Instance, batches) -> dict:
    """Fixed ranges of every activation quantizer: from the stats file (``output`` of the
    ReLU's entry; the input's: the ``inputs.0`` entry of the first conv/linear layer) or
    collected over ``batches`` (Distiller's stats collector: per-batch min/max, averaged
    for AVG, extremes for NONE)."""
    p = instance.params
    prefix = "avg_" if p["clip_acts"] == "AVG" else ""
    quantizers = range_quantizers_of(model)
    stats = load_stats(instance) if p.get("model_activation_stats") else {}
    ranges, missing = {}, []
    for name, q in quantizers.items():
        entry = _stats_for(stats, name)
        if entry is not None and isinstance(entry.get("output"), dict):
            ranges[name] = (float(entry["output"][prefix + "min"]), float(entry["output"][prefix + "max"]))
        else:
            missing.append(name)
    if missing:
        if batches is None:
            raise instance.at("model_activation_stats").error(
                f"no statistics for {', '.join(missing)} in the file and no batches to collect them")
        collected = collect_ranges(model, [quantizers[n] for n in missing], batches, p["clip_acts"] == "AVG")
        ranges.update(dict(zip(missing, collected)))
    for name, (low, high) in ranges.items():
        quantizers[name].set_range(low, high)
    return {"from_file": sorted(set(ranges) - set(missing)), "collected": missing,
            "clip_acts": p["clip_acts"], "values": {n: list(r) for n, r in ranges.items()}}


@torch.no_grad()
def collect_ranges(model: nn.Module, modules: list[FakeLinearQuant], batches, average: bool) -> list:
    seen: dict[int, list] = {id(m): [] for m in modules}

    def hook(module, args):
        x = torch.relu(args[0]) if module.relu else args[0]
        seen[id(module)].append((float(x.min()), float(x.max())))

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    mode = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for x in batches:
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(mode)
    out = []
    for m in modules:
        lows, highs = zip(*seen[id(m)])
        out.append((sum(lows) / len(lows), sum(highs) / len(highs)) if average else (min(lows), max(highs)))
    return out


def int8_problem(infos: list[dict]) -> str | None:
    """Why the range-quantized model cannot be lowered to an int8 program (None: it can)."""
    if len(infos) != 1:
        return "more than one range-linear quantizer instance"
    info = infos[0]
    bits = info["bits"]
    if any(b != 8 for b in bits["weights"].values()) or any(b != 8 for b in bits["activations"].values()):
        return "int8 needs 8-bit weights and activations (got other widths)"
    if not info["per_channel_wts"]:
        return ("int8 weights are per output channel (XNNPACK); per_channel_wts is false, and a "
                "per-tensor grid does not survive batch-norm folding")
    if not info["mode"]["weights"].startswith("SYMMETRIC"):
        return f"int8 weights are symmetric (XNNPACK); the weights' mode is {info['mode']['weights']}"
    if info["float_layers"] or info["float_activations"]:
        return ("overrides leave layers in floating point ("
                f"{', '.join([*info['float_layers'], *info['float_activations']][:6])}), which the "
                "int8 program (every conv/linear in int8) cannot keep")
    if bits["bias"]:
        return "quantized biases (bits_bias) are not lowered (the int8 program's biases are int32)"
    return None


def is_range_linear(cls: str) -> bool:
    return cls in (QAT, PTQ)


def input_quantizer(model: nn.Module) -> FakeLinearQuant | None:
    return getattr(model, INPUTS, None)
