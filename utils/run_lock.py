"""One run per output directory: an advisory ``fcntl`` lock held for the run's lifetime.

``RunLock(dirs).acquire()`` takes an exclusive, non-blocking ``flock`` on ``<dir>/.pocketflow.lock``
for every directory a run writes to, or fails at once with ``RunLockedError`` naming the pid
(and command) of the run that holds it. The kernel drops the lock when its process dies, so a
run killed with SIGKILL never leaves a directory locked. While the lock is held the directory's
temp files of dead writers (``.tmp-<pid>-*``, see ``utils.checkpoint``) are removed.

``release()`` deletes the lock file (an inode check on acquire makes unlink-then-release safe)
and the directories the lock itself had to create, when they stayed empty.
"""
from __future__ import annotations

import fcntl
import logging
import os
import sys
from typing import Callable, Iterable

from utils.checkpoint import remove_stale_temp_files, write_error

log = logging.getLogger("pocketflow")
LOCK_NAME = ".pocketflow.lock"
_HELD: set[str] = set()   # directories locked by this process (a nested run shares them)


class RunLockedError(RuntimeError):
    """Another live run holds an output directory."""


class RunLock:
    """Exclusive advisory locks on a run's output directories (held by one process)."""

    def __init__(self, directories: Iterable[str]) -> None:
        self.directories = sorted({os.path.abspath(d or ".") for d in directories})
        self._held: list[tuple[str, int]] = []   # (lock path, fd)
        self._created: list[str] = []

    def acquire(self) -> "RunLock":
        try:
            for directory in self.directories:
                self._lock(directory)
        except BaseException:
            self.release()
            raise
        return self

    def add(self, directories: Iterable[str]) -> None:
        """Lock more directories (all or none of them) while the lock is held."""
        new = sorted({os.path.abspath(d or ".") for d in directories} - set(self.directories))
        done = len(self._held)
        try:
            for directory in new:
                self._lock(directory)
        except BaseException:
            for path, fd in self._held[done:]:
                os.unlink(path)
                os.close(fd)
                _HELD.discard(os.path.dirname(path))
            del self._held[done:]
            raise
        self.directories = sorted({*self.directories, *new})

    def _lock(self, directory: str) -> None:
        if directory in _HELD:
            return
        if not os.path.isdir(directory):
            missing, parent = [], directory
            while parent and not os.path.isdir(parent):
                missing.append(parent)
                parent = os.path.dirname(parent)
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise write_error(directory, exc) from None
            self._created.extend(missing)            # deepest first
        path = os.path.join(directory, LOCK_NAME)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise write_error(path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunLockedError(
                    f"{directory} is in use by another run ({holder}); wait for it to finish, "
                    "or give this run other output paths (--save_path, --save_path_eval and the "
                    "learner's own *_save_path*)") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:    # the holder released (and unlinked) it meanwhile
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n".encode())
        self._held.append((path, fd))
        _HELD.add(directory)
        for removed in remove_stale_temp_files(directory):
            log.info("removed %s, a temp file left by an interrupted write", removed)

    def release(self) -> None:
        for path, fd in reversed(self._held):
            try:
                os.unlink(path)
            except OSError:
                pass
            os.close(fd)                                  # closing drops the flock
            _HELD.discard(os.path.dirname(path))
        self._held.clear()
        for directory in sorted(self._created, key=len, reverse=True):
            try:
                os.rmdir(directory)                       # only when nothing was written
            except OSError:
                pass
        self._created.clear()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def on_primary(mgw, take: Callable[[], None]) -> None:
    """``take()`` (``lock.acquire`` or ``lock.add``) on the primary process of ``mgw`` (a
    MultiGpuWrapper); every process raises the same RunLockedError when it fails."""
    error = None
    if mgw.is_primary():
        try:
            take()
        except RunLockedError as exc:
            error = str(exc)
    error = mgw.broadcast_object(error)
    if error:
        raise RunLockedError(error)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 600, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"
