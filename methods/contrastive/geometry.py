"""2D rigid geometry: least-squares fits, RANSAC, LMedS, sub-pixel peaks.

All transforms are 3x3 homogeneous matrices ``p -> R p + t`` on world (x, y) in mm.

Example:
    >>> import numpy as np
    >>> src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0]])
    >>> dst = src @ rigid(30.0, (2.0, -1.0))[:2, :2].T + [2.0, -1.0]
    >>> round(angle_of(fit_rigid(src, dst)), 6)
    30.0
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = [
    "angle_of",
    "apply",
    "fit_rigid",
    "lmeds_rigid",
    "parabola_offset",
    "ransac_rigid",
    "rigid",
    "subpixel_peak",
]

Array = npt.NDArray[np.float64]


def rigid(angle_deg: float, translation: npt.ArrayLike = (0.0, 0.0)) -> Array:
    """3x3 map ``p -> R(angle) p + t`` (counter-clockwise in x, y)."""
    a = np.deg2rad(angle_deg)
    t = np.asarray(translation, dtype=float)
    return np.array([[np.cos(a), -np.sin(a), t[0]], [np.sin(a), np.cos(a), t[1]], [0, 0, 1.0]])


def angle_of(matrix: Array) -> float:
    """Rotation angle in degrees of a 2D rigid (or near-rigid) 3x3 matrix."""
    return float(np.rad2deg(np.arctan2(matrix[1, 0] - matrix[0, 1], matrix[0, 0] + matrix[1, 1])))


def apply(matrix: npt.NDArray[np.floating], points: npt.ArrayLike) -> Array:
    """Map ``(N, 2)`` points."""
    p = np.atleast_2d(np.asarray(points, dtype=float))
    return p @ matrix[:2, :2].T + matrix[:2, 2]


def fit_rigid(
    src: npt.ArrayLike, dst: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> Array:
    """Weighted least-squares rigid map taking ``src`` ``(N, 2)`` onto ``dst`` (N >= 2).

    The 2D Procrustes solution without scaling: the angle is
    ``atan2(sum w (a x b), sum w (a . b))`` over the centred point pairs, which never
    yields a reflection.

    Example:
        >>> fit_rigid([[0, 0], [1, 0]], [[5, 5], [5, 6]]).round(6).tolist()
        [[0.0, -1.0, 5.0], [1.0, 0.0, 5.0], [0.0, 0.0, 1.0]]
    """
    a = np.asarray(src, dtype=float)
    b = np.asarray(dst, dtype=float)
    w = np.ones(len(a)) if weights is None else np.asarray(weights, dtype=float)
    if len(a) < 1 or a.shape != b.shape or w.sum() <= 0:
        raise ValueError("fit_rigid needs matching point sets and positive weights")
    w = w / w.sum()
    ca, cb = w @ a, w @ b
    a0, b0 = a - ca, b - cb
    cross = np.sum(w * (a0[:, 0] * b0[:, 1] - a0[:, 1] * b0[:, 0]))
    dot = np.sum(w * np.sum(a0 * b0, axis=1))
    angle = np.arctan2(cross, dot) if (cross or dot) else 0.0
    r = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    out = np.eye(3)
    out[:2, :2] = r
    out[:2, 2] = cb - r @ ca
    return out


def _residuals(matrix: Array, src: Array, dst: Array) -> Array:
    return np.linalg.norm(apply(matrix, src) - dst, axis=1)


def _minimal_fits(
    src: Array, dst: Array, rng: np.random.Generator, iterations: int
) -> list[tuple[int, int]]:
    """Index pairs to fit from: all pairs when few, else ``iterations`` random ones.

    Pairs whose source points nearly coincide fix no angle and are skipped.
    """
    n = len(src)
    if n * (n - 1) // 2 <= iterations:
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    else:
        first = rng.integers(0, n, size=iterations)
        second = (first + rng.integers(1, n, size=iterations)) % n
        pairs = list(zip(first.tolist(), second.tolist(), strict=True))
    return [(i, j) for i, j in pairs if np.linalg.norm(src[i] - src[j]) > 1e-9]


def ransac_rigid(
    src: npt.ArrayLike,
    dst: npt.ArrayLike,
    *,
    threshold: float,
    iterations: int = 500,
    rng: np.random.Generator | None = None,
    accept: Callable[[Array], bool] | None = None,
) -> tuple[Array, npt.NDArray[np.bool_]]:
    """RANSAC over 2-point rigid fits; returns the refit on the largest inlier set.

    Ties in the inlier count are broken by the smaller sum of inlier residuals, so the
    result does not depend on the sampling order once the consensus set is found.

    Args:
        src, dst: Matched points ``(N, 2)``, N >= 2.
        threshold: Largest residual (mm) of an inlier.
        iterations: Random minimal samples (all pairs are tried when fewer).
        rng: Random generator (seeded by the caller for reproducibility).
        accept: Optional prior: minimal fits it rejects (an implausible rotation or
            shift) are not considered.

    Returns:
        The least-squares rigid fit on the inliers, and the inlier mask (all false when
        no minimal fit was accepted).
    """
    a = np.asarray(src, dtype=float)
    b = np.asarray(dst, dtype=float)
    if len(a) < 2:
        raise ValueError("RANSAC needs at least two matches")
    rng = rng or np.random.default_rng(0)
    best: tuple[int, float] = (-1, np.inf)
    best_mask = np.zeros(len(a), dtype=bool)
    for i, j in _minimal_fits(a, b, rng, iterations):
        model = fit_rigid(a[[i, j]], b[[i, j]])
        if accept is not None and not accept(model):
            continue
        res = _residuals(model, a, b)
        mask = res <= threshold
        score = (int(mask.sum()), float(res[mask].sum()))
        if score[0] > best[0] or (score[0] == best[0] and score[1] < best[1]):
            best, best_mask = score, mask
    if best[0] < 0:  # every minimal fit was rejected by the prior
        return fit_rigid(a, b), np.zeros(len(a), dtype=bool)
    if best_mask.sum() < 2:
        best_mask = np.ones(len(a), dtype=bool)
    return fit_rigid(a[best_mask], b[best_mask]), best_mask


def lmeds_rigid(
    src: npt.ArrayLike,
    dst: npt.ArrayLike,
    *,
    iterations: int = 500,
    rng: np.random.Generator | None = None,
    accept: Callable[[Array], bool] | None = None,
) -> tuple[Array, npt.NDArray[np.bool_]]:
    """Least-median-of-squares rigid fit, then least squares on its inliers.

    The minimal fit with the smallest median squared residual wins; its robust scale
    ``1.4826 (1 + 5 / (n - 2)) sqrt(median)`` (Rousseeuw & Leroy) sets the inlier cut at
    2.5 scales, and the final map is the least-squares fit on those inliers. ``accept``:
    as for :func:`ransac_rigid`.
    """
    a = np.asarray(src, dtype=float)
    b = np.asarray(dst, dtype=float)
    n = len(a)
    if n < 2:
        raise ValueError("LMedS needs at least two matches")
    if n == 2:
        return fit_rigid(a, b), np.ones(2, dtype=bool)
    rng = rng or np.random.default_rng(0)
    best, best_median = None, np.inf
    for i, j in _minimal_fits(a, b, rng, iterations):
        model = fit_rigid(a[[i, j]], b[[i, j]])
        if accept is not None and not accept(model):
            continue
        median = float(np.median(_residuals(model, a, b) ** 2))
        if median < best_median:
            best, best_median = model, median
    if best is None:
        return fit_rigid(a, b), np.ones(n, dtype=bool)
    scale = 1.4826 * (1.0 + 5.0 / max(n - 2, 1)) * np.sqrt(best_median)
    mask = _residuals(best, a, b) <= max(2.5 * scale, 1e-9)
    if mask.sum() < 2:
        mask = np.ones(n, dtype=bool)
    return fit_rigid(a[mask], b[mask]), mask


def parabola_offset(left: float, centre: float, right: float) -> float:
    """Offset in [-0.5, 0.5] of the vertex of the parabola through three equally spaced values.

    Example:
        >>> parabola_offset(0.0, 1.0, 0.0), parabola_offset(0.0, 4.0, 3.0)
        (0.0, 0.3)
    """
    denom = left - 2.0 * centre + right
    if not np.isfinite(denom) or denom >= 0:
        return 0.0  # not a maximum (flat or convex): keep the grid position
    return float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5)) + 0.0  # no -0.0


def subpixel_peak(values: npt.NDArray[np.floating]) -> tuple[float, float, float]:
    """The maximum of a 2D map, refined per axis by a parabola: ``(row, col, value)``.

    Example:
        >>> m = np.zeros((5, 5)); m[2, 2] = 4.0; m[2, 3] = 3.0
        >>> subpixel_peak(m)
        (2.0, 2.3, 4.0)
    """
    v = np.asarray(values, dtype=float)
    r, c = np.unravel_index(int(np.argmax(v)), v.shape)
    dr = dc = 0.0
    if 0 < r < v.shape[0] - 1:
        dr = parabola_offset(v[r - 1, c], v[r, c], v[r + 1, c])
    if 0 < c < v.shape[1] - 1:
        dc = parabola_offset(v[r, c - 1], v[r, c], v[r, c + 1])
    return float(r + dr), float(c + dc), float(v[r, c])
