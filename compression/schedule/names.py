"""Names of a schedule resolved to the model's: Distiller's ``module.`` prefixes and
torchvision-style module names mapped, every other name checked with close names listed.

A name is used as written when the model has it. Otherwise the ``module.`` prefixes that
``nn.DataParallel`` adds (Distiller's checkpoints and schedules carry them) are dropped, and
the inner ``module`` components of a wrapped submodule (``features.module.0`` of Distiller's
VGGs, where only ``features`` is wrapped), then
path components are renamed by the aliases (``DEFAULT_ALIASES``: torchvision's ``downsample``
is this project's ``shortcut``; a ModelHelper adds its own with a ``distiller_aliases`` dict).
Quantizer ``overrides`` are module-name regular expressions (Distiller matches them whole, the
first match wins); the same prefix and aliases are applied to each pattern, and a pattern that
matches no module of the model is an error. ``resolve_names`` rewrites the policy in place and
returns what it mapped, for the log and the report.
"""
from __future__ import annotations

import difflib
import re
from typing import Mapping

from torch import nn

from compression.sparsity.masks import maskable_layers
from compression.schedule.policy import Instance, Policy, Where
from compression.schedule.refusals import ARCH_NETS, arch_hint

DEFAULT_ALIASES = {"downsample": "shortcut"}
WILDCARD = "*"   # the levels / sensitivities / thresholds default entry
PREFIX = "module."
INNER = "module"   # the component nn.DataParallel adds around a wrapped submodule
# instance keys holding names: key -> (container kind, what the names must be)
NAME_KEYS = {"weights": "list", "reg_regims": "dict", "levels": "dict", "sensitivities": "dict",
             "thresholds": "dict"}


def candidates(name: str, aliases: Mapping[str, str]) -> list[str]:
    """``name`` as written, without ``module.`` prefixes, without inner ``module`` components
    (Distiller wraps only a VGG's ``features`` in ``DataParallel``: ``features.module.0.weight``),
    then with its components aliased."""
    out = [name]
    bare = name
    while bare.startswith(PREFIX):
        bare = bare[len(PREFIX):]
    if bare != name:
        out.append(bare)
    inner = ".".join(part for part in bare.split(".") if part != INNER)
    if inner and inner not in out:   # DataParallel around a submodule: features.module.0
        out.append(inner)
        bare = inner
    parts = [aliases.get(part, part) for part in bare.split(".")]
    aliased = ".".join(parts)
    if aliased not in out:
        out.append(aliased)
    return out


def _pattern(pattern: str, aliases: Mapping[str, str]) -> str:
    bare = re.sub(r"^(\^?)(module(\\\.|\.))+", r"\1", pattern)
    bare = re.sub(r"(?<=\.)module(\\\.|\.)", "", bare)   # features.module.0, features\.module\.0
    for old, new in aliases.items():
        bare = re.sub(rf"(?<![A-Za-z0-9_]){re.escape(old)}(?![A-Za-z0-9_])", new, bare)
    return bare


class _Resolver:
    def __init__(self, policy: Policy, model: nn.Module, aliases: Mapping[str, str]) -> None:
        self.policy = policy
        self.aliases = {**DEFAULT_ALIASES, **aliases}
        self.layers = [f"{n}.weight" for n in maskable_layers(model)]
        self.params = [n for n, _ in model.named_parameters()]
        self.modules = [n for n, _ in model.named_modules() if n]
        self.mapped: dict[str, str] = {}
        archs = {str(i.params.get("arch")) for i in policy.instances["extensions"].values()
                 if i.params.get("arch")}
        self.file_arch = ", ".join(sorted(archs))

    def _missing(self, name: str, valid: list[str], what: str, where: Where) -> Exception:
        bare = candidates(name, self.aliases)[-1]
        close = difflib.get_close_matches(bare, valid, n=4, cutoff=0.5) or valid[:4]
        message = f"no {what} {name!r} in the model"
        if bare != name:
            message += f" (also tried {bare!r})"
        family = arch_hint(bare, [*self.modules, *self.params])
        if family:
            message += f"; the name is from Distiller's {family} models, and this model has no such module"
            if family in ARCH_NETS:
                message += f" (Distiller's CIFAR models are registered nets: --net={ARCH_NETS[family]} ...)"
            message += "; or write the schedule for this model's modules"
        elif self.file_arch:
            message += f"; the schedule was written for arch {self.file_arch}"
        return where.error(f"{message}; close names: {', '.join(close)}")

    def name(self, name: str, valid: list[str], what: str, where: Where) -> str:
        valid_set = set(valid)
        for candidate in candidates(name, self.aliases):
            if candidate in valid_set:
                if candidate != name:
                    self.mapped[name] = candidate
                return candidate
        raise self._missing(name, valid, what, where)

    def instance(self, section: str, inst: Instance) -> None:
        for key, kind in NAME_KEYS.items():
            value = inst.params.get(key)
            if not value:
                continue
            valid, what = self.layers, "conv/linear weight"
            if section == "regularizers" and inst.cls == "L1Regularizer":
                valid, what = self.params, "parameter"
            if kind == "list":
                inst.params[key] = [self.name(n, valid, what, inst.at(key)) for n in value]
                continue
            resolved = {}
            for name, item in value.items():
                if name == WILDCARD and key != "reg_regims":
                    resolved[name] = item
                    continue
                where = inst.key_where.get(f"{key}.{name}", inst.at(key))
                new = self.name(name, valid, what, where)
                if new != name and f"{key}.{name}" in inst.key_where:
                    inst.key_where[f"{key}.{new}"] = inst.key_where[f"{key}.{name}"]
                resolved[new] = item
            inst.params[key] = resolved
        if inst.params.get("overrides"):
            self.overrides(inst)

    def overrides(self, inst: Instance) -> None:
        resolved = {}
        for pattern, bits in inst.params["overrides"].items():
            where = inst.key_where.get(f"overrides.{pattern}", inst.at("overrides"))
            new = _pattern(pattern, self.aliases)
            try:
                regex = re.compile(new)
            except re.error as exc:
                raise where.error(f"not a valid regular expression ({exc})") from None
            if not any(regex.fullmatch(m) for m in self.modules):
                raise self._missing(pattern, self.modules, "module matching", where)
            if new != pattern:
                self.mapped[pattern] = new
            resolved[new] = bits
        inst.params["overrides"] = resolved


def resolve_names(policy: Policy, model: nn.Module, aliases: Mapping[str, str] | None = None) -> dict:
    """Map every name of ``policy`` to ``model``'s (in place); returns ``{file name: model name}``
    of the names that changed. Errors name the place in the file and close names."""
    resolver = _Resolver(policy, model, aliases or {})
    for section, instances in policy.instances.items():
        for inst in instances.values():
            resolver.instance(section, inst)
    return resolver.mapped


def layer_of(weight_name: str) -> str:
    """The layer of a parameter name (``conv1.weight`` -> ``conv1``)."""
    return weight_name[: -len(".weight")]
