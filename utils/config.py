"""Config dataclasses <-> absl flags, without reading FLAGS anywhere.

Every configurable module describes its options once, as a dataclass whose fields carry
``metadata={"help": ..., "choices": [...]}`` (``option``). Field names are the options' own
names (``prune_ratio``); a flag prefix is added only when flags are defined
(``define_flags(CprConfig, fv, prefix="cpr")`` gives ``--cpr_prune_ratio``) and removed when
the dataclass is built back from the parsed flag values (``from_flag_dict``); a ``{prefix}`` in
a string default becomes that prefix (``./models_{prefix}/model.ckpt``). A field whose
type is itself a config dataclass is flattened into the same flags, under that class's
``FLAG_PREFIX`` when it has one (``ddpg``) and the enclosing prefix otherwise; ``option(...,
flag="compress")`` gives a field a flag name of its own. Library code only ever sees
dataclasses, so a Python caller writes ``CprConfig(prune_ratio=0.3)``.

Validation lives in each dataclass's ``__post_init__`` (``check``): the message names the
option as ``--<field>``, and ``from_flag_dict`` renames such references to the flags they
came from, so a command-line user reads ``--cpr_prune_ratio``.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Iterable, Iterator, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the flag and the valid range."""

    def renamed(self, names: Mapping[str, str]) -> "ConfigError":
        """The same error with ``--<field>`` references replaced by ``--<flag>``."""
        text = re.sub(r"--(\w+)", lambda m: f"--{names.get(m[1], m[1])}", str(self))
        return ConfigError(text)


def option(default: Any, help: str, choices: Iterable[str] | None = None,  # noqa: A002
           run_only: bool = False, flag: str | None = None) -> Any:
    """A dataclass field that becomes a flag with this help text (and enum choices: a list is
    kept as given, so a registry that appends to it later widens the flag's choices).

    ``run_only``: the option says how this run goes (paths, logging, devices, exports), not
    what it computes, so it may differ between a run and its ``--resume`` (``settings``).
    ``flag``: the flag's full name, whatever the prefix (e.g. Distiller's ``--compress``).
    """
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices if isinstance(choices, list) else list(choices)
    if run_only:
        meta["run_only"] = True
    if flag:
        meta["flag"] = flag
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def nested(cls: type) -> Any:
    """A field holding another config dataclass (its options become flags too)."""
    return dataclasses.field(default_factory=cls)


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


def flag_name(field: dataclasses.Field, prefix: str = "") -> str:
    """The flag of ``field`` under ``prefix``."""
    explicit = field.metadata.get("flag")
    if explicit:
        return explicit
    return f"{prefix}_{field.name}" if prefix else field.name


def _nested_prefix(cls: type, prefix: str) -> str:
    return getattr(cls, "FLAG_PREFIX", prefix)


def _fields(cls: type) -> Iterator[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f, hints[f.name]


def flag_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """``(flag name, field, type)`` of every option of ``cls``, nested configs flattened."""
    for f, tp in _fields(cls):
        if dataclasses.is_dataclass(tp):
            yield from flag_fields(tp, _nested_prefix(tp, prefix))
        else:
            yield flag_name(f, prefix), f, tp


def define_flags(cls: type, flag_values: Any, prefix: str = "", allow_override: bool = False) -> None:
    """Define one absl flag per option of dataclass ``cls`` on ``flag_values`` (``allow_override``:
    a module defining the same name later replaces the flag instead of failing).

    A flag that already exists (shared by two configs, e.g. ``batch_size``) is left alone, so
    the first definition's default wins; configs that share a name must agree on its meaning.
    """
    from absl import flags as absl_flags

    definers = _definers(absl_flags)
    prefix = prefix or _nested_prefix(cls, "")
    for name, f, tp in flag_fields(cls, prefix):
        default = with_prefix(f.default if f.default is not dataclasses.MISSING
                              else f.default_factory(), prefix)
        help_text = f.metadata.get("help", f.name)
        if name in flag_values:
            if flag_values.find_module_defining_flag(name, "").startswith("absl."):
                # absl's own flag of that name (``--log_dir`` of absl.logging, default ''): this
                # config's default and meaning apply to it (absl only reads it when asked to
                # write log files, which this project never does)
                flag_values.set_default(name, default)
                flag_values[name].help = help_text
            continue
        choices = f.metadata.get("choices")
        if choices is not None:
            absl_flags.DEFINE_enum(name, default, choices, help_text, flag_values=flag_values,
                                   allow_override=allow_override)
            continue
        definers[_base_type(tp)](name, default, help_text, flag_values=flag_values,
                                 allow_override=allow_override)


def from_flag_dict(cls: type[T], values: Mapping[str, Any], prefix: str = "", **overrides: Any) -> T:
    """Build dataclass ``cls`` from a flat flag name -> value mapping (extra keys are ignored);
    ``overrides`` set fields by their own names. A validation error names the flags."""
    kwargs, names = {}, {}
    prefix = prefix or _nested_prefix(cls, "")
    for f, tp in _fields(cls):
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_flag_dict(tp, values, _nested_prefix(tp, prefix))
            continue
        name = names[f.name] = flag_name(f, prefix)
        if name in values:
            kwargs[f.name] = values[name]
        elif isinstance(f.default, str) and "{prefix}" in f.default:
            kwargs[f.name] = with_prefix(f.default, prefix)
    kwargs.update(overrides)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise exc.renamed(names) from None


def with_prefix(default: Any, prefix: str) -> Any:
    """A default with ``{prefix}`` (e.g. ``./models_{prefix}/model.ckpt``) for ``prefix``."""
    if isinstance(default, str) and "{prefix}" in default:
        return default.replace("{prefix}", prefix)
    return default


def formatted(cfg: T, prefix: str) -> T:
    """``cfg`` with every ``{prefix}`` of its string options replaced, nested configs included
    (a config built in Python rather than from flags)."""
    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            new = formatted(value, _nested_prefix(type(value), prefix))
        else:
            new = with_prefix(value, prefix)
        if new is not value:
            changes[f.name] = new
    return dataclasses.replace(cfg, **changes) if changes else cfg


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


def settings(*cfgs: tuple[Any, str]) -> dict:
    """The options of these ``(config, flag prefix)`` pairs that decide what a run computes
    (every field not marked ``run_only`` and not an output location ``*save_path*``), as one
    ``{flag name: value}`` dict: what a resumed run must share with the run that wrote its
    checkpoint."""
    merged = {}
    for cfg, prefix in cfgs:
        if cfg is None:
            continue
        # a subclass that redefines a field (e.g. its own data_dir_local default) keeps the
        # base class's run_only mark
        run_only = {f.name for base in type(cfg).__mro__ if dataclasses.is_dataclass(base)
                    for f in dataclasses.fields(base) if f.metadata.get("run_only")}
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if dataclasses.is_dataclass(value):
                merged.update(settings((value, _nested_prefix(type(value), prefix))))
            elif f.name not in run_only and "save_path" not in f.name:  # output locations
                merged[flag_name(f, prefix)] = value
    return merged


def split_names(text: str) -> list[str]:
    """A comma-separated flag value as a list of non-empty, stripped names."""
    return [name.strip() for name in text.split(",") if name.strip()]
