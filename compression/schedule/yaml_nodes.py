"""YAML nodes with their places: ``Where`` (file:line:column + key path), ``PolicyError``,
and the conversion of a node to a checked value of a schema ``Field``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from compression.schedule.schema import LASSO_STRUCTURES, STRUCTURES, Field, check_struct_entry
from utils.config import ConfigError


class PolicyError(ConfigError):
    """An invalid compression-schedule file; the message starts with ``file:line:col: path:``."""


@dataclass(frozen=True)
class Where:
    file: str
    line: int
    column: int
    path: str

    @classmethod
    def of(cls, file: str, node: yaml.Node, path: str) -> "Where":
        return cls(file, node.start_mark.line + 1, node.start_mark.column + 1, path)

    def error(self, message: str) -> PolicyError:
        return PolicyError(f"{self.file}:{self.line}:{self.column}: {self.path}: {message}")


def mapping(file: str, node: yaml.Node, path: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise Where.of(file, node, path).error(f"expected a mapping, got {describe(node)}")
    items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key, value in node.value:
        name = str(key.value)
        if name in items:
            if plain(items[name][1]) == plain(value):
                continue        # repeated with the same value (published Distiller files do)
            raise Where.of(file, key, path).error(f"duplicate key {name!r} with another value "
                                                  f"(first at line {items[name][0].start_mark.line + 1})")
        items[name] = (key, value)
    return items


def describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}"


def plain(node: yaml.Node) -> Any:
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def convert(file: str, node: yaml.Node, path: str, spec: Field, section: str,
             key_where: dict, key: str) -> Any:
    where = Where.of(file, node, path)
    kind = spec.kind
    if kind in ("l1_regims", "struct_regims", "lasso_regims", "variance_regims", "levels"):
        out = {}
        for name, (knode, vnode) in mapping(file, node, path).items():
            sub = f"{path}.{name}"
            key_where[f"{key}.{name}"] = Where.of(file, knode, sub)
            value = plain(vnode)
            if kind in ("l1_regims", "levels"):
                what = {"l1_regims": "strength", "levels": key.rstrip("s")}[kind]
                if not is_number(value):
                    raise Where.of(file, vnode, sub).error(f"expected a number ({what}), got {value!r}")
                if value < 0 or (kind == "levels" and key == "levels" and value >= 1):
                    bound = "in [0, 1)" if key == "levels" else ">= 0"
                    raise Where.of(file, vnode, sub).error(f"{what} must be {bound}, got {value!r}")
            else:
                problem = check_struct_entry(value, {"lasso_regims": LASSO_STRUCTURES,
                                                     "variance_regims": ("Channels",)}.get(kind, STRUCTURES))
                if problem is None and section == "pruners" and not 0 <= value[0] < 1:
                    problem = f"fraction must be in [0, 1), got {value[0]!r}"
                if problem is None and value[0] < 0:
                    problem = f"strength must be >= 0, got {value[0]!r}"
                if problem:
                    raise Where.of(file, vnode, sub).error(problem)
            out[name] = value
        if not out:
            raise where.error("must name at least one weight")
        return out
    if kind == "overrides":
        return _overrides(file, node, path, key_where, key)
    value = plain(node)
    if kind.startswith("opt_"):
        if value is None:
            return None
        kind = kind[len("opt_"):]
    expected = {"number": is_number,
                "numbers": lambda v: isinstance(v, list) and bool(v) and all(is_number(x) for x in v),
                "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
                "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
                "names": lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v),
                "ints": lambda v: isinstance(v, list) and bool(v) and all(
                    isinstance(x, int) and not isinstance(x, bool) for x in v),
                "any": lambda v: True}
    words = {"number": "a number", "int": "an integer", "bool": "true or false", "str": "a string",
             "names": "a non-empty list of weight names", "ints": "a non-empty list of integers",
             "numbers": "a non-empty list of numbers"}
    if not expected[kind](value):
        raise where.error(f"expected {words[kind]}, got {value!r}")
    if kind == "number":
        value = float(value)
    if kind == "numbers":
        value = [float(x) for x in value]
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise where.error(problem)
    return value




OVERRIDE_KEYS = ("bits_weights", "bits_activations", "bits_bias")


def _overrides(file: str, node: yaml.Node, path: str, key_where: dict, key: str) -> dict:
    """Distiller's quantizer ``overrides``: module-name regex -> {bits_weights, bits_activations,
    bits_bias}, each an integer or null (left in floating point); the first match wins."""
    out: dict[str, dict] = {}
    for name, (knode, vnode) in mapping(file, node, path).items():
        sub = f"{path}.{name}"
        key_where[f"{key}.{name}"] = Where.of(file, knode, sub)
        items = mapping(file, vnode, sub)
        bits = {}
        for field, (fk, fv) in items.items():
            if field not in OVERRIDE_KEYS:
                raise Where.of(file, fk, sub).error(f"unknown key {field!r}; valid keys: "
                                                    f"{', '.join(OVERRIDE_KEYS)}")
            value = plain(fv)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not (1 <= value <= 16 or value == 32)):
                raise Where.of(file, fv, f"{sub}.{field}").error(
                    f"expected null (floating point) or bits in [1, 16] or 32, got {value!r}")
            bits[field] = value
        out[name] = bits
    return out
