"""Ctrl-C and SIGTERM stop a run; they are never recorded as a failed registration.

A SIGINT that arrives while SimpleITK or ANTs is inside C++ code surfaces in Python as
whatever the library makes of it: SimpleITK turns a ``KeyboardInterrupt`` raised in its
iteration callback into a ``RuntimeError``. A task that turns every exception into a
``failed`` row would then cache that "failure", and every later resume would repeat it.
:func:`interrupts_watched` remembers that a signal came, whatever the library did with
it, and :class:`Interrupted` is raised after the task body, so the engine keeps no result.

Example:
    >>> import os, signal
    >>> with interrupts_watched() as watch:
    ...     try:
    ...         os.kill(os.getpid(), signal.SIGINT)
    ...     except KeyboardInterrupt:
    ...         pass  # a library swallowed it
    >>> watch.signal == signal.SIGINT
    True
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any, TypeVar

#: Exit status of a run stopped by a signal (the shell's 128 + SIGINT).
EXIT_INTERRUPTED = 130
#: The signals that stop a run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT or SIGTERM; never a registration failure."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass
class Watch:
    """The first stop signal seen inside :func:`interrupts_watched`, if any."""

    signal: int | None = None


@contextlib.contextmanager
def interrupts_watched() -> Iterator[Watch]:
    """Raise :class:`Interrupted` on SIGINT/SIGTERM, and remember it was raised.

    Only the main thread can handle signals; elsewhere this watches nothing.
    """
    watch = Watch()
    if threading.current_thread() is not threading.main_thread():
        yield watch
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        watch.signal = watch.signal or signum
        if multiprocessing.parent_process() is not None:
            # A worker process of the run: end at once and quietly (no traceback from
            # inside a library callback); the run's main process reports the interrupt.
            os._exit(EXIT_INTERRUPTED)
        if frame is not None and frame.f_code in _QUIET_CODES:
            # Inside a library's callback (C++ calling Python): raising here only makes the
            # library print a traceback. The signal is remembered and raised when the task
            # body ends (raise_if_interrupted).
            return
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield watch
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


_QUIET_CODES: set[CodeType] = set()

F = TypeVar("F", bound=Callable[..., Any])


def library_callback(func: F) -> F:
    """Mark ``func`` as called from C++ (e.g. a SimpleITK iteration command).

    A stop signal that arrives while it runs is not raised inside it (the library would
    print the traceback, or turn it into its own error); it is raised after the task body.
    """
    _QUIET_CODES.add(func.__code__)
    return func


def raise_if_interrupted(watch: Watch) -> None:
    """Raise :class:`Interrupted` if a stop signal came, even if something swallowed it."""
    if watch.signal is not None:
        raise Interrupted(watch.signal)
