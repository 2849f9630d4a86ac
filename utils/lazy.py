"""Package fronts that re-export their modules' names on first use (PEP 562).

A front (``compression/graph/__init__.py``...) lists what the package offers without importing
its modules: ``from compression.graph import analyse`` imports ``compression.graph.layers``
then, not before. So fronts never form import cycles (``compression.graph.builder`` reads
``compression.surgery.picks`` while ``compression.surgery.thinning`` reads the graph) and
importing one module of a package costs only that module.
"""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose names ``exports`` maps to the module
    (relative to the package) that defines each."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
