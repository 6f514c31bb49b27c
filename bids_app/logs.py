"""Logging: one-line messages on the terminal, full details in a log file."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

LOGGER = logging.getLogger("mmreg")


class _OneLine(logging.Formatter):
    """Terminal format: never a traceback, never more than one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = " ".join(record.getMessage().split())
        return (
            f"mmreg: {record.levelname.lower()}: {message}"
            if record.levelno >= 30
            else (f"mmreg: {message}")
        )


class _LogFile(logging.FileHandler):
    """The run's log file; a full disk turns it off with one line, not a traceback each.

    logging reports every failed write with a traceback on stderr: on a full disk that is
    tens of thousands of lines, burying the one that matters.
    """

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        logging.getLogger().removeHandler(self)
        if self.failed:
            return
        self.failed = True
        with contextlib.suppress(Exception):
            self.close()
        print(
            f"mmreg: warning: cannot write the log file {self.baseFilename} ({error}); "
            "logging to the terminal only",
            file=sys.stderr,
        )


def setup_logging(log_dir: Path | None, *, verbose: int = 0) -> Path | None:
    """Send INFO+ (or DEBUG with ``-v``) to the terminal and everything to a file.

    Returns:
        The log file's path, or ``None`` when ``log_dir`` is ``None``.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    console.setFormatter(_OneLine())
    # Third-party chatter (pydra, bids) goes to the file only, unless -vv.
    console.addFilter(lambda r: verbose > 1 or r.name.startswith("mmreg"))
    root.addHandler(console)
    if log_dir is None:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "mmreg.log"
    handler = _LogFile(path)
    handler.setLevel(logging.DEBUG)
    # mmreg's own debug lines (tracebacks) always; third-party debug (Pydra's is 97% of
    # a log) only with -vv.
    handler.addFilter(
        lambda r: verbose > 1 or r.levelno >= logging.INFO or r.name.startswith("mmreg")
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root.addHandler(handler)
    for noisy in ("matplotlib", "PIL", "fsspec", "asyncio", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path
