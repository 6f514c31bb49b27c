"""What identifies the code that produced a result.

Pydra's cache hash covers a task's inputs, not the code of the functions it
runs, so a changed method could be served stale from an old work dir. Every
task therefore takes :func:`code_fingerprint` as an input: the version plus a
digest of the installed package's Python sources.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

import mmreg

#: Subpackages whose sources decide results (the CLI layer does not).
_RESULT_PACKAGES = ("mmreg", "mmreg.imaging", "mmreg.methods", "mmreg.tasks", "mmreg.workflows")


@functools.cache
def code_fingerprint() -> str:
    """``"<version>+<12 hex digits>"`` over the result-deciding sources.

    Example:
        >>> code_fingerprint().startswith(mmreg.__version__ + "+")
        True
    """
    import importlib

    digest = hashlib.sha256()
    for name in _RESULT_PACKAGES:
        pkg = importlib.import_module(name)
        for path in sorted(Path(p) for d in pkg.__path__ for p in Path(d).rglob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return f"{mmreg.__version__}+{digest.hexdigest()[:12]}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def files_sha256(paths: Iterable[str | Path | None]) -> str:
    """One hex sha256 over the names and bytes of ``paths`` (``None`` entries skipped).

    The participant workflow puts it in each pair record, so the cache key follows the
    CONTENT of the inputs: an image replaced under the same name is registered again.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = path.write_text("a")
        >>> files_sha256([path, None]) == files_sha256([path])
        True

    Raises:
        OSError: When a file cannot be read.
    """
    digest = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        digest.update(str(path).encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()
