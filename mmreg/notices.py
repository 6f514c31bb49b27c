"""Warnings about a pair's inputs travel with its results to the user.

A task may run in a worker process or a SLURM job whose log nobody reads, and a cached
task does not run at all on a resume. So every mmreg task collects what ``mmreg.*``
loggers warned about while it ran (:func:`collecting`); manifests and evaluation rows
carry those lines (a ``warnings`` column), and the participant level repeats them on
the terminal, once per pair and method.

Example:
    >>> import logging
    >>> with collecting() as lines:
    ...     logging.getLogger("mmreg.imaging").warning("a.nii.gz: complex data")
    ...     logging.getLogger("mmreg.imaging").warning("a.nii.gz: complex data")
    >>> lines
    ['a.nii.gz: complex data']
    >>> merge(["x"], ["y", "x"])
    ['x', 'y']
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

_CURRENT: ContextVar[list[str] | None] = ContextVar("mmreg_notices", default=None)


class _Collector(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        message = " ".join(record.getMessage().split())
        if message not in self.lines:
            self.lines.append(message)


@contextlib.contextmanager
def collecting() -> Iterator[list[str]]:
    """Collect the distinct warnings of ``mmreg.*`` loggers until the block ends."""
    lines: list[str] = []
    handler = _Collector(lines)
    logger = logging.getLogger("mmreg")
    logger.addHandler(handler)
    token = _CURRENT.set(lines)
    try:
        yield lines
    finally:
        _CURRENT.reset(token)
        logger.removeHandler(handler)


def current() -> list[str]:
    """The warnings collected so far by the innermost :func:`collecting` (or none)."""
    return list(_CURRENT.get() or [])


def collector_id() -> int:
    """Identifies the active collection (0: none), so 'warn once' can be per task."""
    lines = _CURRENT.get()
    return 0 if lines is None else id(lines)


def merge(*groups: Iterable[str]) -> list[str]:
    """The distinct lines of ``groups``, in first-seen order."""
    out: list[str] = []
    for group in groups:
        out += [line for line in group if line not in out]
    return out
