"""Engine-free preprocessing: orientation, isotropic resampling, intensity, masks, pre-alignment.

Every function works on 2D and 3D :class:`~mmreg.imaging.image.Image` objects
and keeps world coordinates (RAS mm) intact: a structure at world point ``p``
before a step is still at ``p`` afterwards. Registration methods therefore see
images in a canonical layout, while the transforms they estimate stay valid for
the original, unprocessed images.

The pre-alignment matrix follows the ITK convention used across mmreg: it maps
*fixed*-space world points to *moving*-space world points.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mmreg.errors import InputError, UsageError
from mmreg.imaging.image import Image, check_grid_size
from mmreg.imaging.transform import Transform
from mmreg.typing import Matrix4

PrealignMode = Literal["none", "com", "moments", "auto"]
#: Accepted ``mode`` values of :func:`prealign`.
PREALIGN_MODES: tuple[str, ...] = ("none", "com", "moments", "auto")
#: The pre-alignment a run uses unless told otherwise (see :func:`prealign`).
DEFAULT_PREALIGN: PrealignMode = "auto"
#: The isotropic registration grid (mm) a run uses unless told otherwise.
DEFAULT_SPACING = 2.0

#: ``"auto"``: NMI gain a candidate needs over the one kept so far to replace it.
AUTO_MARGIN = 0.02
#: ``"auto"``: least fraction of a foreground inside the common field of view.
AUTO_MIN_OVERLAP = 0.2
#: ``"auto"``: the fixed grid is strided down to at most this many sample points.
AUTO_MAX_SAMPLES = 1 << 17
#: ``"auto"``: intensity bins per image of the joint histogram.
AUTO_BINS = 32

#: Downsampling factor above which :func:`resample_isotropic` smooths first.
ANTIALIAS_FACTOR = 1.5
#: Relative eigenvalue gap below which principal axes are considered undefined.
_DEGENERATE_GAP = 0.05
#: Sign-choice scores this close to the best are treated as ties (see ``_best_rotation``).
_SCORE_TIE = 0.02


# --------------------------------------------------------------------------- orientation


def reorient_canonical(img: Image) -> Image:
    """Permute and flip the array axes to the closest canonical (RAS+) orientation.

    Same semantics as :func:`nibabel.as_closest_canonical`: voxel axis ``i``
    ends up pointing (mostly) along world axis ``i`` in the positive direction.
    Only axis permutations and flips are applied, so no interpolation happens
    and the world coordinate of every voxel is unchanged. A 2D image keeps its
    two axes, ordered and flipped by the world axes they are closest to (a
    coronal slice becomes ``(R, S)``).

    Args:
        img: 2D or 3D image.

    Returns:
        The reoriented image (the input itself when it is already canonical).

    Example:
        >>> import numpy as np
        >>> flipped = Image(np.arange(6.0).reshape(2, 3), np.diag([-1.0, 1.0, 1.0, 1.0]))
        >>> canon = reorient_canonical(flipped)
        >>> canon.data[:, 0].tolist(), np.diag(canon.affine).tolist()
        ([3.0, 0.0], [1.0, 1.0, 1.0, 1.0])
    """
    if img.ndim == 3:
        ornt = nib.orientations.io_orientation(img.affine)
        to_old = nib.orientations.inv_ornt_aff(ornt, img.shape)
    else:
        # Orient the two in-plane axes only; the slice normal (column 2) is not an array axis.
        cols = [0, 1, 3]
        world_axes = nib.orientations.io_orientation(img.affine[:, cols])
        ranks = np.argsort(np.argsort(world_axes[:, 0]))
        ornt = np.column_stack([ranks, world_axes[:, 1]]).astype(np.float64)
        to_old = np.eye(4)
        to_old[np.ix_(cols, cols)] = nib.orientations.inv_ornt_aff(ornt, img.shape)
    if np.array_equal(ornt, np.column_stack([np.arange(img.ndim), np.ones(img.ndim)])):
        return img
    data = np.ascontiguousarray(nib.orientations.apply_orientation(img.data, ornt))
    return Image(data, img.affine @ to_old)


# --------------------------------------------------------------------------- resampling


def _complete_affine(img: Image) -> Matrix4:
    """The affine with an invertible 4x4 form (2D images may carry a zero slice column)."""
    aff = img.affine.copy()
    if img.ndim == 2 and abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        normal = np.cross(aff[:3, 0], aff[:3, 1])
        aff[:3, 2] = normal / np.linalg.norm(normal)
    return aff


def isotropic_grid_affine(img: Image, spacing: float) -> tuple[tuple[int, ...], Matrix4]:
    """Shape and affine of the isotropic grid :func:`resample_isotropic` samples onto.

    The new axes keep the directions of the image axes; the number of voxels
    along axis ``k`` is ``round(shape[k] * spacing_k / spacing)`` (at least 1)
    and the grid is centred on the old field of view, so the extent changes by
    less than one new voxel.

    Args:
        img: 2D or 3D image.
        spacing: New voxel size in mm.

    Returns:
        ``(shape, affine)`` of the new grid.
    """
    if not np.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"spacing must be a positive number of mm, got {spacing!r}")
    nd = img.ndim
    old_shape = np.asarray(img.shape, dtype=np.float64)
    old_spacing = np.asarray(img.spacing)
    # The same counts, refused before any allocation when they would not fit in memory.
    new_shape = check_grid_size(img.grid, spacing)
    aff = _complete_affine(img)
    centre = aff[:3, :nd] @ ((old_shape - 1) / 2) + aff[:3, 3]
    new_aff = aff.copy()
    new_aff[:3, :nd] = aff[:3, :nd] / old_spacing * spacing
    new_aff[:3, 3] = centre - new_aff[:3, :nd] @ ((np.asarray(new_shape) - 1) / 2)
    return new_shape, new_aff


def resample_isotropic(img: Image, spacing: float, *, order: int = 1) -> Image:
    """Resample onto an isotropic grid covering the same field of view.

    The new grid's axes are parallel to the image's own axes (no rotation is
    introduced) and its centre coincides with the old grid's centre, so world
    positions of structures are preserved. When an axis is downsampled by more
    than ``ANTIALIAS_FACTOR`` and ``order > 0``, it is first smoothed with a
    Gaussian of ``sigma = (factor - 1) / 2`` old voxels to avoid aliasing.
    Samples outside the old grid take the nearest edge value.

    Args:
        img: 2D or 3D image.
        spacing: Isotropic voxel size in mm.
        order: Spline order (0 nearest, for label maps; 1 linear; 3 cubic).

    Returns:
        The resampled image: float32 for ``order > 0``, the input dtype for
        ``order == 0``.

    Example:
        >>> import numpy as np
        >>> img = Image(np.ones((10, 20, 5), np.float32), np.diag([2.0, 1.0, 4.0, 1.0]))
        >>> out = resample_isotropic(img, 2.0)
        >>> out.shape, out.spacing
        ((10, 10, 10), (2.0, 2.0, 2.0))
    """
    new_shape, new_aff = isotropic_grid_affine(img, spacing)
    out_dtype = img.data.dtype if order == 0 else np.dtype(np.float32)
    old_aff = _complete_affine(img)
    if new_shape == img.shape and np.allclose(new_aff, old_aff, atol=1e-9):
        return Image(img.data.astype(out_dtype, copy=True), img.affine)

    nd = img.ndim
    new_to_old = np.linalg.inv(old_aff) @ new_aff
    data = img.data
    if order > 0:
        data = data.astype(np.float32, copy=False)
        factors = spacing / np.asarray(img.spacing)
        sigma = np.where(factors > ANTIALIAS_FACTOR, (factors - 1) / 2, 0.0)
        if np.any(sigma > 0):
            data = ndimage.gaussian_filter(data, sigma, mode="nearest")
    out = ndimage.affine_transform(
        data,
        new_to_old[:nd, :nd],
        offset=new_to_old[:nd, 3],
        output_shape=new_shape,
        output=out_dtype if order == 0 else np.float32,
        order=order,
        mode="nearest",
    )
    return Image(out, new_aff)


# --------------------------------------------------------------------------- intensity


def normalize_intensity(
    img: Image,
    *,
    lower: float = 0.5,
    upper: float = 99.5,
    mask: npt.NDArray[np.bool_] | None = None,
) -> Image:
    """Map intensities robustly to ``[0, 1]``.

    ``out = clip((x - p_lower) / (p_upper - p_lower), 0, 1)`` where ``p_q`` is
    the ``q``-th percentile of the intensities inside ``mask``. Without a mask,
    the percentiles are taken over the voxels brighter than the image minimum,
    so a large constant background does not pull ``p_lower`` down to it.

    Args:
        img: 2D or 3D image.
        lower: Percentile mapped to 0.
        upper: Percentile mapped to 1.
        mask: Boolean array of the image's shape selecting the voxels whose
            percentiles are used (all voxels are still mapped).

    Returns:
        A float32 image with values in ``[0, 1]`` (all zeros for a constant image).

    Example:
        >>> import numpy as np
        >>> img = Image(np.array([[0.0, 5.0], [10.0, 20.0]]))
        >>> normalize_intensity(img, lower=0, upper=100, mask=img.data >= 0).data.tolist()
        [[0.0, 0.25], [0.5, 1.0]]
        >>> normalize_intensity(img, lower=0, upper=100).data.tolist()  # background excluded
        [[0.0, 0.0], [0.3333333432674408, 1.0]]
    """
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
    data = img.data.astype(np.float64)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != data.shape:
            raise ValueError(f"mask shape {mask.shape} does not match image {data.shape}")
        values = data[mask]
    else:
        values = data[data > data.min()] if data.size else data.ravel()
    if values.size == 0:
        values = data.ravel()
    if values.size == 0:
        return img.with_data(np.zeros(data.shape, np.float32))
    lo, hi = np.percentile(values, [lower, upper])
    if hi <= lo:
        # Percentiles collapse on near-binary data; fall back to the full range.
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return img.with_data((data > lo).astype(np.float32))
    out = np.clip((data - lo) / (hi - lo), 0.0, 1.0)
    return img.with_data(out.astype(np.float32))


def _otsu_threshold(values: npt.NDArray[np.floating], bins: int = 256) -> float:
    """Otsu's threshold: the histogram split maximising between-class variance."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    hist = hist.astype(np.float64)
    w0 = np.cumsum(hist)
    w1 = np.cumsum(hist[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        m0 = np.cumsum(hist * centres) / w0
        m1 = (np.cumsum((hist * centres)[::-1]) / w1[::-1])[::-1]
    between = w0[:-1] * w1[1:] * (m0[:-1] - m1[1:]) ** 2
    if between.size == 0 or not np.any(np.isfinite(between)):
        return float(centres[0])
    return float(centres[int(np.nanargmax(between))])


def foreground_mask(img: Image) -> npt.NDArray[np.bool_]:
    """Boolean mask of the object: Otsu on a smoothed image, cleaned up.

    Steps: Gaussian smoothing (sigma 1 voxel, to suppress noise), Otsu
    threshold, largest face-connected component, hole filling, and a one-voxel
    dilation (so the object's edge is inside the mask).

    Args:
        img: 2D or 3D image.

    Returns:
        Boolean array of the image's shape; all ``True`` when no foreground
        can be separated (e.g. a constant image).

    Example:
        >>> import numpy as np
        >>> data = np.zeros((16, 16)); data[4:12, 4:12] = 1.0
        >>> mask = foreground_mask(Image(data))
        >>> bool(mask[8, 8]), bool(mask[0, 0])
        (True, False)
    """
    data = img.data.astype(np.float64)
    smooth = ndimage.gaussian_filter(data, 1.0, mode="nearest")
    if not np.isfinite(smooth).all() or smooth.max() <= smooth.min():
        return np.ones(data.shape, dtype=bool)
    fg = smooth > _otsu_threshold(smooth.ravel())
    if not fg.any():
        return np.ones(data.shape, dtype=bool)
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        fg = labels == int(np.argmax(sizes))
    fg = ndimage.binary_fill_holes(fg)
    return ndimage.binary_dilation(fg, iterations=1)


# --------------------------------------------------------------------------- pre-alignment


def _plane_frame(img: Image) -> npt.NDArray[np.float64]:
    """Right-handed orthonormal world frame whose first ``ndim`` columns span the image.

    For 3D it is the identity. For 2D it depends only on the image plane (not
    on the in-plane axis order or flips), so two slices in the same plane get
    the same frame and the moments rotation stays in-plane.
    """
    if img.ndim == 3:
        return np.eye(3)
    normal = np.cross(img.affine[:3, 0], img.affine[:3, 1])
    normal /= np.linalg.norm(normal)
    normal *= np.sign(normal[np.argmax(np.abs(normal))])
    axis = np.eye(3)[int(np.argmin(np.abs(normal)))]
    b1 = axis - axis.dot(normal) * normal
    b1 /= np.linalg.norm(b1)
    return np.column_stack([b1, np.cross(normal, b1), normal])


@dataclass(frozen=True)
class _Moments:
    centre: npt.NDArray[np.float64]  # world (3,)
    frame: npt.NDArray[np.float64]  # (3, 3), see _plane_frame
    eigvals: npt.NDArray[np.float64]  # (nd,), descending
    axes: npt.NDArray[np.float64]  # (nd, nd) columns, in frame coordinates
    skew: npt.NDArray[np.float64]  # (nd,), normalised third moment along each axis


def _moments(img: Image, mask: npt.NDArray[np.bool_] | None = None) -> _Moments:
    """Shape moments of the foreground mask (contrast-independent).

    Computed on voxel indices and mapped to world afterwards (the map is linear), with
    one vector operation per index pair: no ``(N, 3)`` matrix products.
    """
    if mask is None:
        mask = foreground_mask(img)
    nd = img.ndim
    idx = [i.astype(np.float64) for i in np.nonzero(mask)]
    mean = np.array([i.mean() for i in idx])
    centred = [i - m for i, m in zip(idx, mean, strict=True)]
    cov_idx = np.empty((nd, nd))
    for a, b in itertools.combinations_with_replacement(range(nd), 2):
        cov_idx[a, b] = cov_idx[b, a] = float(np.dot(centred[a], centred[b])) / len(idx[0])
    frame = _plane_frame(img)
    lin = img.affine[:3, :nd]
    centre = lin @ mean + img.affine[:3, 3]
    to_local = (frame.T @ lin)[:nd]  # voxel offsets -> frame coordinates (nd x nd)
    cov = to_local @ cov_idx @ to_local.T
    eigvals, axes = np.linalg.eigh(cov)
    eigvals, axes = eigvals[::-1], axes[:, ::-1]
    skew = np.zeros(nd)
    for k in range(nd):
        along = to_local.T @ axes[:, k]
        proj = sum(c * v for c, v in zip(centred, along, strict=True))
        skew[k] = float(np.mean(proj**3)) / max(eigvals[k], 1e-12) ** 1.5
    return _Moments(centre, frame, eigvals, axes, np.nan_to_num(skew))


def _is_degenerate(eigvals: npt.NDArray[np.float64]) -> bool:
    """True when two principal variances are too close for their axes to be defined."""
    for a, b in itertools.combinations(eigvals, 2):
        if abs(a - b) <= _DEGENERATE_GAP * max(abs(a), abs(b), 1e-12):
            return True
    return bool(np.any(eigvals <= 1e-12))


def _rotation_angle(rot: npt.NDArray[np.float64]) -> float:
    """Rotation angle (radians) of a 2x2 or 3x3 rotation matrix."""
    cos = rot[0, 0] if rot.shape[0] == 2 else (np.trace(rot) - 1) / 2
    return float(np.arccos(np.clip(cos, -1.0, 1.0)))


def _best_rotation(fixed: _Moments, moving: _Moments) -> npt.NDArray[np.float64]:
    """Proper rotation (frame coordinates) taking fixed principal axes to moving ones.

    Eigenvectors have arbitrary signs. Of the sign choices that give
    ``det = +1``, keep the one under which the skewness along each fixed axis
    agrees in sign with the skewness along the matching moving axis, each axis
    counting by its smaller skewness magnitude (its confidence). Choices
    scoring within ``_SCORE_TIE`` of the best are decided by the smallest
    rotation angle: symmetric objects (|skew| < 0.005 on smooth heads) carry
    no sign information, and images are usually roughly aligned already.
    """
    nd = fixed.axes.shape[0]
    agree = np.sign(fixed.skew * moving.skew) * np.minimum(np.abs(fixed.skew), np.abs(moving.skew))
    candidates = []
    for signs in itertools.product((1.0, -1.0), repeat=nd):
        rot = moving.axes @ np.diag(signs) @ fixed.axes.T
        if np.linalg.det(rot) <= 0:
            continue
        candidates.append((float(np.dot(signs, agree)), rot))
    best = max(score for score, _ in candidates)
    near = [rot for score, rot in candidates if score >= best - _SCORE_TIE]
    return min(near, key=_rotation_angle)


def normalise_channels(
    data: npt.NDArray[np.floating], *, lower: float = 0.5, upper: float = 99.5
) -> npt.NDArray[np.float32]:
    """Map each channel ``(C, ...)`` robustly to [0, 1], as the pipeline's normalisation.

    ``clip((x - p_lower) / (p_upper - p_lower), 0, 1)`` with the percentiles of the
    values above the channel's minimum (a large empty background does not pull the
    lower percentile down). Applied to an already normalised image it changes little,
    so training (raw files) and registration (preprocessed images) see the same ranges.

    Example:
        >>> normalise_channels(np.array([[0.0, 1.0, 2.0, 4.0]]), lower=0, upper=100).tolist()
        [[0.0, 0.0, 0.3333333432674408, 1.0]]
    """
    out = np.zeros(data.shape, dtype=np.float32)
    for c, channel in enumerate(np.asarray(data, dtype=np.float64)):
        values = channel[channel > channel.min()]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, [lower, upper])
        if hi <= lo:
            lo, hi = float(channel.min()), float(values.max())
        if hi > lo:
            out[c] = np.clip((channel - lo) / (hi - lo), 0.0, 1.0)
    return out


@dataclass(frozen=True)
class PrealignCandidate:
    """One pre-alignment that ``"auto"`` considered, and how it scored.

    Attributes:
        mode: ``"none"`` (the header alignment), ``"com"`` or ``"moments"``.
        matrix: Its fixed->moving world map (4x4).
        overlap: Fraction of a foreground inside the common field of view: the larger
            of the fixed foreground's and the mapped moving foreground's fractions.
        nmi: Normalised mutual information over the common field of view; NaN when
            ``overlap < AUTO_MIN_OVERLAP`` (the candidate is not eligible).
    """

    mode: str
    matrix: Matrix4
    overlap: float
    nmi: float

    @property
    def eligible(self) -> bool:
        return bool(np.isfinite(self.nmi))


def _moment_matrix(mf: _Moments, mm: _Moments, ndim: int, *, rotate: bool) -> Matrix4:
    """``"com"`` (``rotate=False``) or ``"moments"`` matrix from the two images' moments."""
    matrix = np.eye(4)
    rot = np.eye(3)
    if rotate and not (_is_degenerate(mf.eigvals) or _is_degenerate(mm.eigvals)):
        local = np.eye(3)
        local[:ndim, :ndim] = _best_rotation(mf, mm)
        rot = mm.frame @ local @ mf.frame.T
    matrix[:3, :3] = rot
    matrix[:3, 3] = mm.centre - rot @ mf.centre
    return matrix


def _intensity_bins(
    values: npt.NDArray[np.floating], lo: float, hi: float
) -> npt.NDArray[np.intp]:
    """Histogram bin (``0 .. AUTO_BINS - 1``) of each value on the range ``[lo, hi]``."""
    scaled = (values - lo) / (hi - lo) if hi > lo else (values > lo).astype(np.float64)
    return np.clip((scaled * AUTO_BINS).astype(np.intp), 0, AUTO_BINS - 1)


def _stride(shape: tuple[int, ...]) -> int:
    """Least step along every axis that leaves at most ``AUTO_MAX_SAMPLES`` grid points."""
    stride = 1
    while np.prod([-(-n // stride) for n in shape]) > AUTO_MAX_SAMPLES:
        stride += 1
    return stride


def _intensity_range(data: npt.NDArray) -> tuple[float, float]:
    """Robust range (0.5th, 99.5th percentile above the minimum, as the normalisation)."""
    step = _stride(data.shape)
    flat = np.asarray(data[tuple(slice(None, None, step) for _ in data.shape)], np.float64)
    flat = flat.ravel()
    values = flat[flat > flat.min()]
    if values.size == 0:
        return float(flat.min()), float(flat.min())
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:  # near-binary data: the full range, as normalize_intensity
        lo, hi = flat.min(), values.max()
    return float(lo), float(hi)


def _entropy(counts: npt.NDArray[np.float64]) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _nmi(a: npt.NDArray[np.intp], b: npt.NDArray[np.intp]) -> float:
    """Studholme's normalised mutual information ``(H(A) + H(B)) / H(A, B)``, in [1, 2]."""
    joint = np.bincount(a * AUTO_BINS + b, minlength=AUTO_BINS**2).astype(np.float64)
    joint = joint.reshape(AUTO_BINS, AUTO_BINS)
    h_joint = _entropy(joint.ravel())
    if h_joint <= 0:
        return 1.0
    return (_entropy(joint.sum(axis=1)) + _entropy(joint.sum(axis=0))) / h_joint


def _strided(img: Image, mask: npt.NDArray[np.bool_]) -> tuple[Image, npt.NDArray[np.bool_]]:
    """Every ``k``-th voxel along each axis, ``k`` the least giving ``<= AUTO_MAX_SAMPLES``."""
    stride = _stride(img.shape)
    if stride == 1:
        return img, mask
    index = tuple(slice(None, None, stride) for _ in img.shape)
    affine = img.affine.copy()
    affine[:3, : img.ndim] *= stride
    return Image(np.ascontiguousarray(img.data[index]), affine), mask[index]


def prealign_candidates(fixed: Image, moving: Image) -> list[PrealignCandidate]:
    """Score the header alignment, ``"com"`` and ``"moments"`` as ``"auto"`` does.

    See :func:`prealign` for the measure. ``"moments"`` is left out when its rotation
    is the identity (the principal axes are undefined), as it then equals ``"com"``.

    Args:
        fixed: Fixed image (usually preprocessed: isotropic, normalised).
        moving: Moving image, same dimensionality.

    Returns:
        The candidates in order of preference: ``none``, ``com``, ``moments``.
    """
    if fixed.ndim != moving.ndim:
        raise InputError(
            f"cannot pre-align a {fixed.ndim}D fixed image with a {moving.ndim}D moving image"
        )
    nd = fixed.ndim
    fixed = Image(fixed.data, _complete_affine(fixed))
    moving = Image(moving.data, _complete_affine(moving))
    mask_f, mask_m = foreground_mask(fixed), foreground_mask(moving)
    mf, mm = _moments(fixed, mask_f), _moments(moving, mask_m)
    matrices = [("none", np.eye(4)), ("com", _moment_matrix(mf, mm, nd, rotate=False))]
    rotated = _moment_matrix(mf, mm, nd, rotate=True)
    if not np.allclose(rotated[:3, :3], np.eye(3)):
        matrices.append(("moments", rotated))

    sampled, fixed_fg = _strided(fixed, mask_f)
    fixed_fg = fixed_fg.ravel()
    fixed_bins = _intensity_bins(sampled.data.ravel(), *_intensity_range(fixed.data))
    moving_range = _intensity_range(moving.data)
    moving_mask = Image(mask_m.astype(np.uint8), moving.affine)
    sample_volume = float(np.prod(sampled.spacing))
    moving_fg_volume = max(float(mask_m.sum()) * float(np.prod(moving.spacing)), 1e-12)
    fixed_fg_count = max(int(fixed_fg.sum()), 1)

    out = []
    for mode, matrix in matrices:
        transform = Transform.from_affine(matrix, ndim=nd)
        warped = transform.apply(moving, sampled, fill=np.nan).data.ravel()
        inside = np.isfinite(warped)
        warped_fg = transform.apply(moving_mask, sampled, interpolation="nearest").data.ravel()
        warped_fg = (warped_fg > 0) & inside
        overlap = max(
            float((fixed_fg & inside).sum()) / fixed_fg_count,
            float(warped_fg.sum()) * sample_volume / moving_fg_volume,
        )
        overlap = min(overlap, 1.0)
        nmi = float("nan")
        if overlap >= AUTO_MIN_OVERLAP and inside.any():
            nmi = _nmi(fixed_bins[inside], _intensity_bins(warped[inside], *moving_range))
        out.append(PrealignCandidate(mode, matrix, overlap, nmi))
    return out


def choose_prealign(candidates: list[PrealignCandidate]) -> PrealignCandidate:
    """The ``"auto"`` choice among :func:`prealign_candidates` (rule in :func:`prealign`)."""
    best: PrealignCandidate | None = None
    for cand in candidates:
        if cand.eligible and (best is None or cand.nmi > best.nmi + AUTO_MARGIN):
            best = cand
    if best is None:
        return next(c for c in candidates if c.mode == "com")
    return best


def prealign(fixed: Image, moving: Image, mode: str = DEFAULT_PREALIGN) -> Matrix4:
    """Initial fixed->moving world map (4x4, RAS mm): header, image moments, or a choice.

    Moments are taken over world voxel positions ``p`` with weights ``w``;
    the centre is ``c = sum(w p) / sum(w)``.

    - ``"none"``: identity, i.e. trust the scanner (header) world coordinates.
    - ``"com"``: translation ``p -> p + (c_moving - c_fixed)``, with ``w`` the
      :func:`foreground_mask` (shape moments: contrast differences between
      modalities shift an intensity-weighted centre by up to ~1 mm, the mask's
      by < 0.1 mm on the test heads).
    - ``"moments"``: ``p -> c_moving + R (p - c_fixed)``, with the same mask
      weights (which also keeps contrast from tilting the axes). ``R`` is the proper rotation
      taking the fixed principal axes (eigenvectors of the second moments)
      onto the moving ones; axis signs are resolved by the third moments
      (skewness), and where those give no information (a symmetric object) by
      the smallest rotation angle. When two principal variances are within 5%
      of each other the axes are undefined and ``R`` is the identity. For 2D
      images the rotation stays in the image plane.
    - ``"auto"`` (the default, :data:`DEFAULT_PREALIGN`): keep the header alignment
      unless a moments-based map is clearly better. ``"com"`` and ``"moments"`` go
      wrong when the two fields of view cover different parts of the anatomy (the
      centres of the foregrounds then differ although the anatomy is aligned), while
      same-session headers are usually right. The candidates ``none`` (identity),
      ``com`` and ``moments`` (the last only when its rotation is not the identity)
      are scored on the fixed grid strided to at most ``AUTO_MAX_SAMPLES`` points,
      the moving image sampled there through the candidate (linear interpolation):

      * *common field of view* ``O``: the samples that map inside the moving grid.
      * *overlap* ``= max(|F & O| / |F|, vol(M' & O) / vol(M))``, with ``F`` the
        fixed :func:`foreground_mask`, ``M`` the moving one and ``M'`` the moving
        mask mapped onto the samples (nearest neighbour): the larger of the two
        shares of a foreground that the other image's grid also covers (1 when one
        field of view contains the other's anatomy; area instead of volume in 2D).
        A candidate is *eligible* only if ``overlap >= AUTO_MIN_OVERLAP`` (0.2).
      * *similarity*: normalised mutual information ``(H(A) + H(B)) / H(A, B)`` of
        the two images over all samples in ``O``, background included, with
        ``AUTO_BINS`` (32) bins per image, each image binned on its own robust
        range (0.5th-99.5th percentile of its values above its minimum), so raw
        and normalised intensities of any two contrasts score alike. Anatomy that
        only one image covers is outside ``O`` and counts for nothing, so a
        narrower field of view does not penalise the identity. (NMI over the
        foregrounds alone was rejected: foregrounds pushed apart then look
        mutually predictive and outscore aligned ones.)

      Rule: take the eligible candidates in the order ``none``, ``com``,
      ``moments``; the first one is the choice, and each later one replaces the
      choice only if its NMI exceeds the choice's by more than ``AUTO_MARGIN``
      (0.02). If none is eligible, ``"com"`` is returned. The scores are
      deterministic; :func:`prealign_candidates` returns them, and the whole
      choice takes a few tenths of a second for a 2 mm brain.

    Args:
        fixed: Fixed (reference) image.
        moving: Moving image, same dimensionality.
        mode: ``"none"``, ``"com"``, ``"moments"`` or ``"auto"``.

    Returns:
        4x4 matrix ``M`` with ``p_moving = M @ p_fixed`` (homogeneous).

    Raises:
        UsageError: Unknown ``mode``.
        InputError: The images differ in dimensionality.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((16, 16, 16)); a[4:8, 4:8, 4:8] = 1
        >>> b = np.roll(a, 3, axis=0)
        >>> prealign(Image(a), Image(b), "com")[:3, 3].round(6).tolist()
        [3.0, 0.0, 0.0]
        >>> prealign(Image(a), Image(b), "auto")[:3, 3].round(6).tolist()  # com matches better
        [3.0, 0.0, 0.0]
        >>> prealign(Image(a), Image(a), "auto")[:3, 3].tolist()  # header kept
        [0.0, 0.0, 0.0]
    """
    if mode not in PREALIGN_MODES:
        raise UsageError(
            f"unknown pre-alignment {mode!r}; choose one of {', '.join(PREALIGN_MODES)}"
        )
    if fixed.ndim != moving.ndim:
        raise InputError(
            f"cannot pre-align a {fixed.ndim}D fixed image with a {moving.ndim}D moving image"
        )
    if mode == "none":
        return np.eye(4)
    if mode == "auto":
        return choose_prealign(prealign_candidates(fixed, moving)).matrix.copy()
    # Intensities differ between modalities, the object's shape does not: moments come
    # from the mask alone (about 1 degree instead of 4-8 degrees across MR contrasts).
    mf, mm = _moments(fixed), _moments(moving)
    return _moment_matrix(mf, mm, fixed.ndim, rotate=mode == "moments")


# --------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class PreprocessOptions:
    """How :func:`preprocess` and :func:`prealign` prepare images for a method.

    Attributes:
        spacing: Isotropic voxel size in mm.
        normalize: Map intensities robustly to [0, 1].
        mask: Zero the background outside :func:`foreground_mask`.
        prealign: Pre-alignment mode: ``"none"``, ``"com"``, ``"moments"`` or ``"auto"``
            (the default, :data:`DEFAULT_PREALIGN`); see :func:`prealign`.
        coronal_slice: Pair a 2D image with a 3D one by registering it to the 3D image's
            mid-coronal slice along the spine (whole-body DXA and MR); see
            :mod:`mmreg.imaging.planar`. Off, such a pair is an input error.
    """

    spacing: float = DEFAULT_SPACING
    normalize: bool = True
    mask: bool = False
    prealign: str = DEFAULT_PREALIGN
    coronal_slice: bool = False

    def __post_init__(self) -> None:
        if not np.isfinite(self.spacing) or self.spacing <= 0:
            raise UsageError(f"spacing must be a positive number of mm, got {self.spacing!r}")
        if self.prealign not in PREALIGN_MODES:
            raise UsageError(
                f"unknown pre-alignment {self.prealign!r}; "
                f"choose one of {', '.join(PREALIGN_MODES)}"
            )


def preprocess(img: Image, options: PreprocessOptions | None = None) -> Image:
    """Canonical orientation -> isotropic resampling -> optional mask -> normalisation.

    With ``options.mask`` the normalisation percentiles are taken inside the
    foreground mask and the background is set to 0 afterwards.

    Args:
        img: 2D or 3D image.
        options: Preprocessing options (defaults: 2 mm, normalised, unmasked).

    Returns:
        A float32 image on an isotropic canonical grid; world positions are
        unchanged, so transforms estimated on it apply to ``img`` directly.

    Example:
        >>> import numpy as np
        >>> img = Image(np.random.default_rng(0).random((8, 8, 8)), np.diag([-1, 1, 1, 1.0]))
        >>> out = preprocess(img, PreprocessOptions(spacing=1.0))
        >>> np.diag(out.affine).tolist(), float(out.data.min()), float(out.data.max())
        ([1.0, 1.0, 1.0, 1.0], 0.0, 1.0)
    """
    options = options or PreprocessOptions()
    out = resample_isotropic(reorient_canonical(img), options.spacing, order=1)
    mask = foreground_mask(out) if options.mask else None
    if options.normalize:
        out = normalize_intensity(out, mask=mask)
    if mask is not None:
        out = out.with_data(np.where(mask, out.data, 0).astype(np.float32))
    return out
