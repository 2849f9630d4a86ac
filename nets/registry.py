"""A small timm-style registry of network builders.

Builders are functions ``builder(num_classes=..., in_channels=..., **kwargs)``
returning an ``nn.Module``; they register themselves with :func:`register_net`.
A net can also be described by a plain-dict *spec* (see :func:`net_spec`),
which is safe to store in a checkpoint loaded with ``weights_only=True``.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List

import torch.nn as nn

__all__ = ["register_net", "create_net", "net_builder", "list_nets", "net_spec", "build_from_spec"]

Builder = Callable[..., nn.Module]

_NETS: Dict[str, Builder] = {}
_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _ensure_builtin_nets() -> None:
    """Import ``nets.models`` so the built-in nets register (lazy: avoids cycles)."""
    importlib.import_module("nets.models")


def register_net(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` under ``name``; duplicates raise ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"net name must be a non-empty string, got {name!r}")

    def decorator(builder: Builder) -> Builder:
        if name in _NETS:
            raise ValueError(f"net {name!r} is already registered")
        _NETS[name] = builder
        return builder

    return decorator


def list_nets() -> List[str]:
    """Sorted names of all registered nets."""
    _ensure_builtin_nets()
    return sorted(_NETS)


def net_builder(name: str) -> Builder:
    """The builder registered as ``name`` (ValueError listing the valid names)."""
    _ensure_builtin_nets()
    if name not in _NETS:
        raise ValueError(f"unknown net {name!r}; valid nets: {', '.join(sorted(_NETS))}")
    return _NETS[name]


def create_net(name: str, **kwargs: Any) -> nn.Module:
    """Build the net registered as ``name`` with the builder's keyword arguments."""
    return net_builder(name)(**kwargs)


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is built from str/int/float/bool/None/list/dict."""
    if isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} = {value!r} is not a plain value (str/int/float/bool/list/dict)")


def _to_plain(value: Any) -> Any:
    """Turn tuples into lists so the spec is a plain, comparable structure."""
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def net_spec(name: str, **kwargs: Any) -> Dict[str, Any]:
    """A plain-dict description ``{"net": name, "kwargs": kwargs}`` of a net."""
    for key, value in kwargs.items():
        _check_plain(value, f"kwarg {key!r}")
    return {"net": name, "kwargs": _to_plain(kwargs)}


def build_from_spec(spec: Dict[str, Any]) -> nn.Module:
    """Build the net described by a spec from :func:`net_spec`."""
    if not isinstance(spec, dict) or "net" not in spec:
        raise ValueError(f"not a net spec: {spec!r}")
    return create_net(spec["net"], **dict(spec.get("kwargs") or {}))
