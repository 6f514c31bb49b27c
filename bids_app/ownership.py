"""mmreg never writes over what it did not write: which folders a run may write into.

A run writes OUTPUT_DIR's ``dataset_description.json`` and ``README.md``; ``mmreg demo``
writes a whole BIDS dataset. Pointed at a folder that already holds someone's dataset
(their derivatives, ``BIDS/derivatives/ground-truth``, a real study), either would
replace that person's files. So a folder is written only when it is missing, empty, or
was written by mmreg itself; anything else is refused up front (exit 64), before any
file is touched.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> check_output_dir(folder / "new")  # a missing folder is fine
    >>> _ = (folder / "notes.txt").write_text("mine")
    >>> check_output_dir(folder)
    Traceback (most recent call last):
    ...
    mmreg.errors.UsageError: OUTPUT_DIR ... holds files mmreg did not write (notes.txt); ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmreg.errors import UsageError

#: ``Name`` of the derivatives dataset a participant run writes (derivatives.py).
OUTPUT_NAME = "mmreg: cross-modality registration"


def _description(folder: Path) -> dict[str, Any] | None:
    """The folder's ``dataset_description.json``, ``{}`` if unreadable, ``None`` if absent."""
    path = folder / "dataset_description.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _generated_by_mmreg(description: dict[str, Any]) -> bool:
    generated = description.get("GeneratedBy") or []
    return (
        bool(generated) and isinstance(generated[0], dict) and generated[0].get("Name") == "mmreg"
    )


def is_mmreg_output(folder: Path) -> bool:
    """Whether ``folder`` is a derivatives dataset that mmreg's participant level wrote."""
    description = _description(folder) or {}
    return description.get("Name") == OUTPUT_NAME and _generated_by_mmreg(description)


def is_mmreg_demo(folder: Path) -> bool:
    """Whether ``folder`` is a BIDS dataset that ``mmreg demo`` wrote."""
    description = _description(folder) or {}
    name = str(description.get("Name", ""))
    return name.startswith("mmreg ") and "demo" in name and _generated_by_mmreg(description)


def _foreign_entries(folder: Path, allowed: tuple[Path, ...]) -> list[str]:
    allowed_resolved = {p.resolve() for p in allowed}
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if not entry.name.startswith(".") and entry.resolve() not in allowed_resolved
    )


def check_writable_folder(path: Path, *, option: str) -> None:
    """``path`` is a folder (or can be made one) that this user can write.

    Raises:
        UsageError: A file is in the way, or the folder (or its nearest existing
            parent) is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} exists and is not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {existing} is not writable")


def check_output_dir(output_dir: Path, *, work_dir: Path | None = None) -> None:
    """OUTPUT_DIR is missing, empty, or mmreg's own derivatives dataset.

    Hidden files (``.DS_Store``, ``.git``) and the work dir do not count.

    Raises:
        UsageError: For a folder that holds another dataset or other files.
    """
    output_dir = Path(output_dir)
    check_writable_folder(output_dir, option="OUTPUT_DIR")
    if not output_dir.exists() or is_mmreg_output(output_dir):
        return
    description = _description(output_dir)
    if description is not None:
        name = description.get("Name", "unnamed")
        raise UsageError(
            f"OUTPUT_DIR {output_dir} holds another dataset ({name!r}), not mmreg's "
            "derivatives; mmreg never writes over files it did not write: choose a new "
            f"folder (e.g. {output_dir / 'mmreg'})"
        )
    foreign = _foreign_entries(output_dir, (work_dir,) if work_dir else ())
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UsageError(
            f"OUTPUT_DIR {output_dir} holds files mmreg did not write ({shown}); "
            "mmreg never writes over them: choose an empty or new folder"
        )


def check_demo_dir(bids_dir: Path) -> None:
    """``mmreg demo`` writes its dataset only where none is, or over its own demo.

    Raises:
        UsageError: For a folder that holds another dataset or other files.
    """
    bids_dir = Path(bids_dir)
    check_writable_folder(bids_dir, option="--out")
    if not bids_dir.exists() or is_mmreg_demo(bids_dir):
        return
    foreign = _foreign_entries(bids_dir, ())
    if foreign:
        raise UsageError(
            f"--out: {bids_dir} already holds a dataset or files that mmreg demo did not "
            "write; the demo never replaces them: choose a new --out folder"
        )
