"""Exceptions that carry a one-line, user-facing reason.

Anything raised as an :class:`MmregError` is reported to the user as its
message alone (one line, no traceback); everything else is treated as a bug
and its traceback goes to the log file.
"""


class MmregError(Exception):
    """Base class for errors whose message is a complete one-line reason."""

    def __init__(self, message: str) -> None:
        # Never let a multi-line message through: rows and terminals need one line.
        super().__init__(" ".join(str(message).split()))


class InputError(MmregError):
    """An input file is missing, unreadable or unusable for registration."""


class TransformError(MmregError):
    """A transform file cannot be read, or a transform cannot be applied."""


class RegistrationError(MmregError):
    """A registration method failed on otherwise valid images."""


class UsageError(MmregError):
    """The command line or configuration is invalid."""
