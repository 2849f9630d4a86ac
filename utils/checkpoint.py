"""Atomic, weights-only checkpoint files.

Two kinds of file share this module:
- a *training checkpoint* (``kind="checkpoint"``): model, optimizer, step, RNG states, learner
  state and metadata, enough to resume an interrupted run;
- a *model artifact* (``kind="model"``): an architecture spec plus a state dict, enough to
  rebuild the model without any training code (written and rebuilt by ``compression.artifacts``).
Every load goes through ``torch.load(..., weights_only=True)``, so a file can never run code,
and every file carries the SHA-256 of its contents (``payload_digest``: each tensor's dtype,
shape and bytes, every other value's repr), checked on load: a flipped byte inside a weight
tensor, which the zip container does not notice, is refused instead of evaluated.

Writes are atomic (``atomic_write``): a temp file ``.tmp-<pid>-*`` in the target directory,
fsynced, then renamed over the target; its mode follows the umask like a plain ``open``. Temp
files left by a killed writer are removed by ``remove_stale_temp_files``.
"""
from __future__ import annotations

import hashlib
import errno
import os
import resource
import shutil
import random
import tempfile
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

FORMAT = "pocketflow-torch"
VERSION = 2          # 2: files carry "sha256" (version 1 files load without the check)
TEMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint or model file is missing, corrupt, of the wrong kind or does not fit."""


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class WriteError(CheckpointError):
    """A file could not be written (disk full, file too large, no permission, a read-only
    file system, a file where a folder should be): the path and the cause, no traceback."""


def _likely_cause(path: str, written: int) -> str:
    """Why a write that lost its errno failed: the process's file size limit, else a full
    disk, else unknown."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and written >= limit * 0.5:
        return f"File too large (EFBIG: this process may write files of at most {limit:,} bytes)"
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    if free < 1 << 20:
        return f"No space left on device (ENOSPC: {free:,} bytes free)"
    return "the write failed (the writer gave no cause)"


def write_error(path: str, exc: BaseException, written: int = 0) -> WriteError:
    """The one-line error for a failed write of ``path``."""
    if isinstance(exc, OSError) and exc.errno is not None:
        cause = f"{exc.strerror} ({errno.errorcode.get(exc.errno, exc.errno)})"
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            cause += ": a file stands where a folder of this path should be"
    else:   # torch's writer reports a failed write as a RuntimeError of its own, no errno
        cause = _likely_cause(path, written)
    return WriteError(f"cannot write {path}: {cause}; nothing was half-written (the previous "
                      "file, if any, is intact)")


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a temp file in the same directory, fsync, then rename it over
    ``path``: readers see the old file or the complete new one, never a partial write. The
    file's mode is ``0o666 & ~umask`` (what ``open(path, "wb")`` would give). An OS error
    (disk full, file too large, no permission...) is a :class:`WriteError` naming ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-",
                                   suffix=os.path.basename(path), dir=directory)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) or isinstance(exc, RuntimeError) and (
                "inline_container" in str(exc) or "file write failed" in str(exc)):
            raise write_error(path, exc, written) from None
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temp_files(directory: str) -> list[str]:
    """Delete the ``.tmp-<pid>-*`` files of writers that no longer run (a process killed in
    the middle of ``atomic_write``); returns the removed paths. Temp files of live processes
    are left alone; a temp file without a pid (older versions) counts as stale."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(TEMP_PREFIX):
            continue
        pid_text = name[len(TEMP_PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and (int(pid_text) == os.getpid() or _pid_alive(int(pid_text))):
            continue
        path = os.path.join(directory, name)
        try:
            os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def atomic_save(obj: Any, path: str) -> None:
    """torch.save ``obj`` to ``path`` atomically."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def payload_digest(obj: Any) -> str:
    """SHA-256 over a saved structure: dict keys and values in order, list/tuple items, each
    tensor's dtype, shape and raw bytes, every other leaf's type and repr."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            if t.numel():
                digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}:".encode())
            for key, item in value.items():
                feed(key)
                feed(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{len(value)}:".encode())
            for item in value:
                feed(item)
        else:
            digest.update(f"{type(value).__name__}:{value!r};".encode())

    feed(obj)
    return digest.hexdigest()


def save_file(path: str, kind: str, payload: dict) -> None:
    """Save ``payload`` tagged with the project format, version, kind and its SHA-256."""
    obj = {"format": FORMAT, "version": VERSION, "kind": kind,
           **{k: v for k, v in payload.items() if k != "sha256"}}  # a re-saved file: new digest
    obj["sha256"] = payload_digest(obj)
    atomic_save(obj, path)


def load_file(path: str, kind: str | None = None, map_location: Any = "cpu") -> dict:
    """Load a file written by ``save_file``; refuse anything else with a clear message, and a
    file whose contents no longer match the SHA-256 stored when it was written."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no such file: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt zip, pickle with forbidden globals, truncated file...
        detail = str(exc).splitlines()[0] if str(exc) else ""
        if "weights only load failed" in detail.lower():  # not torch's advice to unpickle it
            detail = "it holds Python objects beyond tensors and plain data, never unpickled here"
        raise CheckpointError(
            f"cannot load {path}: not a valid pocketflow-torch file ({type(exc).__name__}: "
            f"{detail})") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pocketflow-torch file (missing format tag)")
    verify_digest(obj, path)
    if kind is not None and obj.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {obj.get('kind')!r}, expected a {kind!r}")
    return obj


def verify_digest(obj: dict, path: str) -> None:
    """Raise CheckpointError unless ``obj`` matches its stored SHA-256 (version >= 2)."""
    version = obj.get("version")
    if isinstance(version, int) and version < 2:
        return  # written before checksums existed
    stored = obj.get("sha256")
    if not isinstance(stored, str):
        raise CheckpointError(f"{path} records no SHA-256 of its contents (version {version!r} "
                              "files always do): it was altered; re-create it or restore a copy")
    actual = payload_digest({k: v for k, v in obj.items() if k != "sha256"})
    if actual != stored:
        raise CheckpointError(
            f"{path} failed its integrity check: the SHA-256 of its contents ({actual[:12]}...) "
            f"is not the one stored when it was written ({stored[:12]}...); the file is corrupt "
            "or was modified. Re-create it or restore a copy")


def rng_state() -> dict:
    """All RNG states as weights-only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


def check_state_dict_fits(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Raise CheckpointError naming missing, unexpected and shape-mismatched keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict)
                        if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or mismatched:
        def head(keys: list) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {head(unexpected)}")
        if mismatched:
            parts.append("shape mismatch: " + head(
                [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched]))
        raise CheckpointError(f"{source} does not fit the model ({'; '.join(parts)})")
