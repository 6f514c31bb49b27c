"""Evaluation of one transform against a pair's ground truth.

All measures are taken on the fixed image's original grid (the label map's
grid when labels exist): moving labels are pulled through the transform with
nearest-neighbour interpolation; fixed landmarks are pushed through the
transform and compared with the moving landmarks of the same name.
"""

from __future__ import annotations

import math

import numpy as np

from mmreg.imaging.groundtruth import GroundTruth, label_column, nanmean
from mmreg.imaging.image import Grid
from mmreg.imaging.metrics import (
    dice,
    hausdorff95,
    landmark_errors,
    nonpositive_jacobian_pct,
)
from mmreg.imaging.transform import Transform


def evaluate_transform(
    transform: Transform,
    ground_truth: GroundTruth,
    *,
    prefix: str = "",
    with_hd95: bool = True,
) -> dict[str, float]:
    """Overlap and landmark measures of ``transform`` on one pair.

    Args:
        transform: Fixed-to-moving map (world RAS mm).
        ground_truth: Labels and landmarks of the pair.
        prefix: Prepended to every column name (``"initial_"`` for the
            measures before registration).
        with_hd95: Also compute the 95th-percentile Hausdorff distances.

    Returns:
        Columns ``dice_mean``, ``dice_<label>``, ``hd95_mean_mm``,
        ``hd95_<label>_mm``, ``tre_mean_mm``, ``tre_max_mm`` and
        ``n_landmarks`` (all prefixed); NaN where the ground truth is missing.
    """
    row: dict[str, float] = {}
    fixed_labels, moving_labels = ground_truth.fixed_labels, ground_truth.moving_labels
    if fixed_labels is not None and moving_labels is not None:
        warped = transform.apply(moving_labels, fixed_labels.grid, interpolation="nearest")
        labels = sorted(int(v) for v in np.unique(fixed_labels.data) if v != 0)
        scores = dice(fixed_labels.data, warped.data, labels)
        for lab in labels:
            row[f"{prefix}dice_{label_column(lab, ground_truth.label_names)}"] = scores[lab]
        row[f"{prefix}dice_mean"] = nanmean([scores[lab] for lab in labels])
        if with_hd95:
            hd = hausdorff95(fixed_labels.data, warped.data, labels, fixed_labels.spacing)
            for lab in labels:
                row[f"{prefix}hd95_{label_column(lab, ground_truth.label_names)}_mm"] = hd[lab]
            row[f"{prefix}hd95_mean_mm"] = nanmean([hd[lab] for lab in labels])
    else:
        row[f"{prefix}dice_mean"] = math.nan
        if with_hd95:
            row[f"{prefix}hd95_mean_mm"] = math.nan

    names = sorted(set(ground_truth.fixed_landmarks) & set(ground_truth.moving_landmarks))
    if names:
        fixed_pts = np.stack([ground_truth.fixed_landmarks[n] for n in names])
        moving_pts = np.stack([ground_truth.moving_landmarks[n] for n in names])
        errors = landmark_errors(transform.map_points(fixed_pts), moving_pts)
        row[f"{prefix}tre_mean_mm"] = float(np.mean(errors))
        row[f"{prefix}tre_max_mm"] = float(np.max(errors))
    else:
        row[f"{prefix}tre_mean_mm"] = math.nan
        row[f"{prefix}tre_max_mm"] = math.nan
    row[f"{prefix}n_landmarks"] = float(len(names))
    return row


def folding_pct(transform: Transform, grid: Grid) -> float:
    """Percentage of ``grid`` voxels where the map folds (det J <= 0)."""
    if transform.is_linear:
        det = float(np.linalg.det(transform.as_affine()[: grid.ndim, : grid.ndim]))
        return 0.0 if det > 0 else 100.0
    return nonpositive_jacobian_pct(transform.jacobian_determinant(grid))
