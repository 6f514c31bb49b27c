"""Run the command line in tests without ever leaving a process behind.

A participant run starts pool workers. If a test times out, killing only the run's own
process leaves the workers holding the output pipes, and ``communicate`` then waits for
ever; so every run gets a session of its own and the whole group is killed on the way out.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any


def _kill_group(process: subprocess.Popen) -> None:
    with suppress(ProcessLookupError, PermissionError):  # the group has already gone
        os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def started(argv: Sequence[str], **kwargs: Any) -> Iterator[subprocess.Popen]:
    """``Popen(argv)`` in a new session; the whole group is killed when the block ends."""
    process = subprocess.Popen(list(argv), start_new_session=True, **kwargs)
    try:
        yield process
    finally:
        _kill_group(process)
        process.wait()


def run(
    argv: Sequence[str], *, timeout: float = 900, **kwargs: Any
) -> subprocess.CompletedProcess:
    """Like ``subprocess.run(argv, capture_output=True, text=True, timeout=...)``, group-safe.

    On timeout the whole process group is killed before ``TimeoutExpired`` is raised.
    """
    kwargs.setdefault("text", True)
    with started(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.communicate()
            raise
    return subprocess.CompletedProcess(list(argv), process.returncode, out, err)
