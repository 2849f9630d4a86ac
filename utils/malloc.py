"""glibc's malloc tuned for tensor workloads: activations of a few MiB stay in the heap.

By default glibc serves an allocation above its mmap threshold (128 KiB, raised dynamically
up to the largest chunk freed so far) with a fresh ``mmap`` and returns it with ``munmap`` on
free, and it gives the top of the heap back to the OS once more than the trim threshold is
free there. An eager forward pass allocates and frees the same activation sizes again and
again, so each one costs page faults on memory the OS has to zero first: on a 2-core KVM guest
a 64x16x16x16 float activation (1 MiB) made a 3x3 convolution 3.5x slower than with the pages
kept (1.4 ms instead of 0.4 ms), and ResNet-20's eager latency at batch 64 varied between 13
and 20 ms instead of 8.1-8.9 ms (``benchmarks/thinned_latency.py``, ``docs/speed.md``).

``tune_malloc()`` fixes both thresholds (``mallopt(M_MMAP_THRESHOLD, 32 MiB)``, glibc's
maximum, and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``), which keeps freed activations in the heap
for the next pass, as PyTorch's GPU caching allocator does. Entry scripts and tools call it
first; a Python API user calls it once at the start of the process (before the first
``torch.set_num_threads`` / the first parallel op, whose worker threads get their own arenas).

It does nothing where it cannot or should not: not glibc (macOS, musl), the user already set
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (glibc's own variables win), or
``PF_MALLOC_TUNING=0``. The cost: a process keeps up to the trim threshold of freed memory
mapped (its peak heap, not more).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("pocketflow")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20       # glibc's HEAP_MAX-bound maximum on 64-bit systems
TRIM_THRESHOLD = 1 << 30
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_state: dict[str, str] = {}


def _glibc_mallopt():
    """glibc's ``mallopt`` or None (another C library, or none found)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        gnu_get_libc_version = libc.gnu_get_libc_version   # glibc only
    except (OSError, AttributeError):
        return None
    del gnu_get_libc_version
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def tune_malloc() -> str:
    """Fix glibc's mmap and trim thresholds for this process (once). Returns what happened:
    ``"tuned"``, ``"disabled"`` (``PF_MALLOC_TUNING=0``), ``"user"`` (glibc's own variables
    set), ``"unavailable"`` (not glibc) or ``"failed"`` (glibc refused a value)."""
    if "result" in _state:
        return _state["result"]
    if os.environ.get("PF_MALLOC_TUNING", "1") == "0":
        result = "disabled"
    elif any(os.environ.get(name) for name in USER_VARIABLES):
        result = "user"
    else:
        mallopt = _glibc_mallopt()
        if mallopt is None:
            result = "unavailable"
        else:
            ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and \
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            result = "tuned" if ok else "failed"
    _state["result"] = result
    log.debug("malloc tuning: %s", result)
    return result


def note_untuned_timing() -> None:
    """Log once, at INFO, that CPU timings run on glibc's default malloc when ``tune_malloc``
    was not called in this process (a Python API user's script) and could have been."""
    if _state.get("result") is not None or _state.get("noted"):
        return
    _state["noted"] = "yes"           # decided once: find_library may run a subprocess
    if _glibc_mallopt() is not None:
        log.info("timing eager passes with glibc's default malloc: activations are mapped and "
                 "faulted in on every pass, which slows the widest models most; call "
                 "utils.malloc.tune_malloc() at the start of the process (docs/speed.md)")
