"""Which ModelHelper a name means, for the entry scripts and the tools' ``--helper=``.

A built-in helper by its name (``resnet_at_digits``: ``HELPERS``), or any helper class by
``pkg.module:ClassName`` (a user's own, importable from the working directory or the
environment). The entry scripts ``nets/<name>_run.py`` are ``learners.launch.entry(<name>)``.
"""
from __future__ import annotations

import importlib

HELPERS = {
    "resnet_at_digits": "nets.resnet_at_digits:ModelHelper",
    "resnet_at_cifar10": "nets.resnet_at_cifar10:ModelHelper",
    "lenet_at_cifar10": "nets.lenet_at_cifar10:ModelHelper",
    "resnet_at_ilsvrc12": "nets.resnet_at_ilsvrc12:ModelHelper",
    "mobilenet_at_ilsvrc12": "nets.mobilenet_at_ilsvrc12:ModelHelper",
    "convnet_at_fmnist": "examples.convnet_at_fmnist:ModelHelper",
}


class UnknownHelper(ValueError):
    """A helper name that is neither built in nor an importable ``module:Class``."""


def helper_names() -> list[str]:
    return sorted(HELPERS)


def resolve_helper(name: str) -> type:
    """The helper class of ``name`` (see the module's docstring)."""
    path = HELPERS.get(name, name)
    if ":" not in path:
        raise UnknownHelper(f"unknown helper {name!r}; valid helpers: {', '.join(helper_names())} "
                            "(or pkg.module:ClassName for your own)")
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownHelper(f"--helper={name}: cannot import {module_name} ({exc})") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise UnknownHelper(f"--helper={name}: {module_name} has no class {class_name!r}")
    return cls
