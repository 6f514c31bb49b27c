"""The work dir never serves a truncated or deleted result: task folders are sealed.

Pydra reuses a task's cached result when the task's inputs hash the same; it never looks
at the files that result points to. A task folder whose ``warped.nii.gz`` was truncated
(a full disk, a killed copy) or deleted would be served as it is, forever. So every mmreg
task seals its folder when it finishes: :func:`seal` writes the size and sha256 of each file
the task wrote into ``.mmreg-seal.json``. Before a run, :func:`purge_corrupt` removes every
sealed task folder whose files no longer match, and every task folder whose task raised
(an interrupt), so Pydra recomputes exactly those tasks.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp()) / "python-0123"
    >>> folder.mkdir()
    >>> _ = (folder / "xfm.txt").write_text("transform")
    >>> _ = seal(folder)
    >>> check_seal(folder) is None
    True
    >>> _ = (folder / "xfm.txt").write_text("trans")
    >>> check_seal(folder)
    'xfm.txt: size 5 != 9'
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from mmreg.atomic import atomic_write_text
from mmreg.provenance import sha256_file

#: Name of the seal file in a task folder.
SEAL = ".mmreg-seal.json"


def _task_files(folder: Path) -> Iterator[Path]:
    """Files a task wrote: Pydra's own (``_*.pklz``, locks) and hidden files excluded."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(("_", ".")) for part in rel.parts) or not path.is_file():
            continue
        yield path


def seal(folder: str | os.PathLike[str]) -> Path:
    """Record size and sha256 of every file the task wrote into ``folder``."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _task_files(folder)
    }
    return atomic_write_text(folder / SEAL, json.dumps(files, indent=1, sort_keys=True))


def check_seal(folder: str | os.PathLike[str]) -> str | None:
    """Why a sealed folder no longer holds what its task wrote, or ``None`` if it does.

    An unsealed folder (no seal file) is not judged: ``None``.
    """
    folder = Path(folder)
    try:
        files = json.loads((folder / SEAL).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"{SEAL}: unreadable ({type(exc).__name__})"
    for name, expected in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name}: missing"
        if size != expected["size"]:
            return f"{name}: size {size} != {expected['size']}"
        if sha256_file(path) != expected["sha256"]:
            return f"{name}: content changed"
    return None


def purge_corrupt(cache_root: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """Remove every sealed task folder under ``cache_root`` whose files do not match.

    When any is removed, Pydra's cached *workflow* results (``workflow-*``) go too: they
    only point at task results, and a cached workflow would not look inside again.

    Returns:
        The removed task folders, each with the reason.
    """
    root = Path(cache_root)
    if not root.is_dir():
        return []
    removed = []
    for folder in sorted(p.parent for p in root.glob(f"*/{SEAL}")):
        reason = check_seal(folder)
        if reason is not None:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append((folder, reason))
    # Pydra also keeps the result of a task that raised (an interrupt, a bug), and would
    # serve it on every rerun. Every mmreg task seals its folder before Pydra writes a
    # successful result; a folder of another run still working has no result yet.
    for result in sorted(root.glob("python-*/_result.pklz")):
        if not (result.parent / SEAL).exists():
            shutil.rmtree(result.parent, ignore_errors=True)
            removed.append((result.parent, "did not finish"))
    if removed:
        forget_workflows(root)
    return removed


def forget_workflows(cache_root: str | os.PathLike[str]) -> None:
    """Drop Pydra's cached workflow results, so each task's own cache is looked at again."""
    for folder in Path(cache_root).glob("workflow-*"):
        if any((folder / name).exists() for name in ("_job.pklz", "_result.pklz")):
            shutil.rmtree(folder, ignore_errors=True)


#: An empty lock file older than this (seconds) belongs to a killed process: a live holder
#: writes its owner record right after creating the file.
STALE_LOCK_AGE_S = 30.0


def remove_stale_locks(
    *folders: str | os.PathLike[str], min_age_s: float = STALE_LOCK_AGE_S
) -> list[Path]:
    """Remove the empty ``*.lock`` files older than ``min_age_s`` in ``folders``.

    Pydra guards its task folders and its file-hash cache with soft (file-exists) locks.
    A process killed (SIGKILL, the out-of-memory killer, a SLURM time limit) between
    creating such a file and writing its owner into it leaves a lock that nobody can
    prove stale, and every later run would wait on it for ever. Locks that name their
    owner are left to the lock library, which breaks them when that process is gone.

    Example:
        >>> import tempfile, time
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.lock").write_text("")
        >>> _ = (folder / "b.lock").write_text("1234 host")
        >>> old = time.time() - 60
        >>> for name in ("a.lock", "b.lock"):
        ...     os.utime(folder / name, (old, old))
        >>> _ = (folder / "c.lock").write_text("")  # fresh: may be being written now
        >>> [p.name for p in remove_stale_locks(folder)]
        ['a.lock']
    """
    removed = []
    now = time.time()
    for folder in folders:
        for lock in sorted(Path(folder).glob("*.lock")):
            try:
                info = lock.stat()
                if info.st_size == 0 and now - info.st_mtime >= min_age_s:
                    lock.unlink()
                    removed.append(lock)
            except FileNotFoundError:
                continue  # released (or removed by a concurrent run) meanwhile
    return removed
