"""Which ModelHelper a name means, for the entry scripts and the tools' ``--helper=``.

A registered helper by its name (the built-ins of ``HELPERS``, ``resnet_at_digits``...), or
any helper class by ``pkg.module:ClassName`` (a user's own, importable from the working
directory or the environment). The entry scripts ``nets/<name>_run.py`` are
``learners.launch.entry(<name>)``.

A user names their own helper with ``register_helper("my_helper", MyHelper)`` (or as a class
decorator, or with a ``"pkg.module:ClassName"`` string) in a module their entry script imports.
An installed package can make the name known to every process, the tools included, without
being imported first: an entry point in the group ``pocketflow_torch.helpers``
(``my_helper = my_pkg.helpers:MyHelper``) is read when a name is not registered.
"""
from __future__ import annotations

import importlib
from importlib import metadata
from typing import Callable

from nets.pocketflow_helper import framework_helper

# name -> "pkg.module:ClassName" (imported on first use) or the helper class itself
HELPERS: dict[str, str | type] = {
    "resnet_at_digits": "nets.resnet_at_digits:ModelHelper",
    "resnet_at_cifar10": "nets.resnet_at_cifar10:ModelHelper",
    "lenet_at_cifar10": "nets.lenet_at_cifar10:ModelHelper",
    "resnet_at_ilsvrc12": "nets.resnet_at_ilsvrc12:ModelHelper",
    "mobilenet_at_ilsvrc12": "nets.mobilenet_at_ilsvrc12:ModelHelper",
    "convnet_at_fmnist": "examples.convnet_at_fmnist:ModelHelper",
}
ENTRY_POINT_GROUP = "pocketflow_torch.helpers"


class UnknownHelper(ValueError):
    """A helper name that is neither registered nor an importable ``module:Class``."""


def _path(target: str | type) -> str:
    """``"pkg.module:ClassName"`` of a helper class (or the string itself)."""
    return target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def register_helper(name: str, target: str | type | None = None) -> Callable | type | str:
    """Name a helper for ``entry(name)`` and the tools' ``--helper=name``.

    ``target``: the helper class or ``"pkg.module:ClassName"`` (imported when first resolved);
    without it, a class decorator. A name already registered to another helper is refused
    (registering the same helper again, e.g. when its module is imported twice, is not)."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"helper name must be a non-empty string without ':', got {name!r}")
    if target is None:
        return lambda cls: register_helper(name, cls)
    if not (isinstance(target, type) or (isinstance(target, str) and ":" in target)):
        raise TypeError(f"register_helper({name!r}, ...): expected a helper class or "
                        f"'pkg.module:ClassName', got {target!r}")
    known = HELPERS.get(name)
    if known is not None and _path(known) != _path(target):
        raise ValueError(f"helper {name!r} is already registered to {_path(known)}")
    if known is None or isinstance(target, type):
        HELPERS[name] = target
    return target


def _entry_point(name: str) -> str | None:
    """``module:attr`` of the installed entry point ``name`` of ``ENTRY_POINT_GROUP``."""
    found = metadata.entry_points()
    group = (found.select(group=ENTRY_POINT_GROUP) if hasattr(found, "select")
             else found.get(ENTRY_POINT_GROUP, ()))          # Python 3.9
    return next((ep.value for ep in group if ep.name == name), None)


def helper_names() -> list[str]:
    return sorted(HELPERS)


def resolve_helper(name: str) -> type:
    """The helper class of ``name`` (see the module's docstring)."""
    target = HELPERS.get(name) or _entry_point(name) or name
    if isinstance(target, type):
        return framework_helper(target)
    if ":" not in target:
        raise UnknownHelper(f"unknown helper {name!r}; valid helpers: {', '.join(helper_names())} "
                            "(or pkg.module:ClassName for your own)")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownHelper(f"--helper={name}: cannot import {module_name} ({exc})") from exc
    cls = module
    for part in class_name.split("."):          # a nested class: Outer.Inner
        cls = getattr(cls, part, None)
    if not isinstance(cls, type):
        raise UnknownHelper(f"--helper={name}: {module_name} has no class {class_name!r}")
    return framework_helper(cls)     # a PocketFlow helper's port: its adapter
