"""Atomic file writing: readers never see a half-written file.

Every output is written to a temporary name in the destination folder and
renamed into place; ``os.replace`` is atomic on POSIX within one filesystem.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The temporary name keeps the full suffix (``.nii.gz``, ``.h5``) so that
    libraries choosing a format from the extension still do the right thing.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_path(d / "a.txt") as tmp:
        ...     _ = tmp.write_text("hello")
        >>> (d / "a.txt").read_text()
        'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600 files; outputs get the usual umask-based mode instead, so that
        # collaborators (or the host user, after a container run as root) can read them.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    # Linux reports it without changing it; elsewhere os.umask must set it to read it.
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy ``src`` to ``dst`` atomically and return ``dst``."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


#: The temporary names :func:`atomic_path` makes: ``.<name>.<8 random>.tmp<suffix>``.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)*$")


def remove_stale_temporaries(folder: str | os.PathLike[str], *, skip: Sequence[Path] = ()) -> int:
    """Delete temporary files a killed run left in ``folder`` (recursively); return how many.

    Only names :func:`atomic_path` makes are touched, and folders in ``skip`` (a work dir
    inside the output folder) are left alone. Call it only when no other run writes here.
    """
    root = Path(folder)
    if not root.is_dir():
        return 0
    skipped = [Path(s).resolve() for s in skip]
    removed = 0
    for path in root.rglob(".*.tmp*"):
        resolved = path.resolve()
        if any(resolved.is_relative_to(s) for s in skipped):
            continue
        if path.is_file() and _TEMPORARY.match(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
