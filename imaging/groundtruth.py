"""Reading the ground-truth derivatives: label maps, label tables and landmarks.

Formats (see the contract in ARCHITECTURE.md):

- ``*_dseg.nii.gz``: integer labels on the image's grid;
- ``dseg.tsv`` at the dataset root: columns ``index`` and ``name``;
- ``*_desc-landmarks.tsv``: columns ``name, x, y, z`` in RAS millimetres.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from mmreg.errors import InputError
from mmreg.imaging.image import Image, describe_os_error, load_labels
from mmreg.typing import PathLike

LOG = logging.getLogger("mmreg.imaging.groundtruth")

Landmarks = dict[str, npt.NDArray[np.float64]]
T = TypeVar("T")
#: Unmatched landmark names listed in a warning before "and N more".
_MAX_NAMES_LISTED = 10


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
    except OSError as exc:
        raise InputError(f"{path.name}: {describe_os_error(exc, path)}") from None
    except UnicodeDecodeError as exc:
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


def matching_landmarks(fixed: Landmarks, moving: Landmarks) -> list[str]:
    """The landmark names in both sets (the ones evaluated), sorted."""
    return sorted(set(fixed) & set(moving))


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_LISTED])
    more = len(names) - _MAX_NAMES_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def warn_unmatched_landmarks(
    fixed: Landmarks, moving: Landmarks, *, fixed_name: str, moving_name: str
) -> list[str]:
    """Log a warning listing the landmark names found in only one of two files.

    Returns:
        The names in both (:func:`matching_landmarks`), which the TRE uses.
    """
    matched = matching_landmarks(fixed, moving)
    only_fixed = sorted(set(fixed) - set(moving))
    only_moving = sorted(set(moving) - set(fixed))
    if not only_fixed and not only_moving:
        return matched
    parts = [
        f"{len(names)} only in the {side} file ({_listed(names)})"
        for names, side in ((only_fixed, "fixed"), (only_moving, "moving"))
        if names
    ]
    outcome = (
        f"TRE uses the {len(matched)} landmark(s) whose names match"
        if matched
        else "no landmark names match, so the TRE is not computed (NaN)"
    )
    LOG.warning(
        "%s and %s: landmark names differ: %s; %s",
        fixed_name,
        moving_name,
        "; ".join(parts),
        outcome,
    )
    return matched


def load_ground_truth(
    *,
    fixed_labels: PathLike | None = None,
    moving_labels: PathLike | None = None,
    fixed_landmarks: PathLike | None = None,
    moving_landmarks: PathLike | None = None,
    label_table: PathLike | None = None,
    fixed_image: PathLike | None = None,
    moving_image: PathLike | None = None,
) -> GroundTruth:
    """Read whichever ground-truth files exist for a pair.

    Args:
        fixed_labels: Label map of the fixed image.
        moving_labels: Label map of the moving image.
        fixed_landmarks: Landmarks TSV of the fixed image.
        moving_landmarks: Landmarks TSV of the moving image.
        label_table: ``dseg.tsv`` naming the labels.
        fixed_image: The fixed image: when given, its label map must be on its grid.
        moving_image: The moving image: likewise.

    Raises:
        InputError: For an unreadable file, or a label map that is not on its image's
            grid (naming both grids).

    Landmarks whose names are in only one of the two files are left out of the TRE,
    with a warning naming them.
    """

    def maybe(path: PathLike | None, reader: Callable[[PathLike], T]) -> T | None:
        return reader(path) if path and Path(path).exists() else None

    def labels(image: PathLike | None) -> Callable[[PathLike], Image]:
        return lambda path: load_labels(path, image=image)

    names = maybe(label_table, read_label_names) or {}
    fixed_points = maybe(fixed_landmarks, read_landmarks) or {}
    moving_points = maybe(moving_landmarks, read_landmarks) or {}
    if fixed_points and moving_points:
        warn_unmatched_landmarks(
            fixed_points,
            moving_points,
            fixed_name=Path(str(fixed_landmarks)).name,
            moving_name=Path(str(moving_landmarks)).name,
        )
    return GroundTruth(
        fixed_labels=maybe(fixed_labels, labels(fixed_image)),
        moving_labels=maybe(moving_labels, labels(moving_image)),
        fixed_landmarks=fixed_points,
        moving_landmarks=moving_points,
        label_names=names,
    )


def nanmean(values: list[float]) -> float:
    """Mean of the finite values, NaN when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
