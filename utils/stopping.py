"""Planned stops: SIGTERM (a scheduler, ``kill``, a CI timeout) and SIGINT (Ctrl-C) end a run
like an error the user can act on: one line naming the signal and the phase the run was in,
locks released (their files removed) on the way out, exit status 128 + the signal (143, 130).

``stop_signals()`` makes SIGTERM and SIGINT raise :class:`Stopped` in the main thread, which
records the phase the run was in (``phase(name)`` marks it: ``train``, ``selection``,
``search``, ``finetune``, ``export``; ``current_phase()`` says it).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_PHASES: list[str] = []


class Stopped(BaseException):
    """The process received a stop signal (a BaseException: nothing catches it by accident)."""

    def __init__(self, signum: int) -> None:
        self.signum, self.phase = signum, current_phase()
        super().__init__(signal.Signals(signum).name)


def exit_status(exc: BaseException) -> int:
    """128 + the signal: 143 for SIGTERM, 130 for SIGINT (a KeyboardInterrupt)."""
    return 128 + (exc.signum if isinstance(exc, Stopped) else int(signal.SIGINT))


def signal_name(exc: BaseException) -> str:
    return signal.Signals(exc.signum).name if isinstance(exc, Stopped) else "SIGINT"


def stopped_phase(exc: BaseException) -> str:
    """The phase the run was in when ``exc`` (a stop) arrived."""
    return exc.phase if isinstance(exc, Stopped) else current_phase()


@contextmanager
def phase(name: str) -> Iterator[None]:
    _PHASES.append(name)
    try:
        yield
    finally:
        _PHASES.pop()


def current_phase() -> str:
    """The innermost phase the run is in ("start-up" before any)."""
    return _PHASES[-1] if _PHASES else "start-up"


@contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`Stopped` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise Stopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
