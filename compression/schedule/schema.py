"""What each section of a compression-schedule YAML may hold: class name -> its keys.

A ``Field`` says a key's kind (checked and converted by ``compression.schedule.policy``), its
default (``REQUIRED`` when it has none) and an optional range check returning an error text.
Class-wide checks (e.g. AGP's initial <= final sparsity) are ``CHECKS[class]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

REQUIRED = object()
STRUCTURES = ("3D", "Channels")
THINNING_FUNCS = {"FilterRemover": "remove_filters", "ChannelRemover": "remove_channels"}


@dataclass(frozen=True)
class Field:
    kind: str  # number | int | bool | str | names | ints | l1_regims | struct_regims | any
    default: Any = REQUIRED
    check: Callable[[Any], str | None] | None = None


def _sparsity(value: float) -> str | None:
    return None if 0.0 <= value < 1.0 else f"must be in [0, 1), got {value!r}"


def _fraction(value: float) -> str | None:
    return None if 0.0 <= value < 1.0 else f"fraction must be in [0, 1), got {value!r}"


def _bits(value: int) -> str | None:
    if 1 <= value <= 16 or value == 32:
        return None
    return f"must be in [1, 16] or 32 (full precision), got {value!r}"


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be positive, got {value!r}"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value!r}"


def _gamma(value: float) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value!r}"


def _milestones(value: list) -> str | None:
    if any(m < 1 for m in value) or sorted(value) != list(value):
        return f"must be increasing epochs >= 1, got {value!r}"
    return None


_QUANT = {
    "bits_activations": Field("int", 32, _bits),
    "bits_weights": Field("int", 32, _bits),
    "quantize_bias": Field("bool", False),
    "weights": Field("names", None),  # default: every conv/linear except the first and last
}

CLASSES: dict[str, dict[str, dict[str, Field]]] = {
    "pruners": {
        "AutomatedGradualPruner": {
            "initial_sparsity": Field("number", REQUIRED, _sparsity),
            "final_sparsity": Field("number", REQUIRED, _sparsity),
            "weights": Field("names"),
        },
        "L1RankedStructureParameterPruner": {"reg_regims": Field("struct_regims")},
    },
    "regularizers": {
        "L1Regularizer": {"reg_regims": Field("l1_regims")},
        "GroupLassoRegularizer": {"reg_regims": Field("struct_regims")},
    },
    "quantizers": {
        "DorefaQuantizer": dict(_QUANT),
        "PACTQuantizer": {**_QUANT, "act_clip_init_val": Field("number", 8.0, _positive),
                          "act_clip_decay": Field("number", 0.0, _non_negative)},
    },
    "lr_schedulers": {
        "StepLR": {"step_size": Field("int", REQUIRED, _positive), "gamma": Field("number", 0.1, _gamma)},
        "MultiStepLR": {"milestones": Field("ints", REQUIRED, _milestones),
                        "gamma": Field("number", 0.1, _gamma)},
        "ExponentialLR": {"gamma": Field("number", REQUIRED, _gamma)},
    },
    "extensions": {
        cls: {"thinning_func_str": Field("str", func, None), "arch": Field("any", None),
              "dataset": Field("any", None)}
        for cls, func in THINNING_FUNCS.items()
    },
}

SECTIONS = tuple(CLASSES)
# a policy entry's kind -> the section its instance_name refers to
POLICY_KINDS = {"pruner": "pruners", "regularizer": "regularizers", "quantizer": "quantizers",
                "lr_scheduler": "lr_schedulers", "extension": "extensions"}
EPOCH_KEYS = ("starting_epoch", "ending_epoch", "frequency", "epochs")


def _agp_order(params: dict) -> tuple[str, str] | None:
    if params["initial_sparsity"] > params["final_sparsity"]:
        return ("initial_sparsity", f"initial_sparsity {params['initial_sparsity']} is larger than "
                                    f"final_sparsity {params['final_sparsity']}")
    return None


def _thinning_func(cls: str) -> Callable[[dict], tuple[str, str] | None]:
    def check(params: dict) -> tuple[str, str] | None:
        valid = set(THINNING_FUNCS.values())
        if params["thinning_func_str"] not in valid:
            return ("thinning_func_str", f"must be one of {', '.join(sorted(valid))}, got "
                                         f"{params['thinning_func_str']!r}")
        return None
    return check


# class -> check(params) returning (key, message) on an error
CHECKS: dict[str, Callable[[dict], tuple[str, str] | None]] = {
    "AutomatedGradualPruner": _agp_order,
    **{cls: _thinning_func(cls) for cls in THINNING_FUNCS},
}


def check_struct_entry(value: Any) -> str | None:
    """``[fraction, '3D' | 'Channels']``."""
    if not (isinstance(value, list) and len(value) == 2):
        return "expected [fraction, '3D' | 'Channels']"
    fraction, structure = value
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        return f"expected a number as the fraction, got {fraction!r}"
    if structure not in STRUCTURES:
        return f"structure must be one of {', '.join(STRUCTURES)}, got {structure!r}"
    return None
