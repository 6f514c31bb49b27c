"""Segment the MR slices of unseen subjects with a transfer U-Net and score them.

Only the MR of each pair is read: it becomes its mid-coronal slice (as in training), the
U-Net labels it, and the labels are compared with the MR's own ground truth on that
slice (``space-midcoronal_dseg`` when the ground-truth dataset has it, else the MR's 3D
labels sampled on the slice). One CSV row per subject: ``subject, session, status,
error, truth, runtime_s, dice_mean, dice_<label>...``; where the MR's 3D labels are
known, also ``footprint_dice_mean, footprint_dice_<label>...`` against their AP
projection footprint (:func:`~mmreg.segmentation.transfer.footprint_truth`), the same
kind of object as the DXA labels the U-Net learnt from.

Example:
    >>> rows = [{"subject": "01", "status": "ok", "dice_spine": 0.9, "dice_pelvis": 0.7},
    ...         {"subject": "02", "status": "failed", "error": "no ground truth"}]
    >>> summarise(rows)
    {'n_ok': 1, 'n_failed': 1, 'dice_spine': 0.9, 'dice_pelvis': 0.7, 'dice_mean': 0.8}
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmreg.atomic import atomic_write_text
from mmreg.errors import InputError
from mmreg.imaging.groundtruth import label_column
from mmreg.imaging.image import load_labels, save_image
from mmreg.pipeline import Failure
from mmreg.segmentation.train import dice_per_class
from mmreg.segmentation.transfer import (
    footprint_truth,
    load_mr_slice,
    mr_side,
    slice_truth,
    subject_id,
    truth_path,
)
from mmreg.segmentation.unet_transfer import TransferSegmenter

__all__ = ["evaluate_subjects", "summarise", "write_rows"]

LOG = logging.getLogger("mmreg.segmentation.evaluate")

FIRST_COLUMNS = ("subject", "session", "status", "error", "truth", "runtime_s", "dice_mean")


def evaluate_subjects(
    pairs: Sequence[Mapping[str, Any]],
    segmenter: TransferSegmenter,
    *,
    device: str = "cpu",
    progress: bool = True,
    predictions: Path | None = None,
) -> list[dict[str, Any]]:
    """Predict each pair's MR-slice labels and measure per-label Dice against the truth.

    Args:
        pairs: Pair records (as ``mmreg train`` builds them); one per subject is used.
        segmenter: The trained U-Net (from :func:`.unet_transfer.load_unet_transfer`).
        device: ``cpu`` or ``cuda``.
        progress: Show a progress bar.
        predictions: If given, the predicted label maps are written there as
            ``sub-<l>_space-midcoronal_desc-unetTransfer_dseg.nii.gz``.

    Returns:
        One row per subject; a failed subject has ``status`` ``failed`` and its reason.
    """
    from tqdm.auto import tqdm

    names = segmenter.label_names
    n_classes = segmenter.config.n_classes
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for record in tqdm(pairs, desc="segment", unit="subject", disable=not progress):
        sid = subject_id(record)
        if sid in seen:
            continue
        seen.add(sid)
        row: dict[str, Any] = {
            "subject": record["subject"],
            "session": record.get("session") or "",
            "status": "ok",
            "error": "",
        }
        start = time.perf_counter()
        try:
            side = mr_side(record)
            mr = load_mr_slice(record[side])
            predicted = segmenter.predict(mr, device=device)
            if predictions is not None:
                Path(predictions).mkdir(parents=True, exist_ok=True)
                name = f"sub-{sid}_space-midcoronal_desc-unetTransfer_dseg.nii.gz"
                save_image(predicted, Path(predictions) / name, dtype=np.int16)
            path = truth_path(record, side)
            footprint = footprint_truth(record, side, mr)
            if path is None and footprint is None:
                raise InputError("no ground-truth label map of the MR")
            if path is not None:
                row["truth"] = path.name
                truth = slice_truth(load_labels(path), mr).data
                row.update(_dice_columns(predicted.data, truth, n_classes, names, ""))
            if footprint is not None:
                row.update(
                    _dice_columns(predicted.data, footprint.data, n_classes, names, "footprint_")
                )
        except Exception as exc:  # one bad subject must not stop the evaluation
            failure = Failure.from_exception(exc)
            LOG.warning("sub-%s: %s", sid, failure.reason)
            row.update(status="failed", error=failure.reason)
        row["runtime_s"] = round(time.perf_counter() - start, 3)
        rows.append(row)
    return rows


def _dice_columns(
    predicted: np.ndarray, truth: np.ndarray, n_classes: int, names: Any, prefix: str
) -> dict[str, float]:
    """``<prefix>dice_mean`` and ``<prefix>dice_<label>`` of one prediction."""
    scores = dice_per_class(predicted, truth, n_classes)
    finite = [d for d in scores if math.isfinite(d)]
    out = {f"{prefix}dice_mean": float(np.mean(finite)) if finite else math.nan}
    for index, value in enumerate(scores, start=1):
        out[f"{prefix}dice_{label_column(index, names)}"] = value
    return out


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean of every ``dice_*`` (and ``footprint_dice_*``) column over the ok rows;
    ``dice_mean`` (``footprint_dice_mean``) is the mean of its labels' means."""
    ok = [r for r in rows if r.get("status") == "ok"]
    out: dict[str, Any] = {"n_ok": len(ok), "n_failed": len(rows) - len(ok)}
    for prefix in ("", "footprint_"):
        head = f"{prefix}dice_"
        columns = [c for r in ok for c in r if c.startswith(head) and c != f"{head}mean"]
        if not columns and prefix:
            continue
        for column in dict.fromkeys(columns):
            values = [float(r[column]) for r in ok if column in r and math.isfinite(r[column])]
            out[column] = round(float(np.mean(values)), 4) if values else math.nan
        labels = [out[c] for c in dict.fromkeys(columns) if math.isfinite(out[c])]
        out[f"{head}mean"] = round(float(np.mean(labels)), 4) if labels else math.nan
    return out


def write_rows(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write the rows as CSV (first the fixed columns, then the label columns in order)."""
    extra = [c for r in rows for c in r if c not in FIRST_COLUMNS]
    columns = [*FIRST_COLUMNS, *dict.fromkeys(extra)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c, "")) for c in columns})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else round(value, 6)
    return value
