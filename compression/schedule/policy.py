"""Load and validate a Distiller-style compression-schedule YAML into dataclasses.

The file is read with PyYAML's node API (``yaml.compose``), so every error names the file,
line and column and the key path: ``policy.yaml:7:9: pruners.conv_pruner: unknown key
'final_sparsty'; valid keys: class, initial_sparsity, final_sparsity, weights``. Errors are
``PolicyError`` (a ``ConfigError``: the entry scripts print one message and exit 2).

Epoch semantics: Distiller's by default. A policy ``starting_epoch: s, ending_epoch: e,
frequency: f`` is active at the epochs ``range(s, e, f)`` (``e`` excluded), and an AGP pruner
reaches its final sparsity at the last of them. ``load_policy(..., inclusive_end=True)``
(``--sch_ending_epoch=inclusive``) reads files written for this project's earlier semantics:
active at ``s, s+f, ...`` up to ``e`` and always at ``e`` itself. ``epochs: [..]`` lists the
active epochs. Pruner and extension events fire when their epoch begins (Distiller's
``on_epoch_begin``), in the order the file lists them.

A policy may carry Distiller's ``args`` (``pruner: {instance_name: p, args: {...}}``); the
accepted ones are ``POLICY_ARGS`` (``compression.schedule.policy_args``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from compression.schedule.policy_args import POLICY_ARGS, check_class_args, parse_args
from compression.schedule.refusals import refusal
from compression.schedule.schema import CHECKS, CLASSES, EPOCH_KEYS, POLICY_KINDS, REQUIRED, SECTIONS
from compression.schedule.yaml_bounds import check_size, compose
from compression.schedule.yaml_nodes import PolicyError, Where, convert, mapping, plain

__all__ = ["POLICY_ARGS", "Instance", "Policy", "PolicyEntry", "PolicyError", "Where", "check_epochs",
           "load_policy"]


@dataclass
class Instance:
    """One pruner / regularizer / quantizer / lr scheduler / extension of the file."""

    name: str
    section: str
    cls: str
    params: dict
    where: Where
    key_where: dict = field(default_factory=dict)  # key -> Where (entries of dict values: "key.sub")

    def at(self, key: str) -> Where:
        return self.key_where.get(key, self.where)


@dataclass
class PolicyEntry:
    kind: str                     # pruner | regularizer | quantizer | lr_scheduler | extension
    instance: Instance
    starting_epoch: int | None
    ending_epoch: int | None
    frequency: int
    epochs: list[int] | None
    where: Where
    last_where: Where             # the key that sets the last active epoch
    inclusive: bool = False       # ending_epoch active too (this project's earlier semantics)
    args: dict = field(default_factory=dict)  # Distiller's policy ``args``

    def active_epochs(self) -> list[int]:
        if self.epochs is not None:
            return sorted(set(self.epochs))
        if not self.inclusive:
            return list(range(self.starting_epoch, self.ending_epoch, self.frequency))
        span = range(self.starting_epoch, self.ending_epoch + 1, self.frequency)
        return sorted({*span, self.ending_epoch})

    def span(self) -> list[int]:
        """Every epoch of the policy's range (a regularizer or quantizer is on through it)."""
        if self.epochs is not None:
            return self.active_epochs()
        return list(range(self.starting_epoch, self.ending_epoch + self.inclusive))

    @property
    def first_epoch(self) -> int:
        return self.active_epochs()[0]

    @property
    def last_epoch(self) -> int:
        return self.active_epochs()[-1]


@dataclass
class Policy:
    path: str
    version: int
    instances: dict[str, dict[str, Instance]]  # section -> name -> instance
    policies: list[PolicyEntry]

    @property
    def last_epoch(self) -> int:
        return max((p.last_epoch for p in self.policies), default=0)

    def of_kind(self, kind: str) -> list[PolicyEntry]:
        return [p for p in self.policies if p.kind == kind]

    def summary(self) -> dict:
        return {"path": self.path,
                "instances": {s: {n: i.cls for n, i in d.items()} for s, d in self.instances.items() if d},
                "policies": [{"kind": p.kind, "instance": p.instance.name, "epochs": p.active_epochs()}
                             for p in self.policies]}


# -- the file --------------------------------------------------------------------------------
def load_policy(path: str, inclusive_end: bool = False) -> Policy:
    """Parse and validate ``path`` (everything that does not need the model or the run);
    ``inclusive_end``: ``ending_epoch`` is an active epoch (see the module's docstring)."""
    if not path:
        raise PolicyError("--compress: the schedule learner needs a compression-schedule YAML file "
                          "(e.g. --compress=examples/policies/resnet20_digits_agp.yaml)")
    if not os.path.isfile(path):
        raise PolicyError(f"--compress: no such file {path!r}; expected a Distiller-style compression "
                          "schedule YAML (version, pruners/quantizers/..., policies)")
    too_large = check_size(path)
    if too_large:
        raise PolicyError(f"{path}: refused: {too_large}")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"--compress: cannot read {path!r} as UTF-8 text ({exc})") from None
    try:
        return _parse(path, text, inclusive_end)
    except yaml.MarkedYAMLError as exc:  # malformed YAML, or a tag no safe loader constructs
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise PolicyError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None


def _parse(path: str, text: str, inclusive_end: bool) -> Policy:
    root = compose(text)
    if root is None:
        raise PolicyError(f"{path}: the file is empty; expected version, pruners/quantizers/..., policies")
    top = mapping(path, root, "<top>")
    valid = ("version", *SECTIONS, "policies")
    for name, (knode, _) in top.items():
        if name not in valid:
            raise Where.of(path, knode, name).error(f"unknown section {name!r}; valid sections: "
                                                    f"{', '.join(valid)}")
    version = 1
    if "version" in top:
        version = plain(top["version"][1])
        if version != 1:
            raise Where.of(path, top["version"][1], "version").error(f"only version 1 is supported, "
                                                                     f"got {version!r}")
    instances: dict[str, dict[str, Instance]] = {s: {} for s in SECTIONS}
    for section in SECTIONS:
        if section in top and top[section][1].tag != "tag:yaml.org,2002:null":
            for name, (knode, vnode) in mapping(path, top[section][1], section).items():
                instances[section][name] = _instance(path, section, name, knode, vnode)
    quantizers = list(instances.get("quantizers", {}).values())
    if "policies" not in top and quantizers and all(i.cls == "PostTrainLinearQuantizer" for i in quantizers) \
            and not any(instances[s] for s in SECTIONS if s != "quantizers"):
        # Distiller's post-training files (--qe-config-file) have no policies: applied at epoch 0
        entries = [PolicyEntry("quantizer", i, 0, 1, 1, None, i.where, i.where, inclusive_end)
                   for i in quantizers]
        return Policy(path, version, instances, entries)
    if "policies" not in top:
        raise PolicyError(f"{path}: no 'policies' section; nothing would be applied")
    pnode = top["policies"][1]
    if not isinstance(pnode, yaml.SequenceNode) or not pnode.value:
        raise Where.of(path, pnode, "policies").error("expected a non-empty list of policies")
    policies = [_entry(path, i, item, instances, inclusive_end) for i, item in enumerate(pnode.value)]
    policy = Policy(path, version, instances, policies)
    _check_order(policy)
    return policy


def _instance(file: str, section: str, name: str, knode: yaml.Node, vnode: yaml.Node) -> Instance:
    path = f"{section}.{name}"
    items = mapping(file, vnode, path)
    classes = CLASSES[section]
    where = Where.of(file, knode, path)
    if "class" not in items:
        raise where.error(f"missing key 'class'; valid classes: {', '.join(classes)}")
    cls = plain(items["class"][1])
    if cls not in classes:
        refused = refusal(section, cls)
        raise Where.of(file, items["class"][1], f"{path}.class").error(
            refused or f"unknown class {cls!r}; valid classes: {', '.join(classes)}")
    fields = classes[cls]
    params: dict = {}
    key_where = {}
    for key, (k, v) in items.items():
        if key == "class":
            continue
        if key not in fields:
            raise Where.of(file, k, path).error(f"unknown key {key!r}; valid keys: class, "
                                                f"{', '.join(fields)}")
        key_where[key] = Where.of(file, k, f"{path}.{key}")
        params[key] = convert(file, v, f"{path}.{key}", fields[key], section, key_where, key)
    for key, spec in fields.items():
        if key not in params:
            if spec.default is REQUIRED:
                raise where.error(f"missing key {key!r} (required by {cls})")
            params[key] = spec.default
    check = CHECKS.get(cls)
    problem = check(params) if check else None
    if problem:
        key, message = problem
        raise key_where.get(key, where).error(message)
    return Instance(name, section, cls, params, where, key_where)


def _entry(file: str, index: int, node: yaml.Node, instances: dict, inclusive: bool) -> PolicyEntry:
    path = f"policies[{index}]"
    items = mapping(file, node, path)
    kinds = [k for k in items if k in POLICY_KINDS]
    for key, (knode, _) in items.items():
        if key not in POLICY_KINDS and key not in EPOCH_KEYS:
            raise Where.of(file, knode, path).error(
                f"unknown key {key!r}; valid keys: {', '.join(POLICY_KINDS)}, {', '.join(EPOCH_KEYS)}")
    if len(kinds) != 1:
        raise Where.of(file, node, path).error(
            f"a policy names exactly one of {', '.join(POLICY_KINDS)}; got {kinds or 'none'}")
    kind = kinds[0]
    inner = mapping(file, items[kind][1], f"{path}.{kind}")
    epoch_nodes = {k: v for k, v in items.items() if k in EPOCH_KEYS}
    args: dict = {}
    arg_wheres: dict = {}
    for key, (knode, vnode) in inner.items():
        if key == "instance_name":
            continue
        if key == "args":
            args, arg_wheres = parse_args(file, kind, vnode, f"{path}.{kind}")
            continue
        if key not in EPOCH_KEYS:
            raise Where.of(file, knode, f"{path}.{kind}").error(
                f"unknown key {key!r}; valid keys: instance_name, args, {', '.join(EPOCH_KEYS)}")
        if key in epoch_nodes:
            raise Where.of(file, knode, f"{path}.{kind}").error(f"{key!r} is given twice")
        epoch_nodes[key] = (knode, vnode)
    if "instance_name" not in inner:
        raise Where.of(file, items[kind][0], f"{path}.{kind}").error("missing key 'instance_name'")
    name_node = inner["instance_name"][1]
    name = plain(name_node)
    section = POLICY_KINDS[kind]
    if name not in instances[section]:
        defined = ", ".join(instances[section]) or "none"
        raise Where.of(file, name_node, f"{path}.{kind}.instance_name").error(
            f"{section} has no instance {name!r}; defined: {defined}")
    if kind == "pruner":
        check_class_args(instances[section][name].cls, args, arg_wheres)
    where = Where.of(file, node, path)

    def number(key: str, default: Any = None) -> Any:
        if key not in epoch_nodes:
            return default
        knode, vnode = epoch_nodes[key]
        value = plain(vnode)
        spot = Where.of(file, vnode, f"{path}.{key}")
        if key == "epochs":
            if not (isinstance(value, list) and value and all(isinstance(e, int) and not isinstance(
                    e, bool) for e in value)):
                raise spot.error(f"expected a non-empty list of epochs, got {value!r}")
            if min(value) < 0:
                raise spot.error(f"epochs must be >= 0, got {value!r}")
            return value
        if not isinstance(value, int) or isinstance(value, bool):
            raise spot.error(f"expected an integer epoch, got {value!r}")
        if key == "frequency" and value < 1:
            raise spot.error(f"must be >= 1, got {value}")
        if value < 0:
            raise spot.error(f"must be >= 0, got {value}")
        return value

    has_range = any(k in epoch_nodes for k in ("starting_epoch", "ending_epoch", "frequency"))
    if has_range and "epochs" in epoch_nodes:
        raise Where.of(file, epoch_nodes["epochs"][0], path).error(
            "give either 'epochs: [..]' or starting_epoch/ending_epoch/frequency, not both")
    if "epochs" in epoch_nodes:
        epochs = number("epochs")
        return PolicyEntry(kind, instances[section][name], None, None, 1, epochs, where,
                           Where.of(file, epoch_nodes["epochs"][1], f"{path}.epochs"), inclusive, args)
    if "starting_epoch" not in epoch_nodes or "ending_epoch" not in epoch_nodes:
        raise where.error("missing epochs: give 'epochs: [..]' or both starting_epoch and ending_epoch "
                          "(and optionally frequency)")
    start, end, frequency = number("starting_epoch"), number("ending_epoch"), number("frequency", 1)
    if start > end or (start == end and not inclusive):
        raise Where.of(file, epoch_nodes["ending_epoch"][1], f"{path}.ending_epoch").error(
            f"ending_epoch {end} is before starting_epoch {start}" if start > end else
            f"ending_epoch {end} equals starting_epoch: the range is empty (Distiller's ending_epoch "
            "is exclusive; use epochs: [..] for one epoch)")
    return PolicyEntry(kind, instances[section][name], start, end, frequency, None, where,
                       Where.of(file, epoch_nodes["ending_epoch"][1], f"{path}.ending_epoch"),
                       inclusive, args)


def _check_order(policy: Policy) -> None:
    """Thinning rebuilds layers, so quantizers (parametrizations) must start after it."""
    thin_epochs = [e for p in policy.of_kind("extension") for e in p.active_epochs()]
    for entry in policy.of_kind("quantizer"):
        if thin_epochs and entry.first_epoch < max(thin_epochs):
            raise entry.where.error(f"the quantizer starts at epoch {entry.first_epoch}, before the "
                                    f"thinning at epoch {max(thin_epochs)}; quantize after thinning")


# -- checks that need the run ----------------------------------------------------------------
CUT_KINDS = ("lr_scheduler", "regularizer", "quantizer")  # may run past the end (Distiller's do)


def check_epochs(policy: Policy, nb_epochs: int) -> list[str]:
    """Every pruner / quantizer / extension event must exist in a run of ``nb_epochs`` epochs
    (0 .. nb_epochs-1). LR schedulers and regularizers may extend beyond (Distiller's schedules
    end them at epoch 300 or 400 as "until the end"): returns a note for each one cut."""
    notes = []
    for entry in policy.policies:
        if entry.kind in CUT_KINDS[:2] and entry.first_epoch >= nb_epochs:
            notes.append(f"{entry.kind} {entry.instance.name} starts at epoch {entry.first_epoch}, "
                         f"after the run's {nb_epochs} epochs: it never acts")
        elif entry.kind in CUT_KINDS and entry.first_epoch < nb_epochs <= entry.last_epoch:
            notes.append(f"{entry.kind} {entry.instance.name} ends at epoch {entry.last_epoch}, after "
                         f"the run's {nb_epochs} epochs: it stops with the run")
        elif entry.last_epoch >= nb_epochs:
            late = entry.first_epoch if entry.kind in CUT_KINDS else entry.last_epoch
            raise (entry.where if entry.kind in CUT_KINDS else entry.last_where).error(
                f"epoch {late} is beyond the run's {nb_epochs} epochs (0..{nb_epochs - 1}); "
                "raise --sch_nb_epochs or end the policy earlier")
    return notes
