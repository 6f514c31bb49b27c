"""Evaluation metrics: label overlap, surface distance, landmark error, folding.

One function per metric, each on plain arrays (label maps on the same grid,
points in world mm), so they are easy to check by hand and to reuse.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage


def _check_same_shape(a: npt.NDArray, b: npt.NDArray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")


def _label_list(a: npt.NDArray, b: npt.NDArray, labels: Iterable[int] | None) -> list[int]:
    if labels is None:
        found = np.union1d(np.unique(a), np.unique(b))
        return [int(v) for v in found if v != 0]
    return [int(v) for v in labels]


def dice(
    a: npt.NDArray[np.integer],
    b: npt.NDArray[np.integer],
    labels: Iterable[int] | None = None,
) -> dict[int, float]:
    """Dice overlap per label: ``2 |A ∩ B| / (|A| + |B|)``.

    Args:
        a: Label map (integer array).
        b: Label map of the same shape.
        labels: Labels to score; default: every non-zero label present in
            ``a`` or ``b``.

    Returns:
        ``{label: dice}``. A label absent from both maps is left out; a label
        absent from only one scores 0.0.

    Example:
        >>> import numpy as np
        >>> a = np.array([1, 1, 1, 0, 2]); b = np.array([0, 1, 1, 1, 0])
        >>> dice(a, b)  # label 1: 2*2/(3+3); label 2: only in a
        {1: 0.6666666666666666, 2: 0.0}
    """
    a, b = np.asarray(a), np.asarray(b)
    _check_same_shape(a, b)
    scores: dict[int, float] = {}
    for lab in _label_list(a, b, labels):
        in_a, in_b = a == lab, b == lab
        total = int(in_a.sum()) + int(in_b.sum())
        if total == 0:
            continue
        scores[lab] = 2.0 * int(np.logical_and(in_a, in_b).sum()) / total
    return scores


def _surface(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Voxels of ``mask`` with a face neighbour outside it (the array edge counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff95(
    a: npt.NDArray[np.integer],
    b: npt.NDArray[np.integer],
    labels: Iterable[int] | None,
    spacing: Sequence[float],
) -> dict[int, float]:
    """95th-percentile symmetric surface distance (HD95) per label, in mm.

    The surface of a label is its voxels with a face neighbour outside the
    label. For every surface voxel of ``A`` the Euclidean distance (in mm,
    using ``spacing``) to the nearest surface voxel of ``B`` is taken, and
    vice versa; HD95 is the 95th percentile (linear interpolation) of the
    pooled set of both directed distances.

    Args:
        a: Label map.
        b: Label map of the same shape.
        labels: Labels to score; ``None``: every non-zero label in ``a`` or ``b``.
        spacing: Voxel size per array axis, mm.

    Returns:
        ``{label: hd95_mm}``; NaN when the label is missing from either map.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((12, 12), int); a[2:6, 2:6] = 1
        >>> b = np.roll(a, 2, axis=1)  # shifted by 2 voxels of 1.5 mm
        >>> hausdorff95(a, b, [1], (1.0, 1.5))
        {1: 3.0}
    """
    a, b = np.asarray(a), np.asarray(b)
    _check_same_shape(a, b)
    sampling = tuple(float(s) for s in spacing)
    if len(sampling) != a.ndim:
        raise ValueError(f"spacing has {len(sampling)} values for a {a.ndim}D label map")
    out: dict[int, float] = {}
    for lab in _label_list(a, b, labels):
        in_a, in_b = a == lab, b == lab
        if not in_a.any() or not in_b.any():
            out[lab] = float("nan")
            continue
        # Distances only involve the two labels, so work in their padded bounding box.
        coords = np.nonzero(in_a | in_b)
        box = tuple(
            slice(max(int(c.min()) - 1, 0), min(int(c.max()) + 2, n))
            for c, n in zip(coords, a.shape, strict=True)
        )
        surf_a, surf_b = _surface(in_a[box]), _surface(in_b[box])
        dist_to_b = ndimage.distance_transform_edt(~surf_b, sampling=sampling)
        dist_to_a = ndimage.distance_transform_edt(~surf_a, sampling=sampling)
        pooled = np.concatenate([dist_to_b[surf_a], dist_to_a[surf_b]])
        out[lab] = float(np.percentile(pooled, 95))
    return out


def landmark_errors(
    mapped_fixed_points: npt.ArrayLike, moving_points: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Target registration error per landmark: ``|T(f_i) - m_i|`` in mm.

    Args:
        mapped_fixed_points: Fixed-space landmarks mapped through the
            fixed->moving transform, ``(N, 3)`` world mm.
        moving_points: The corresponding moving-space landmarks, ``(N, 3)``.

    Returns:
        ``(N,)`` Euclidean distances.

    Example:
        >>> landmark_errors([[0, 0, 0], [1, 1, 1]], [[3, 4, 0], [1, 1, 1]]).tolist()
        [5.0, 0.0]
    """
    p = np.atleast_2d(np.asarray(mapped_fixed_points, dtype=np.float64))
    q = np.atleast_2d(np.asarray(moving_points, dtype=np.float64))
    if p.shape != q.shape:
        raise ValueError(f"point sets differ in shape: {p.shape} vs {q.shape}")
    return np.linalg.norm(p - q, axis=1)


def nonpositive_jacobian_pct(
    detj: npt.ArrayLike, mask: npt.NDArray[np.bool_] | None = None
) -> float:
    """Percentage of voxels where the transform folds: ``100 * #(det J <= 0) / #voxels``.

    Non-finite determinants count as folding (the map is not a valid
    diffeomorphism there).

    Args:
        detj: Jacobian determinant per voxel.
        mask: Optional boolean array selecting the voxels counted.

    Returns:
        Percentage in ``[0, 100]``; NaN when no voxel is selected.

    Example:
        >>> nonpositive_jacobian_pct([1.0, 0.5, 0.0, -2.0])
        50.0
    """
    det = np.asarray(detj, dtype=np.float64)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != det.shape:
            raise ValueError(f"mask shape {mask.shape} does not match {det.shape}")
        det = det[mask]
    if det.size == 0:
        return float("nan")
    folding = ~(det > 0)  # also true for NaN
    return 100.0 * float(folding.sum()) / det.size
