"""Config dataclasses <-> absl flags, without reading FLAGS anywhere.

Every configurable module describes its options once, as a dataclass whose fields carry
``metadata={"help": ..., "choices": [...]}``.  Entry scripts turn those dataclasses into absl
flags (``define_flags``) and, after parsing, build the dataclasses back from the plain
flag-values dict the entry script passes in (``from_flag_dict``).  Library code only ever sees dataclasses.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the flag and the valid range."""


def option(default: Any, help: str, choices: Iterable[str] | None = None,  # noqa: A002
           run_only: bool = False) -> Any:
    """A dataclass field that becomes a flag with this help text (and enum choices).

    ``run_only``: the option says how this run goes (paths, logging, devices, exports), not
    what it computes, so it may differ between a run and its ``--resume`` (``settings``).
    """
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = list(choices)
    if run_only:
        meta["run_only"] = True
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(tp: Any) -> Any:
    """``Optional[int]`` -> int, ``list[str]`` -> list."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return origin or tp


def _definers(flags_module: Any) -> dict:
    return {
        bool: flags_module.DEFINE_bool,
        int: flags_module.DEFINE_integer,
        float: flags_module.DEFINE_float,
        str: flags_module.DEFINE_string,
        list: flags_module.DEFINE_list,
    }


def define_flags(cls: type, flag_values: Any) -> None:
    """Define one absl flag per field of dataclass ``cls`` on ``flag_values``.

    A flag that already exists (shared by two configs, e.g. ``batch_size``) is left alone, so
    the first definition's default wins; configs that share a name must agree on its meaning.
    """
    from absl import flags as absl_flags

    hints = typing.get_type_hints(cls)
    definers = _definers(absl_flags)
    for f in dataclasses.fields(cls):
        if f.name in flag_values:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", f.name)
        choices = f.metadata.get("choices")
        if choices is not None:
            absl_flags.DEFINE_enum(f.name, default, choices, help_text, flag_values=flag_values)
            continue
        definers[_base_type(hints[f.name])](f.name, default, help_text, flag_values=flag_values)


def from_flag_dict(cls: type[T], values: Mapping[str, Any], **overrides: Any) -> T:
    """Build dataclass ``cls`` from a flat name -> value mapping (extra keys are ignored)."""
    kwargs = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
    kwargs.update(overrides)
    return cls(**kwargs)


def check(condition: bool, flag: str, message: str) -> None:
    """Raise ConfigError('--flag: message') unless condition holds."""
    if not condition:
        raise ConfigError(f"--{flag}: {message}")


def check_ratio(value: float, flag: str, low_inclusive: bool = True, high: float = 1.0,
                high_inclusive: bool = False) -> None:
    """Ratios such as pruning ratios: in [0, 1) by default."""
    low_ok = value >= 0.0 if low_inclusive else value > 0.0
    high_ok = value <= high if high_inclusive else value < high
    lo = "[" if low_inclusive else "("
    hi = "]" if high_inclusive else ")"
    check(low_ok and high_ok, flag, f"must be in {lo}0, {high:g}{hi}, got {value!r}")


def to_plain_dict(cfg: Any) -> dict:
    """A dataclass as a dict of plain values (storable with torch.save / weights_only)."""
    return dataclasses.asdict(cfg)


def settings(*cfgs: Any) -> dict:
    """The options of these config dataclasses that decide what a run computes (every field
    not marked ``run_only`` and not an output location ``*save_path*``), as one plain dict:
    what a resumed run must share with the run that wrote its checkpoint."""
    merged = {}
    for cfg in cfgs:
        if cfg is None:
            continue
        # a subclass that redefines a field (e.g. its own data_dir_local default) keeps the
        # base class's run_only mark
        run_only = {f.name for base in type(cfg).__mro__ if dataclasses.is_dataclass(base)
                    for f in dataclasses.fields(base) if f.metadata.get("run_only")}
        for f in dataclasses.fields(cfg):
            if f.name not in run_only and "save_path" not in f.name:  # output locations
                merged[f.name] = getattr(cfg, f.name)
    return merged


def split_names(text: str) -> list[str]:
    """A comma-separated flag value as a list of non-empty, stripped names."""
    return [name.strip() for name in text.split(",") if name.strip()]
