"""Restricted unpickling for CIFAR-10 python batches (never plain pickle.load)."""
from __future__ import annotations

import pickle

import numpy as np

from datasets.errors import DataError

_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]   # numpy's multiarray._reconstruct
_SCALAR = np.float64(0).__reduce__()[0]           # numpy's multiarray.scalar

_ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _RECONSTRUCT
    _ALLOWED[(_mod, "scalar")] = _SCALAR
_ALLOWED_VIA_SUPER = {("_codecs", "encode"), ("builtins", "bytearray"),
                      ("__builtin__", "bytearray")}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only numpy array/dtype reconstruction and a few builtins."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) in _ALLOWED_VIA_SUPER:
            return super().find_class(module, name)
        raise DataError(f"forbidden global {module}.{name} in pickle")


def safe_load(path, encoding="bytes"):
    """Unpickle the file at `path` with RestrictedUnpickler; DataError names it."""
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(fh, encoding=encoding).load()
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError) as err:
        raise DataError(f"{path}: not a valid pickle ({type(err).__name__}: {err})") from None
