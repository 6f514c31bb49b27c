"""The data dictionary of mmreg's CSV tables: one description (and unit) per column.

Every CSV mmreg writes gets a JSON sidecar of the same name (``..._evaluation.json``), in
the format BIDS uses for tabular files: column name -> ``{"Description": ..., "Units": ...}``.
Columns made from labels and landmarks (``dice_<label>``, ``tre_<landmark>_mm``) and the
``initial_``/``best_rigid_`` variants and ``_mean``/``_median``/``_sd`` summaries of other
columns are described by pattern.

>>> describe_column("dice_hippocampus_L")["Description"]
'Dice overlap of label hippocampus_L after registration (fixed labels vs warped moving labels)'
>>> describe_column("initial_tre_mean_mm")["Units"]
'mm'
>>> describe_column("tre_mean_mm_median")["Description"]
'Median over the group of: mean target registration error over the landmarks after registration'
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from mmreg.atomic import atomic_write_text

__all__ = ["describe_column", "describe_columns", "write_data_dictionary"]

_STATIC: dict[str, tuple[str, str | None]] = {
    "subject": ("Participant label (without 'sub-')", None),
    "session": ("Session label (without 'ses-'); empty without sessions", None),
    "fixed": ("Modality label of the fixed (reference) image, e.g. T1w", None),
    "moving": ("Modality label of the moving image, e.g. T2w", None),
    "method": ("Registration method spec (name:key=value, A+B for chains)", None),
    "status": ("'ok', or 'failed' with the one-line reason in 'error'", None),
    "error": ("One-line reason of a failure; empty when ok", None),
    "warnings": ("Warnings raised while registering or evaluating, '; '-separated", None),
    "runtime_s": ("Wall time of the registration itself (not preprocessing or I/O)", "s"),
    "dice_mean": ("Mean Dice over the labels after registration", None),
    "hd95_mean_mm": ("Mean 95th-percentile Hausdorff distance over the labels", "mm"),
    "tre_mean_mm": (
        "mean target registration error over the landmarks after registration",
        "mm",
    ),
    "tre_max_mm": ("Largest landmark error after registration", "mm"),
    "n_landmarks": ("Landmarks the fixed and moving images share", None),
    "neg_jacobian_pct": (
        "Percentage of fixed-grid voxels where the map folds (Jacobian determinant <= 0)",
        "%",
    ),
    "salient_fallback": (
        "1 when contrastive-salient found too few inlier matches and used the dense estimate, "
        "else 0 (its mean over the group: the share of subjects that fell back)",
        None,
    ),
    "fixed_image": ("The fixed image, as a BIDS URI into the input dataset (bids:raw:...)", None),
    "moving_image": ("The moving image, as a BIDS URI into the input dataset", None),
    "warped": ("Warped moving image, relative to the derivatives folder", None),
    "transform": ("Fixed-to-moving ITK transform file, relative to the derivatives folder", None),
    "n": ("Rows in the group (pairs x this method)", None),
    "n_ok": ("Rows with status ok", None),
    "n_failed": ("Rows with status failed", None),
}

_PREFIXES = {
    "initial_": "Before registration (the inputs as they lie in world space, before any "
    "pre-alignment), ",
    "best_rigid_": "Best possible rigid fit of the landmarks (a floor for rigid methods), ",
}
_SUFFIXES = {"_mean": "Mean", "_median": "Median", "_sd": "Standard deviation"}


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def describe_column(name: str) -> dict[str, str]:
    """``{"Description": ..., "Units": ...}`` (``Units`` only where there is one)."""
    if name in _STATIC:
        text, units = _STATIC[name]
        text = text[:1].upper() + text[1:]
        return {"Description": text, **({"Units": units} if units else {})}
    for prefix, words in _PREFIXES.items():
        if name.startswith(prefix):
            inner = describe_column(name[len(prefix) :])
            inner["Description"] = words + _lower_first(inner["Description"]).replace(
                " after registration", ""
            )
            return inner
    for suffix, words in _SUFFIXES.items():
        base = name[: -len(suffix)]
        if name.endswith(suffix) and (base in _STATIC or _pattern(base)):
            inner = describe_column(base)
            inner["Description"] = (
                f"{words} over the group of: {_lower_first(inner['Description'])}"
            )
            return inner
    found = _pattern(name)
    if found:
        return found
    return {"Description": f"Method-specific value {name!r} (see the method's documentation)"}


def _pattern(name: str) -> dict[str, str] | None:
    if match := re.fullmatch(r"hd95_(.+)_mm", name):
        return {
            "Description": f"95th-percentile Hausdorff distance of label {match[1]}",
            "Units": "mm",
        }
    if match := re.fullmatch(r"tre_(.+)_mm", name):
        return {"Description": f"Error of landmark {match[1]} after registration", "Units": "mm"}
    if match := re.fullmatch(r"dice_(.+)", name):
        return {
            "Description": f"Dice overlap of label {match[1]} after registration "
            "(fixed labels vs warped moving labels)"
        }
    return None


def describe_columns(columns: Iterable[str]) -> dict[str, dict[str, str]]:
    """The data dictionary of a table with these columns (in their order)."""
    return {str(c): describe_column(str(c)) for c in columns}


def write_data_dictionary(csv_path: Path, columns: Iterable[str]) -> Path:
    """Write ``<csv stem>.json`` beside ``csv_path`` describing every column."""
    path = Path(csv_path).with_suffix(".json")
    return atomic_write_text(path, json.dumps(describe_columns(columns), indent=2) + "\n")
