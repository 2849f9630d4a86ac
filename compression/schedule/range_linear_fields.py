"""Keys of Distiller's range-linear quantizers in a schedule (``compression.schedule.schema``
adds them to its ``quantizers`` section; ``compression.schedule.range_linear`` applies them)."""
from __future__ import annotations

from compression.quantization.range_linear import MODES

QAT, PTQ = "QuantAwareTrainRangeLinearQuantizer", "PostTrainLinearQuantizer"
CLIP_MODES = ("NONE", "AVG", "N_STD", "GAUSS", "LAPLACE")
SUPPORTED_CLIPS = ("NONE", "AVG")


def _mode(value) -> str | None:
    if isinstance(value, str):
        return None if value in MODES else f"must be one of {', '.join(MODES)}, got {value!r}"
    if isinstance(value, dict) and set(value) == {"activations", "weights"}:
        bad = [v for v in value.values() if v not in MODES]
        return None if not bad else f"modes must be among {', '.join(MODES)}, got {bad[0]!r}"
    return ("must be a mode or {activations: <mode>, weights: <mode>} (Distiller's "
            f"ModuleQuantMode), got {value!r}")


def _accum(value) -> str | None:
    return None if value == 32 else (f"only 32 is supported, got {value!r}: the accumulator is "
                                     "float32 in the fake-quantized model and int32 in the int8 program")


def _bits(value) -> str | None:
    return None if value is None or 1 <= value <= 16 or value == 32 else \
        f"must be in [1, 16] or 32 (full precision), got {value!r}"


def _decay(value) -> str | None:
    return None if 0 < value < 1 else f"must be in (0, 1), got {value!r}"


def _clip(value) -> str | None:
    if value not in CLIP_MODES:
        return f"must be one of {', '.join(CLIP_MODES)}, got {value!r}"
    if value not in SUPPORTED_CLIPS:
        return (f"{value} is not supported (only NONE and AVG): N_STD needs per-batch mean/std "
                "clipping of weights and activations, GAUSS/LAPLACE Distiller's ACIQ clippers, "
                "which are not implemented")
    return None


_COMMON = {"bits_activations": ("opt_int", 32, _bits), "bits_bias": ("opt_int", None, _bits),
           "bits_accum": ("int", 32, _accum), "mode": ("any", "SYMMETRIC", _mode),
           "per_channel_wts": ("bool", False), "overrides": ("overrides", None)}

FIELDS = {
    QAT: {**_COMMON, "bits_weights": ("opt_int", 32, _bits),
          "ema_decay": ("number", 0.999, _decay), "quantize_inputs": ("bool", True),
          "num_bits_inputs": ("opt_int", None, _bits)},
    PTQ: {**_COMMON, "bits_parameters": ("opt_int", 32, _bits),
          "bits_weights": ("opt_int", None, _bits),  # an alias some files use
          "model_activation_stats": ("opt_str", None),
          "clip_acts": ("str", "NONE", _clip), "clip_n_stds": ("opt_number", None)},
}
