"""argparse pieces shared by every mmreg command (``mmreg``, ``mmreg train``, ``mmreg register``).

Usage errors are raised as :class:`mmreg.errors.UsageError` (exit 64), and ``--help`` /
``--version`` as :class:`ParserExit`, so that the caller, not argparse, ends the process.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from mmreg.errors import UsageError

__all__ = ["Parser", "ParserExit", "no_exit", "positive_int"]


class Parser(argparse.ArgumentParser):
    """argparse with usage errors raised (exit 64 in :func:`main`), not ``sys.exit(2)``."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message)


class ParserExit(Exception):
    """``--help``/``--version`` finished; carries the exit status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def no_exit(parser: argparse.ArgumentParser) -> None:
    def exit_(status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise ParserExit(status)

    parser.exit = exit_  # type: ignore[method-assign]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
