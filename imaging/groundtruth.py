"""Reading the ground-truth derivatives: label maps, label tables and landmarks.

Formats (see the contract in ARCHITECTURE.md):

- ``*_dseg.nii.gz``: integer labels on the image's grid;
- ``dseg.tsv`` at the dataset root: columns ``index`` and ``name``;
- ``*_desc-landmarks.tsv``: columns ``name, x, y, z`` in RAS millimetres.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mmreg.errors import InputError
from mmreg.imaging.image import Image, load_labels
from mmreg.typing import PathLike

Landmarks = dict[str, npt.NDArray[np.float64]]


@dataclass(frozen=True)
class GroundTruth:
    """Labels and landmarks of one image pair; every part is optional."""

    fixed_labels: Image | None = None
    moving_labels: Image | None = None
    fixed_landmarks: Landmarks = field(default_factory=dict)
    moving_landmarks: Landmarks = field(default_factory=dict)
    label_names: dict[int, str] = field(default_factory=dict)


def _read_tsv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path.name}: unreadable table ({type(exc).__name__})") from None
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    header = set(rows[0].keys()) if rows else set(text.splitlines()[0].split("\t") if text else [])
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(f"{path.name}: missing column(s) {', '.join(missing)}")
    return rows


def read_landmarks(path: PathLike) -> Landmarks:
    """Read a landmarks TSV (``name, x, y, z``; RAS mm) into ``{name: xyz}``.

    Raises:
        InputError: On a missing column, a non-numeric coordinate or a
            duplicated name.
    """
    path = Path(path)
    out: Landmarks = {}
    for i, row in enumerate(_read_tsv(path, ("name", "x", "y", "z")), start=2):
        name = (row["name"] or "").strip()
        try:
            xyz = np.array([float(row[c]) for c in "xyz"], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{path.name}: line {i}: non-numeric coordinate") from None
        if not name or not np.all(np.isfinite(xyz)):
            raise InputError(f"{path.name}: line {i}: empty name or non-finite coordinate")
        if name in out:
            raise InputError(f"{path.name}: landmark {name!r} appears twice")
        out[name] = xyz
    return out


def read_label_names(path: PathLike) -> dict[int, str]:
    """Read a ``dseg.tsv`` label table into ``{index: name}``."""
    path = Path(path)
    out: dict[int, str] = {}
    for row in _read_tsv(path, ("index", "name")):
        try:
            out[int(row["index"])] = row["name"].strip()
        except (TypeError, ValueError):
            raise InputError(f"{path.name}: non-integer label index {row['index']!r}") from None
    return out


def label_column(index: int, names: dict[int, str]) -> str:
    """A CSV-safe column suffix for a label: its name, else its index.

    Example:
        >>> label_column(3, {3: "White matter"})
        'White_matter'
        >>> label_column(7, {})
        '7'
    """
    name = names.get(index)
    if not name:
        return str(index)
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_") or str(index)


def load_ground_truth(
    *,
    fixed_labels: PathLike | None = None,
    moving_labels: PathLike | None = None,
    fixed_landmarks: PathLike | None = None,
    moving_landmarks: PathLike | None = None,
    label_table: PathLike | None = None,
) -> GroundTruth:
    """Read whichever ground-truth files exist for a pair."""

    def maybe(path: PathLike | None, reader):
        return reader(path) if path and Path(path).exists() else None

    names = maybe(label_table, read_label_names) or {}
    return GroundTruth(
        fixed_labels=maybe(fixed_labels, load_labels),
        moving_labels=maybe(moving_labels, load_labels),
        fixed_landmarks=maybe(fixed_landmarks, read_landmarks) or {},
        moving_landmarks=maybe(moving_landmarks, read_landmarks) or {},
        label_names=names,
    )


def nanmean(values: list[float]) -> float:
    """Mean of the finite values, NaN when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
