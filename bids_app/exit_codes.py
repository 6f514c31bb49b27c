"""The exit codes of the command-line contract (``../ARCHITECTURE.md``), defined once."""

from mmreg.interrupts import EXIT_INTERRUPTED

EXIT_OK = 0
#: Some (pair, method) rows failed; every other subject completed.
EXIT_SOME_FAILED = 65
EXIT_USAGE = 64
EXIT_NO_INPUT = 66
EXIT_NOT_BIDS = 16
EXIT_NO_MATCH = 18
#: A bug or an engine failure: nothing else leaves mmreg.
EXIT_SOFTWARE = 70

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_NOT_BIDS",
    "EXIT_NO_INPUT",
    "EXIT_NO_MATCH",
    "EXIT_OK",
    "EXIT_SOFTWARE",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
]
