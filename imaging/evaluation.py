"""Evaluation of one transform against a pair's ground truth.

All measures are taken on the fixed image's original grid (the label map's
grid when labels exist): moving labels are pulled through the transform with
nearest-neighbour interpolation; fixed landmarks are pushed through the
transform and compared with the moving landmarks of the same name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from mmreg.imaging.groundtruth import GroundTruth, label_column, matching_landmarks, nanmean
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
        ``hd95_<label>_mm``, ``tre_mean_mm``, ``tre_max_mm``, ``tre_<landmark>_mm``
        per landmark (:func:`landmark_columns`) and ``n_landmarks``, the number of
        landmarks whose names are in both files (the ones measured; all prefixed);
        NaN where the ground truth is missing (TRE: when no landmark names match).
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

    names = matching_landmarks(ground_truth.fixed_landmarks, ground_truth.moving_landmarks)
    if names:
        fixed_pts = np.stack([ground_truth.fixed_landmarks[n] for n in names])
        moving_pts = np.stack([ground_truth.moving_landmarks[n] for n in names])
        errors = landmark_errors(transform.map_points(fixed_pts), moving_pts)
        row[f"{prefix}tre_mean_mm"] = float(np.mean(errors))
        row[f"{prefix}tre_max_mm"] = float(np.max(errors))
        for column, error in zip(landmark_columns(names), errors, strict=True):
            row[f"{prefix}{column}"] = float(error)
        if not prefix and len(names) >= 3:
            # The floor of any rigid method: the least-squares rigid fit of the points
            # themselves (Windsor et al.'s "best possible rigid" reference).
            best = landmark_errors(
                apply_points(best_rigid_fit(fixed_pts, moving_pts), fixed_pts), moving_pts
            )
            row[f"{BEST_RIGID_PREFIX}tre_mean_mm"] = float(np.mean(best))
            for column, error in zip(landmark_columns(names), best, strict=True):
                row[f"{BEST_RIGID_PREFIX}{column}"] = float(error)
    else:
        row[f"{prefix}tre_mean_mm"] = math.nan
        row[f"{prefix}tre_max_mm"] = math.nan
    row[f"{prefix}n_landmarks"] = float(len(names))
    return row


#: Column prefix of the best-possible rigid reference errors.
BEST_RIGID_PREFIX = "best_rigid_"


def best_rigid_fit(source: npt.ArrayLike, target: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Least-squares rigid map (4x4, rotation + translation, no reflection) of ``source``
    points onto ``target`` points (Kabsch). Points with z = 0 throughout get an in-plane
    map (2D images).

    Example:
        >>> src = np.array([[0.0, 0, 0], [1, 0, 0], [0, 2, 0]])
        >>> dst = src @ np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]).T + [5, 6, 0]
        >>> np.allclose(apply_points(best_rigid_fit(src, dst), src), dst)
        True
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    planar = bool(np.all(src[:, 2] == 0) and np.all(dst[:, 2] == 0))
    d = 2 if planar else 3
    cs, ct = src[:, :d].mean(0), dst[:, :d].mean(0)
    u, _, vt = np.linalg.svd((src[:, :d] - cs).T @ (dst[:, :d] - ct))
    fix = np.eye(d)
    fix[-1, -1] = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rot = vt.T @ fix @ u.T
    out = np.eye(4)
    out[:d, :d] = rot
    out[:d, 3] = ct - rot @ cs
    return out


def apply_points(
    matrix: npt.NDArray[np.float64], points: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """``points`` (N, 3) through a 4x4 matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:3, :3].T + matrix[:3, 3]


#: ``tre_<x>_mm`` columns that are statistics, not landmarks.
_TRE_STATISTICS = ("mean", "max")
_TRE_COLUMN = re.compile(r"^tre_(?P<name>.+)_mm$")


def landmark_columns(names: Sequence[str]) -> list[str]:
    """The per-landmark error column of each name: ``tre_<name>_mm``, CSV-safe and unique.

    Characters other than letters, digits and ``_`` become ``_``; a landmark that would
    take a statistic's column (``mean``, ``max``) becomes ``landmark_<name>``, and a
    repeated column gets ``_2``, ``_3``, ... (the contract's columns keep their meaning).

    Example:
        >>> landmark_columns(["s1", "Femoral head (L)", "mean", "s 1"])
        ['tre_s1_mm', 'tre_Femoral_head_L_mm', 'tre_landmark_mean_mm', 'tre_s_1_mm']
    """
    out: list[str] = []
    for name in names:
        safe = re.sub(r"[^0-9A-Za-z_]+", "_", str(name)).strip("_") or "landmark"
        if safe in _TRE_STATISTICS:
            safe = f"landmark_{safe}"
        column, k = f"tre_{safe}_mm", 1
        while column in out:
            k += 1
            column = f"tre_{safe}_{k}_mm"
        out.append(column)
    return out


def landmark_error_columns(columns: Iterable[str], *, prefix: str = "") -> dict[str, str]:
    """Landmark name -> its ``<prefix>tre_<name>_mm`` column, among ``columns``.

    The inverse of :func:`landmark_columns` (names as they appear in the columns);
    ``tre_mean_mm`` and ``tre_max_mm`` are statistics and left out.

    Example:
        >>> landmark_error_columns(["tre_mean_mm", "tre_s1_mm", "initial_tre_s1_mm"])
        {'s1': 'tre_s1_mm'}
        >>> landmark_error_columns(["tre_s1_mm", "initial_tre_s1_mm"], prefix="initial_")
        {'s1': 'initial_tre_s1_mm'}
    """
    out: dict[str, str] = {}
    for column in columns:
        column = str(column)
        if not column.startswith(prefix):
            continue
        match = _TRE_COLUMN.match(column[len(prefix) :])
        if match and match["name"] not in _TRE_STATISTICS:
            out[match["name"]] = column
    return out


def folding_pct(transform: Transform, grid: Grid) -> float:
    """Percentage of ``grid`` voxels where the map folds (det J <= 0)."""
    if transform.is_linear:
        det = float(np.linalg.det(transform.as_affine()[: grid.ndim, : grid.ndim]))
        return 0.0 if det > 0 else 100.0
    return nonpositive_jacobian_pct(transform.jacobian_determinant(grid))
