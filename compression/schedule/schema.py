"""What each section of a compression-schedule YAML may hold: class name -> its keys.

A ``Field`` says a key's kind (checked and converted by ``compression.schedule.policy``), its
default (``REQUIRED`` when it has none) and an optional range check returning an error text.
Class-wide checks (e.g. AGP's initial <= final sparsity) are ``CHECKS[class]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

REQUIRED = object()
# structures of a ranked pruner (Distiller's group_type; ``3D`` = ``Filters``; ``Rows`` of a 2-D
# weight = its input columns, as Distiller's rank_and_prune_channels treats them)
STRUCTURES = ("3D", "Filters", "Channels", "Rows")
# structures of a group-lasso regularizer (Distiller's GroupLassoRegularizer groups)
LASSO_STRUCTURES = ("3D", "Filters", "Channels", "Rows", "Cols", "4D")
THINNING_FUNCS = {"FilterRemover": "remove_filters", "ChannelRemover": "remove_channels",
                  "StructureRemover": None}
THRESHOLD_CRITERIA = ("Max", "Mean_Abs")


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


def _choice(*valid: str) -> Callable[[Any], str | None]:
    return lambda value: None if value in valid else f"must be one of {', '.join(valid)}, got {value!r}"


def _optional_bits(value: Any) -> str | None:
    return None if value is None else _bits(value)


def _group_size(value: int) -> str | None:
    return None if value >= 1 else f"must be >= 1, got {value!r}"


def _noise(value: float) -> str | None:
    return None if value == 0 else (f"only 0 is supported (a deterministic ranking), got {value!r}; "
                                    "use RandomRankedFilterPruner for random filters")


_QUANT = {
    "bits_activations": Field("opt_int", 32, _optional_bits),
    "bits_weights": Field("opt_int", 32, _optional_bits),
    "bits_bias": Field("opt_int", None, _optional_bits),
    "quantize_bias": Field("bool", False),
    "overrides": Field("overrides", None),  # Distiller: module-name regex -> bits (null: float)
    "weights": Field("names", None),  # this project's: only these layers (default: every conv/linear)
}
_GROUP_TYPE = Field("str", REQUIRED, _choice(*STRUCTURES))
_RANKED = {"group_type": _GROUP_TYPE, "weights": Field("names"),
           "group_dependency": Field("opt_str", None, _choice("Leader")),
           "group_size": Field("int", 1, _group_size), "noise": Field("number", 0.0, _noise),
           "kwargs": Field("any", None)}
_AGP_RATE = {"initial_sparsity": Field("number", REQUIRED, _sparsity),
             "final_sparsity": Field("number", REQUIRED, _sparsity)}
# the ranked (structure) pruners: class -> how it ranks the structures
RANKINGS = {"L1RankedStructureParameterPruner": "l1", "L2RankedStructureParameterPruner": "l2",
            "RandomRankedFilterPruner": "random", "ActivationAPoZRankedFilterPruner": "apoz",
            "ActivationMeanRankedFilterPruner": "mean_act"}
FILTERS_ONLY = ("RandomRankedFilterPruner", "ActivationAPoZRankedFilterPruner",
                "ActivationMeanRankedFilterPruner")


def _ranked_classes() -> dict[str, dict[str, Field]]:
    out = {}
    for cls in RANKINGS:
        fixed = {**_RANKED, "desired_sparsity": Field("number", REQUIRED, _sparsity)}
        if cls == "L1RankedStructureParameterPruner":   # also the older reg_regims form
            fixed = {**_RANKED, "group_type": Field("str", None, _choice(*STRUCTURES)),
                     "desired_sparsity": Field("number", None, _sparsity), "weights": Field("names", None),
                     "reg_regims": Field("struct_regims", None)}
        out[cls] = fixed
        out[f"{cls}_AGP"] = {**_AGP_RATE, **_RANKED}
    return out


_LEVELS = Field("levels", REQUIRED)

CLASSES: dict[str, dict[str, dict[str, Field]]] = {
    "pruners": {
        "AutomatedGradualPruner": {**_AGP_RATE, "weights": Field("names")},
        **_ranked_classes(),
        "SparsityLevelParameterPruner": {"levels": _LEVELS},
        "SensitivityPruner": {"sensitivities": _LEVELS},
        "MagnitudeParameterPruner": {"thresholds": _LEVELS},
        # Distiller's SplicingPruner.__init__ (distiller/pruning/splicing_pruner.py:35)
        "SplicingPruner": {"sensitivities": _LEVELS,
                           "low_thresh_mult": Field("number", REQUIRED, _non_negative),
                           "hi_thresh_mult": Field("number", REQUIRED, _non_negative),
                           "sensitivity_multiplier": Field("number", 0.0, _non_negative)},
    },
    "regularizers": {
        "L1Regularizer": {"reg_regims": Field("l1_regims"),
                          "threshold_criteria": Field("opt_str", None, _choice(*THRESHOLD_CRITERIA))},
        "GroupLassoRegularizer": {"reg_regims": Field("lasso_regims"),
                                  "threshold_criteria": Field("opt_str", None,
                                                              _choice(*THRESHOLD_CRITERIA))},
        # Distiller's group variance (Torfi et al. 2018): input channels only, as its code
        "GroupVarianceRegularizer": {"reg_regims": Field("variance_regims"),
                                     "threshold_criteria": Field("opt_str", None,
                                                                 _choice(*THRESHOLD_CRITERIA))},
    },
    "quantizers": {
        "DorefaQuantizer": dict(_QUANT),
        "PACTQuantizer": {**_QUANT, "act_clip_init_val": Field("number", 8.0, _positive),
                          "act_clip_decay": Field("opt_number", 0.0, _non_negative)},
    },
    "lr_schedulers": {
        "StepLR": {"step_size": Field("int", REQUIRED, _positive), "gamma": Field("number", 0.1, _gamma)},
        "MultiStepLR": {"milestones": Field("ints", REQUIRED, _milestones),
                        "gamma": Field("number", 0.1, _gamma)},
        "MultiStepMultiGammaLR": {"milestones": Field("ints", REQUIRED, _milestones),
                                  "gammas": Field("numbers", REQUIRED)},
        "ExponentialLR": {"gamma": Field("number", REQUIRED, _gamma)},
        "CosineAnnealingLR": {"T_max": Field("int", REQUIRED, _positive),
                              "eta_min": Field("number", 0.0, _non_negative)},
        "PolynomialLR": {"T_max": Field("int", REQUIRED, _positive),
                         "power": Field("number", 1.0, _non_negative)},
    },
    "extensions": {
        cls: {"thinning_func_str": Field("str", func or REQUIRED, None), "arch": Field("any", None),
              "dataset": Field("any", None)}
        for cls, func in THINNING_FUNCS.items()
    },
}

from compression.schedule.range_linear_fields import FIELDS as _RANGE_LINEAR  # noqa: E402

CLASSES["quantizers"].update({cls: {key: Field(*item) for key, item in keys.items()}
                             for cls, keys in _RANGE_LINEAR.items()})
SECTIONS = tuple(CLASSES)
# a policy entry's kind -> the section its instance_name refers to
POLICY_KINDS = {"pruner": "pruners", "regularizer": "regularizers", "quantizer": "quantizers",
                "lr_scheduler": "lr_schedulers", "extension": "extensions"}
EPOCH_KEYS = ("starting_epoch", "ending_epoch", "frequency", "epochs")


def _agp_order(params: dict) -> tuple[str, str] | None:
    if "initial_sparsity" in params and params["initial_sparsity"] > params["final_sparsity"]:
        return ("initial_sparsity", f"initial_sparsity {params['initial_sparsity']} is larger than "
                                    f"final_sparsity {params['final_sparsity']}")
    return None


def _thinning_func(params: dict) -> tuple[str, str] | None:
    valid = sorted(f for f in THINNING_FUNCS.values() if f)
    if params["thinning_func_str"] not in valid:
        return ("thinning_func_str", f"must be one of {', '.join(valid)}, got "
                                     f"{params['thinning_func_str']!r}")
    return None


def _ranked_form(params: dict) -> tuple[str, str] | None:
    """L1RankedStructureParameterPruner: the older ``reg_regims`` form or Distiller's current
    ``group_type`` / ``desired_sparsity`` / ``weights`` form, not both."""
    current = [k for k in ("group_type", "desired_sparsity", "weights") if params.get(k) is not None]
    if params.get("reg_regims") is not None:
        if current:
            return (current[0], "give either reg_regims or group_type/desired_sparsity/weights, not both")
        return None
    missing = [k for k in ("group_type", "desired_sparsity", "weights") if params.get(k) is None]
    if missing:
        return ("group_type" if "group_type" not in missing else "class",
                f"missing key {missing[0]!r} (give group_type, desired_sparsity and weights, or the "
                "older reg_regims: {weight: [fraction, '3D' | 'Channels']})")
    return None


def _filters_only(params: dict) -> tuple[str, str] | None:
    if params["group_type"] not in ("3D", "Filters"):
        return ("group_type", f"this pruner ranks filters: group_type must be Filters or 3D, got "
                              f"{params['group_type']!r}")
    return None


def _gammas(params: dict) -> tuple[str, str] | None:
    if len(params["gammas"]) != len(params["milestones"]):
        return ("gammas", f"needs one gamma per milestone: {len(params['milestones'])} milestones, "
                          f"{len(params['gammas'])} gammas")
    if any(g <= 0 for g in params["gammas"]):
        return ("gammas", f"gammas must be positive, got {params['gammas']!r}")
    return None


def _both(*checks: Callable[[dict], tuple[str, str] | None]) -> Callable[[dict], tuple[str, str] | None]:
    def check(params: dict) -> tuple[str, str] | None:
        for one in checks:
            problem = one(params)
            if problem:
                return problem
        return None
    return check


# class -> check(params) returning (key, message) on an error
CHECKS: dict[str, Callable[[dict], tuple[str, str] | None]] = {
    "AutomatedGradualPruner": _agp_order,
    "L1RankedStructureParameterPruner": _ranked_form,
    **{f"{cls}_AGP": _agp_order for cls in RANKINGS if cls not in FILTERS_ONLY},
    **{f"{cls}_AGP": _both(_agp_order, _filters_only) for cls in FILTERS_ONLY},
    **{cls: _filters_only for cls in FILTERS_ONLY},
    "MultiStepMultiGammaLR": _gammas,
    **{cls: _thinning_func for cls in THINNING_FUNCS},
}


def check_struct_entry(value: Any, structures: tuple[str, ...] = STRUCTURES) -> str | None:
    """``[fraction, structure]``."""
    if not (isinstance(value, list) and len(value) == 2):
        return f"expected [fraction, structure] with a structure among {', '.join(structures)}"
    fraction, structure = value
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        return f"expected a number as the fraction, got {fraction!r}"
    if structure not in structures:
        return f"structure must be one of {', '.join(structures)}, got {structure!r}"
    return None
