"""Mid-coronal slice synthesis: unroll a curved spine into one 2D coronal image.

A whole-body DXA is a projection along the anterior-posterior (AP) axis; the
MR is a volume. Following Windsor et al. ("Self-Supervised Multi-Modal
Alignment for Whole Body Medical Imaging", MICCAI 2021), the MR is reduced to
one coronal image that at every superior-inferior (SI) position passes
through the spine, so that a spine curved in the sagittal plane (lordosis,
kyphosis) appears whole, as it does in the DXA.

Algorithm (a Dixon fat/water pair; the subject supine, spine posterior):

1. **Working volume.** Both channels are reoriented to the closest RAS axes
   (no interpolation) and block-averaged to about ``working_spacing_mm``.
2. **Marrow cue.** Vertebral bodies hold red marrow, a fat-water mix: fat
   fraction ``FF = F / (F + W)`` near ``marrow_fat_fraction`` (~0.6), unlike
   subcutaneous fat (~0.95), muscle (~0.1), discs and CSF (~0.1) or the fatty
   yellow marrow of the pelvis and long bones (~0.85). The cue
   ``exp(-((FF - ff0) / tol)^2)`` is kept deeper than ``skin_margin_mm`` inside
   the (hole-filled) body, where air and noise give any fat fraction. A blob
   detector turns it into a score: the cue smoothed at vertebral size
   (Gaussian, ``blob_sigma_mm`` in-plane, ``si_sigma_mm`` along SI, bridging
   the discs) minus the cue smoothed ``surround_factor`` times wider in-plane.
   A marrow-like blob in other tissue scores high; large marrow-like regions
   (or noise) score nothing.
3. **Per axial slice**, the score maximum is searched in a band of
   ``search_half_width_mm`` around the body's left-right centre and behind the
   body's AP centre (fatty viscera and liver lie in front); its AP position is
   refined to sub-voxel by a parabola. A slice counts as a detection when the
   score reaches ``min_score``.
4. **Robust path.** Detections further than ``outlier_mm`` from the running
   median (window ``median_window_mm``) are dropped; the longest run of
   detections without a gap above ``max_gap_mm`` is the spine. It is
   interpolated onto the output rows and smoothed (Gaussian, ``smoothing_mm``).
   Above and below the spine the surface relaxes to the body's AP centre
   (``y = c(z) + (y_end - c(z_end)) exp(-|z - z_end| / relax_mm)``), so the
   hips and thighs, which lie in front of the sacrum, stay in the image.
5. **No spine** (runs cover less than ``min_coverage`` of the body's SI
   extent, or no fat/water pair is given): a :class:`SpineNotFoundWarning`,
   and the flat coronal plane through the body's median AP centre.
6. **Sampling.** Each output pixel ``(i, k)`` is the world point
   ``(x0 + i s, y(z_k), z0 + k s)``, interpolated (linear by default) in every
   channel, averaged over ``slab_mm`` along AP if asked. The output grid is
   centred on the volume's field of view and has a fixed size: the volume is
   cropped or zero-padded.

Output frame (the same for every 2D image in mmreg and for the DXA phantom):
2D world ``(x, y, 0)`` with 2D ``x`` = the volume's world x (left-right, RAS:
towards the subject's right) and 2D ``y`` = the volume's world z
(inferior-superior); the AP coordinate, which varies per row, is dropped. Array
axes are ``(left-right, superior-inferior)``: the paper's "501 x 224" MR
slice (SI x LR) is an array of shape ``(224, 501)`` here, and its "800 x 300"
DXA is ``(300, 800)``.

Example:
    >>> import numpy as np
    >>> from mmreg.imaging.image import Image
    >>> vol = Image(np.random.default_rng(0).random((20, 12, 30)).astype(np.float32),
    ...             np.diag([2.2, 2.2, 2.2, 1.0]))
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     out = synthesize_coronal_slice([vol], settings=SliceSettings(size=(16, 24)))
    >>> out.images[0].shape, out.path.found
    ((16, 24), False)
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mmreg.errors import InputError
from mmreg.imaging.image import Grid, Image
from mmreg.imaging.preprocess import reorient_canonical
from mmreg.typing import Matrix4

LOG = logging.getLogger("mmreg.imaging.slice_synthesis")

#: Default output sizes ``(left-right, superior-inferior)`` in pixels at 2.2 mm.
MR_SLICE_SIZE: tuple[int, int] = (224, 501)
DXA_SIZE: tuple[int, int] = (300, 800)


class SpineNotFoundWarning(UserWarning):
    """No spine was found; the slice is the flat coronal plane through the body centre."""


@dataclass(frozen=True)
class SliceSettings:
    """Settings of :func:`synthesize_coronal_slice` (see the module docstring).

    Attributes:
        size: Output size in pixels, ``(left-right, superior-inferior)``.
        spacing_mm: Output pixel size.
        slab_mm: AP thickness averaged around the surface (0: a single surface).
        order: Spline order of the image interpolation (1: linear).
        working_spacing_mm: Voxel size the detection works at.
        marrow_fat_fraction: Fat fraction of vertebral marrow (the cue's centre).
        marrow_tolerance: Width of the cue around it.
        search_half_width_mm: Left-right half-width of the search band.
        blob_sigma_mm: In-plane smoothing of the cue.
        si_sigma_mm: Superior-inferior smoothing of the cue.
        min_score: Blob score (centre minus surround cue) a slice needs to count as a
            detection.
        surround_factor: In-plane width of the surround relative to ``blob_sigma_mm``.
        skin_margin_mm: Depth below the body surface where the cue starts.
        outlier_mm: Largest distance from the running median kept.
        median_window_mm: Length of the running-median window.
        max_gap_mm: Largest SI gap inside one run of detections.
        min_coverage: Shortest spine accepted, as a fraction of the body's SI extent.
        min_run_score: Median score the spine's detections need.
        min_run_roundness: Median roundness (ratio of the in-plane curvatures) they need.
        smoothing_mm: Gaussian sigma of the path along SI.
        relax_mm: Decay length from the spine's ends to the body's AP centre.
        centre_smoothing_mm: Gaussian sigma of the body's AP centre along SI.
    """

    size: tuple[int, int] = MR_SLICE_SIZE
    spacing_mm: float = 2.2
    slab_mm: float = 0.0
    order: int = 1
    working_spacing_mm: float = 4.4
    working_inplane_mm: float = 4.4
    marrow_fat_fraction: float = 0.6
    marrow_tolerance: float = 0.2
    search_half_width_mm: float = 40.0
    blob_sigma_mm: float = 6.0
    si_sigma_mm: float = 8.0
    min_score: float = 0.15
    surround_factor: float = 3.0
    skin_margin_mm: float = 8.0
    outlier_mm: float = 8.0
    median_window_mm: float = 40.0
    max_gap_mm: float = 30.0
    min_coverage: float = 0.2
    min_run_score: float = 0.3
    min_run_roundness: float = 0.45
    smoothing_mm: float = 6.0
    relax_mm: float = 40.0
    centre_smoothing_mm: float = 20.0

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be two positive pixel counts, got {self.size}")
        if self.spacing_mm <= 0 or self.working_spacing_mm <= 0:
            raise ValueError("spacings must be positive")
        if self.slab_mm < 0:
            raise ValueError(f"slab_mm must be >= 0, got {self.slab_mm}")


@dataclass(frozen=True)
class SpineDetection:
    """Per-slice spine detections of :func:`detect_spine` (world mm, RAS).

    Attributes:
        z: SI position of each working slice.
        x: Left-right position of the detection (NaN where none).
        y: AP position of the detection (NaN where none).
        score: Blob score at the detection (0 where the slice has no body).
        roundness: Ratio of the two in-plane curvatures at the detection (1: round).
        body_y: AP centre of the body in the slice (NaN without body).
        accepted: Detections that passed the score, outlier and run tests.
        found: Whether a spine was found.
        reason: Why not, when it was not.
    """

    z: npt.NDArray[np.float64]
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    score: npt.NDArray[np.float64]
    roundness: npt.NDArray[np.float64]
    body_y: npt.NDArray[np.float64]
    accepted: npt.NDArray[np.bool_]
    found: bool
    reason: str = ""

    @property
    def z_range(self) -> tuple[float, float] | None:
        """SI extent of the accepted detections, ``None`` without a spine."""
        if not self.found:
            return None
        z = self.z[self.accepted]
        return float(z.min()), float(z.max())


@dataclass(frozen=True)
class CoronalPath:
    """The sampled surface: AP position ``y`` for each output row at SI position ``z``.

    Attributes:
        z: World z of the output rows.
        y: World y of the surface at each row.
        on_spine: Rows within the detected spine's SI range.
        found: Whether it follows a detected spine (else it is the fallback plane).
    """

    z: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    on_spine: npt.NDArray[np.bool_]
    found: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {
            "z_mm": np.round(self.z, 4).tolist(),
            "y_mm": np.round(self.y, 4).tolist(),
            "on_spine": self.on_spine.tolist(),
            "found_spine": bool(self.found),
        }


@dataclass(frozen=True)
class CoronalSlice:
    """The result of :func:`synthesize_coronal_slice`.

    Attributes:
        images: One 2D image per input channel, on :attr:`grid`.
        grid: The 2D output grid (world ``(x, y, 0)``, y = the volume's z).
        path: The sampled surface.
        detection: The spine detections it came from.
        settings: The settings used.
    """

    images: tuple[Image, ...]
    grid: Grid
    path: CoronalPath
    detection: SpineDetection
    settings: SliceSettings = field(default_factory=lambda: SliceSettings())

    def sample(self, volume: Image, *, order: int = 0) -> Image:
        """Sample another volume in the same world (e.g. labels) on the same surface.

        Args:
            volume: 3D image; its grid may differ from the channels'.
            order: Interpolation order (0, nearest, for label maps: int32 output).
        """
        return sample_surface(volume, self.grid, self.path.y, slab_mm=0.0, order=order)

    def footprint(
        self,
        labels: Image,
        *,
        slab_mm: float | None = None,
        precedence: Sequence[int] | None = None,
    ) -> Image:
        """The AP projection footprint of a 3D label map on this slice's grid
        (:func:`project_labels`): what a projection image such as a DXA shows of them."""
        return project_labels(
            labels, self.grid, self.path.y, slab_mm=slab_mm, precedence=precedence
        )


# ============================================================================ helpers


def output_grid(volume: Grid, *, size: tuple[int, int], spacing: float) -> Grid:
    """The 2D output grid: ``size`` pixels of ``spacing`` mm centred on the volume's FOV.

    Example:
        >>> g = output_grid(Grid((10, 4, 20), np.diag([2.0, 2.0, 2.0, 1.0])), size=(5, 10),
        ...                 spacing=4.0)
        >>> g.shape, g.voxel_to_world([[0, 0], [4, 9]]).tolist()
        ((5, 10), [[1.0, 1.0, 0.0], [17.0, 37.0, 0.0]])
    """
    centre = volume.voxel_to_world([(np.asarray(volume.shape) - 1) / 2.0])[0]
    affine = np.eye(4)
    affine[0, 0] = affine[1, 1] = spacing
    affine[0, 3] = centre[0] - 0.5 * (size[0] - 1) * spacing
    affine[1, 3] = centre[2] - 0.5 * (size[1] - 1) * spacing
    return Grid(tuple(int(n) for n in size), affine)


def sample_surface(
    volume: Image,
    grid: Grid,
    y: npt.ArrayLike,
    *,
    slab_mm: float = 0.0,
    order: int = 1,
) -> Image:
    """Sample ``volume`` on the surface ``y(row)`` over a 2D output ``grid``.

    Pixel ``(i, k)`` of ``grid`` (world ``(x, z', 0)``) takes the volume at world
    ``(x, y[k], z')``; points outside the volume are 0. With ``slab_mm`` the
    values are averaged over that AP thickness (samples every ~1 voxel).

    Args:
        volume: 3D image.
        grid: 2D grid from :func:`output_grid`.
        y: AP position per output row (``grid.shape[1]`` values).
        slab_mm: AP thickness to average (0: the surface only).
        order: Interpolation order (0 gives int32 output, for labels).
    """
    if volume.ndim != 3:
        raise InputError(f"slice synthesis needs a 3D volume, got shape {volume.shape}")
    y = np.asarray(y, dtype=np.float64)
    nx, nz = grid.shape
    n_slab = 1
    if slab_mm > 0:
        n_slab = max(1, round(slab_mm / min(volume.spacing)) + 1)
    offsets = np.linspace(-0.5 * slab_mm, 0.5 * slab_mm, n_slab) if n_slab > 1 else [0.0]
    data = volume.data if order == 0 else volume.data.astype(np.float32, copy=False)
    acc = np.zeros((nx, nz), np.float64)
    for dy in offsets:
        acc += _sample_at_y(data, volume.affine, grid, y + dy, order=order)
    acc /= len(offsets)
    if order == 0:
        return Image(np.rint(acc).astype(np.int32), grid.affine)
    return Image(acc.astype(np.float32), grid.affine)


def _sample_at_y(
    data: npt.NDArray,
    affine: Matrix4,
    grid: Grid,
    y: npt.NDArray[np.float64],
    *,
    order: int,
) -> npt.NDArray:
    """A volume's values at the world points ``(x_i, y[k], z_k)`` of a 2D slice grid."""
    nx, nz = grid.shape
    xs = grid.affine[0, 3] + grid.affine[0, 0] * np.arange(nx)
    zs = grid.affine[1, 3] + grid.affine[1, 1] * np.arange(nz)
    world = np.stack(np.broadcast_arrays(xs[:, None], y[None, :], zs[None, :]), -1)
    inv = np.linalg.inv(affine)
    ijk = world.reshape(-1, 3) @ inv[:3, :3].T + inv[:3, 3]
    return ndimage.map_coordinates(
        data, ijk.T, order=order, mode="constant", cval=0, prefilter=order > 1
    ).reshape(nx, nz)


def project_labels(
    labels: Image,
    grid: Grid,
    y: npt.ArrayLike,
    *,
    slab_mm: float | None = None,
    precedence: Sequence[int] | None = None,
) -> Image:
    """The anterior-posterior projection footprint of a 3D label map on a 2D slice grid.

    Pixel ``(i, k)`` (world ``(x, z')``) carries label ``l`` when any voxel of ``l`` lies
    on the AP line through ``(x, ., z')``: the whole body depth (``slab_mm=None``, what
    a projection image such as a DXA sees), or within ``slab_mm / 2`` of the surface
    ``y[k]``. Where footprints overlap, the label first in ``precedence`` is drawn, then
    (for labels not listed) the lower value.

    Args:
        labels: 3D integer label map.
        grid: 2D grid from :func:`output_grid`.
        y: AP position of the surface per output row (``grid.shape[1]`` values).
        slab_mm: AP thickness around the surface (None: the whole volume).
        precedence: Labels in drawing priority, highest first.

    Example:
        >>> vol = np.zeros((4, 6, 3), np.int32)
        >>> vol[1, 5, 1] = 2  # far behind the surface y = 0 ...
        >>> vol[1, 0, 1] = 3  # ... and on it
        >>> img = Image(vol, np.eye(4))
        >>> g = Grid((4, 3), np.eye(4))
        >>> project_labels(img, g, np.zeros(3)).data[1].tolist()
        [0, 2, 0]
        >>> project_labels(img, g, np.zeros(3), slab_mm=2.0).data[1].tolist()
        [0, 3, 0]
    """
    if labels.ndim != 3:
        raise InputError(f"label projection needs a 3D label map, got shape {labels.shape}")
    y = np.asarray(y, dtype=np.float64)
    nx, nz = grid.shape
    corners = np.array(list(np.ndindex(2, 2, 2))) * (np.array(labels.shape) - 1)
    world_y = (corners @ labels.affine[:3, :3].T + labels.affine[:3, 3])[:, 1]
    step = 0.5 * min(labels.spacing)  # every voxel along the line is visited
    ys = np.arange(world_y.min(), world_y.max() + step, step)
    data = np.asarray(labels.data).astype(np.int32, copy=False)
    values = [v for v in np.unique(data) if v != 0]
    seen = {v: np.zeros((nx, nz), bool) for v in values}
    for y_mm in ys:
        if slab_mm is not None:
            inside = np.abs(y_mm - y) <= 0.5 * slab_mm
            if not inside.any():
                continue
        sampled = _sample_at_y(data, labels.affine, grid, np.full(nz, y_mm), order=0)
        if slab_mm is not None:
            sampled = np.where(inside[None, :], sampled, 0)
        for v in values:
            seen[v] |= sampled == v
    out = np.zeros((nx, nz), np.int32)
    first = [v for v in (precedence or ()) if v in seen]
    rest = sorted(v for v in values if v not in first)
    for v in reversed([*first, *rest]):  # drawn last = on top
        out[seen[v]] = v
    return Image(out, grid.affine)


def crop_or_pad(
    image: Image, size: tuple[int, int], *, spacing: float | None = None, order: int = 1
) -> Image:
    """Centre-crop or zero-pad a 2D image to ``size`` pixels (resampling to ``spacing``).

    The output grid is centred on the input's field of view; with ``spacing=None``
    the input pixel size (first axis) is kept. Use it to bring a DXA to the
    paper's 300 x 800 (LR x SI) at 2.2 mm.

    Example:
        >>> img = Image(np.ones((10, 20), np.float32), np.diag([2.0, 2.0, 1.0, 1.0]))
        >>> out = crop_or_pad(img, (14, 16))
        >>> out.shape, float(out.data[0, 0]), float(out.data[7, 8])
        ((14, 16), 0.0, 1.0)
    """
    if image.ndim != 2:
        raise InputError(f"crop_or_pad needs a 2D image, got shape {image.shape}")
    step = float(spacing or image.spacing[0])
    centre = image.grid.voxel_to_world([(np.asarray(image.shape) - 1) / 2.0])[0]
    affine = image.affine.copy()
    # Keep the input's in-plane directions; only spacing and origin change.
    directions = affine[:3, :2] / np.linalg.norm(affine[:3, :2], axis=0)
    affine[:3, :2] = directions * step
    affine[:3, 3] = centre - directions @ ((np.asarray(size) - 1) / 2.0 * step)
    ij = np.indices(size, dtype=np.float64).reshape(2, -1).T
    world = Grid(tuple(size), affine).voxel_to_world(ij)
    src = image.grid.world_to_voxel(world).T
    data = image.data if order == 0 else image.data.astype(np.float32, copy=False)
    out = ndimage.map_coordinates(data, src, order=order, mode="constant", cval=0.0)
    out = out.reshape(size)
    return Image(out.astype(np.int32) if order == 0 else out.astype(np.float32), affine)


def _block_mean(data: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Average non-overlapping blocks (the array is cropped to whole blocks)."""
    shape = tuple(n // f for n, f in zip(data.shape, factors, strict=True))
    out = np.zeros(shape, np.float32)
    # A sum of strided views: far faster than a reshape-mean on big volumes.
    for offset in np.ndindex(*factors):
        out += data[
            tuple(slice(o, o + n * f, f) for o, n, f in zip(offset, shape, factors, strict=True))
        ]
    out /= np.float32(np.prod(factors))
    return out


def _block_affine(affine: Matrix4, factors: tuple[int, ...]) -> Matrix4:
    """Affine of a block-averaged grid: block centres."""
    out = affine.copy()
    f = np.asarray(factors, dtype=np.float64)
    out[:3, :3] = affine[:3, :3] * f
    out[:3, 3] = affine[:3, :3] @ ((f - 1) / 2.0) + affine[:3, 3]
    return out


def _running_median(z: np.ndarray, v: np.ndarray, window: float) -> np.ndarray:
    out = np.empty_like(v)
    for i, zi in enumerate(z):
        out[i] = np.median(v[np.abs(z - zi) <= 0.5 * window])
    return out


def _longest_run(z: np.ndarray, y: np.ndarray, settings: SliceSettings) -> np.ndarray:
    """Indices (into sorted ``z``) of the run with the largest SI extent.

    A run breaks at an SI gap above ``max_gap_mm`` or an AP jump above ``outlier_mm``
    between neighbours: a spine is continuous, and so a run of false detections
    below the sacrum (fatty pelvic viscera) does not extend it.
    """
    if z.size == 0:
        return np.zeros(0, np.intp)
    gaps = (np.diff(z) > settings.max_gap_mm) | (np.abs(np.diff(y)) > settings.outlier_mm)
    breaks = np.flatnonzero(gaps) + 1
    runs = np.split(np.arange(z.size), breaks)
    return max(runs, key=lambda r: (z[r[-1]] - z[r[0]], r.size))


def _smooth_path(z: np.ndarray, y: np.ndarray, sigma_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian smoothing of detections (sorted by ``z``) on a regular grid.

    The ends are padded by straight-line extrapolation first: padding with the
    end value would flatten the path where the spine slopes (at S1, for one).
    """
    if z.size < 2:
        return z, y
    dz = float(np.median(np.diff(z)))
    grid = np.arange(z[0], z[-1] + 0.5 * dz, dz)
    values = np.interp(grid, z, y)
    pad = max(1, math.ceil(3.0 * sigma_mm / dz))
    fit = min(pad, grid.size)
    before = np.polyval(
        np.polyfit(grid[:fit], values[:fit], 1), grid[0] - dz * np.arange(pad, 0, -1)
    )
    after = np.polyval(
        np.polyfit(grid[-fit:], values[-fit:], 1), grid[-1] + dz * np.arange(1, pad + 1)
    )
    smooth = ndimage.gaussian_filter1d(np.r_[before, values, after], sigma_mm / dz, mode="nearest")
    return grid, smooth[pad : pad + grid.size]


def _isotropy(c: np.ndarray, i: int, j: int, step: np.ndarray) -> float:
    """How round the maximum of ``c`` at ``(i, j)`` is: the ratio of the two in-plane
    curvatures (1: a round blob; near 0: a ridge, such as a fat-muscle border)."""
    if not (0 < i < c.shape[0] - 1 and 0 < j < c.shape[1] - 1):
        return 0.0
    hxx = (c[i + 1, j] - 2 * c[i, j] + c[i - 1, j]) / step[0] ** 2
    hyy = (c[i, j + 1] - 2 * c[i, j] + c[i, j - 1]) / step[1] ** 2
    hxy = (c[i + 1, j + 1] - c[i + 1, j - 1] - c[i - 1, j + 1] + c[i - 1, j - 1]) / (
        4 * step[0] * step[1]
    )
    lam = np.linalg.eigvalsh(np.array([[hxx, hxy], [hxy, hyy]]))
    if lam[1] >= 0:
        return 0.0
    return float(lam[1] / lam[0])


def _check_channels(channels: Sequence[Image]) -> None:
    if not channels:
        raise InputError("slice synthesis needs at least one 3D image")
    first = channels[0]
    for img in channels:
        if img.ndim != 3:
            raise InputError(f"slice synthesis needs 3D images, got shape {img.shape}")
        if img.shape != first.shape or not np.allclose(img.affine, first.affine, atol=1e-4):
            raise InputError("slice synthesis channels must share one grid (shape and affine)")


# ============================================================================ detection


def _working_volume(
    fat: Image, water: Image, settings: SliceSettings
) -> tuple[np.ndarray, np.ndarray, Matrix4, np.ndarray]:
    """Step 1: both channels on the closest RAS axes (no interpolation), block-averaged
    to about the working spacing; fat, water, their affine and voxel size (mm)."""
    fat_c, water_c = reorient_canonical(fat), reorient_canonical(water)
    spacing = np.asarray(fat_c.spacing)
    target = (settings.working_inplane_mm,) * 2 + (settings.working_spacing_mm,)
    factors = tuple(max(1, round(w / s)) for w, s in zip(target, spacing, strict=True))
    f = _block_mean(fat_c.data, factors)
    w = _block_mean(water_c.data, factors)
    return f, w, _block_affine(fat_c.affine, factors), spacing * np.asarray(factors)


def _inner_body(body: np.ndarray, step: np.ndarray, settings: SliceSettings) -> np.ndarray:
    """The body (holes filled) deeper than ``skin_margin_mm`` in-plane, as float32 0/1.

    Where the body meets air, noise and partial volume give any fat fraction; the
    spine is always deeper than this (in-plane erosion only).
    """
    depth = max(1, round(settings.skin_margin_mm / min(step[0], step[1])))
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    # Holes first (canal, cortex, lungs are dark), or eroding would eat into the spine.
    filled = ndimage.binary_fill_holes(
        ndimage.binary_closing(body, in_plane, iterations=2, border_value=0), in_plane
    )
    return ndimage.binary_erosion(filled, in_plane, iterations=depth).astype(np.float32)


def _marrow_cue(
    f: np.ndarray, w: np.ndarray, step: np.ndarray, settings: SliceSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 2a: the body mask, the marrow cue (fat fraction near that of red marrow)
    inside the inner body, and the inner body."""
    total = f + w
    positive = total[total > 0]
    level = 0.2 * float(np.percentile(positive, 99)) if positive.size else 0.0
    body = total > level
    ff = np.divide(f, total, out=np.zeros_like(f), where=total > 0)
    cue = np.exp(-(((ff - settings.marrow_fat_fraction) / settings.marrow_tolerance) ** 2))
    inner = _inner_body(body, step, settings)
    cue *= inner
    return body, cue, inner


def _blob_score(
    cue: np.ndarray, inner: np.ndarray, step: np.ndarray, settings: SliceSettings
) -> np.ndarray:
    """Step 2b: centre minus surround (a difference of Gaussians) of the cue.

    A vertebral body is a blob in tissue that is not marrow-like, while a region
    that is marrow-like throughout (or noise, whose fat fraction is anything) scores
    nothing. Both are averages over the inner body only (normalised convolution), so
    its edge does not look like a blob.
    """
    sigma = (
        settings.blob_sigma_mm / step[0],
        settings.blob_sigma_mm / step[1],
        settings.si_sigma_mm / step[2],
    )
    surround = (sigma[0] * settings.surround_factor, sigma[1] * settings.surround_factor, sigma[2])

    def local_mean(s: tuple[float, float, float]) -> np.ndarray:
        num = ndimage.gaussian_filter(cue, s, mode="constant")
        den = ndimage.gaussian_filter(inner, s, mode="constant")
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0.05)

    return (local_mean(sigma) - local_mean(surround)) * inner


def _best_blob(
    score: np.ndarray, mask: np.ndarray, x_c: float, y_c: float, band: float
) -> tuple[int, int] | None:
    """Step 3: the strongest blob of one slice behind the body's AP centre ``y_c``, within
    ``band`` voxels of its left-right centre ``x_c``; ``None`` if that window is empty.

    Fatty viscera and liver lie in front; the most posterior blob instead would be
    fooled by rib heads and fat-muscle borders in the back.
    """
    ii = np.arange(mask.shape[0])
    jj = np.arange(mask.shape[1])
    window = np.abs(ii - x_c)[:, None] <= band
    window = window & (jj[None, :] <= y_c) & mask
    if not window.any():
        return None
    c = np.where(window, score, -1.0)
    profile = c.max(axis=0)
    j0 = int(np.argmax(profile))
    return int(np.argmax(c[:, j0])), j0


def _subvoxel(column: np.ndarray, j0: int) -> float:
    """AP offset (voxels) of the maximum at ``j0`` of ``column``, from a parabola."""
    if not 0 < j0 < column.size - 1:
        return 0.0
    a, b, d = column[j0 - 1], column[j0], column[j0 + 1]
    curv = a - 2.0 * b + d
    return float(np.clip(0.5 * (a - d) / curv, -0.5, 0.5)) if curv < 0 else 0.0


def _search_slices(
    body: np.ndarray, cue: np.ndarray, affine: Matrix4, step: np.ndarray, settings: SliceSettings
) -> tuple[np.ndarray, ...]:
    """Step 3, every axial slice: its world z, the detection's world x and y (NaN where
    none), its score and roundness, and the body's AP centre (voxels; NaN without body)."""
    nx, ny, nz = body.shape
    zs = np.full(nz, np.nan)
    xs = np.full(nz, np.nan)
    ys = np.full(nz, np.nan)
    score = np.zeros(nz)
    iso = np.zeros(nz)
    body_y = np.full(nz, np.nan)
    jj = np.arange(ny)
    band = settings.search_half_width_mm / step[0]
    for k in range(nz):
        centre = affine[:3, :3] @ [0.5 * (nx - 1), 0.5 * (ny - 1), k] + affine[:3, 3]
        zs[k] = centre[2]
        m = body[:, :, k]
        count = int(m.sum())
        if count < 8:
            continue
        # Median left-right position of the body (arms, when cut by the field of view,
        # pull a mean sideways), AP centre of mass.
        x_c = float(np.searchsorted(np.cumsum(m.sum(axis=1)), 0.5 * count))
        y_c = float((m.sum(axis=0) * jj).sum() / count)
        body_y[k] = y_c
        blob = _best_blob(cue[:, :, k], m, x_c, y_c, band)
        if blob is None:
            continue
        i0, j0 = blob
        score[k] = float(cue[i0, j0, k])
        iso[k] = _isotropy(cue[:, :, k], i0, j0, step)
        p = affine[:3, :3] @ [i0, j0 + _subvoxel(cue[i0, :, k], j0), k] + affine[:3, 3]
        xs[k], ys[k] = p[0], p[1]
    return zs, xs, ys, score, iso, body_y


def _body_centre_world(body_y: np.ndarray, affine: Matrix4, nx: int) -> np.ndarray:
    """The body's AP centre per slice as a world y (the grid is near canonical)."""
    body_world = np.full(body_y.size, np.nan)
    has_body = ~np.isnan(body_y)
    if has_body.any():
        pts = np.stack(
            [np.full(has_body.sum(), 0.5 * (nx - 1)), body_y[has_body], np.flatnonzero(has_body)],
            1,
        )
        body_world[has_body] = (pts @ affine[:3, :3].T + affine[:3, 3])[:, 1]
    return body_world


def _accept(
    zs: np.ndarray, ys: np.ndarray, score: np.ndarray, settings: SliceSettings
) -> npt.NDArray[np.bool_]:
    """Step 4: detections scoring ``min_score``, near the running median, in the
    longest run."""
    candidates = np.flatnonzero(score >= settings.min_score)
    accepted = np.zeros(zs.size, bool)
    if candidates.size:
        cand = candidates[np.argsort(zs[candidates])]
        med = _running_median(zs[cand], ys[cand], settings.median_window_mm)
        keep = cand[np.abs(ys[cand] - med) <= settings.outlier_mm]
        run = keep[_longest_run(zs[keep], ys[keep], settings)] if keep.size else keep
        accepted[run] = True
    return accepted


def _why_not_a_spine(
    zs: np.ndarray,
    has_body: np.ndarray,
    accepted: np.ndarray,
    score: np.ndarray,
    iso: np.ndarray,
    step_si: float,
    settings: SliceSettings,
) -> str:
    """Step 5: why the accepted run is no spine ("" when it is one).

    A spine is a long chain of strong, round blobs; fat-muscle borders in a back
    without one give weaker, elongated maxima.
    """
    body_extent = float(np.ptp(zs[has_body])) + step_si if has_body.any() else 0.0
    run_extent = float(np.ptp(zs[accepted])) + step_si if accepted.any() else 0.0
    run_score = float(np.median(score[accepted])) if accepted.any() else 0.0
    run_round = float(np.median(iso[accepted])) if accepted.any() else 0.0
    if accepted.sum() < 3 or run_extent < settings.min_coverage * body_extent:
        return (
            f"spine detections cover {run_extent:.0f} mm of a {body_extent:.0f} mm body "
            f"(need {settings.min_coverage:.0%})"
        )
    if run_score < settings.min_run_score or run_round < settings.min_run_roundness:
        return (
            f"the best chain of detections is weak (median score {run_score:.2f}, need "
            f"{settings.min_run_score:.2f}) or not round (median roundness {run_round:.2f}, "
            f"need {settings.min_run_roundness:.2f})"
        )
    return ""


def detect_spine(
    fat: Image, water: Image, *, settings: SliceSettings | None = None
) -> SpineDetection:
    """Find the vertebral bodies slice by slice in a Dixon fat/water pair.

    The steps are those of the module docstring: working volume, marrow cue and blob
    score, the best blob per slice, the longest consistent run, and the verdict.

    Args:
        fat: Fat image.
        water: Water image on the same grid.
        settings: Detection settings (defaults: :class:`SliceSettings`).

    Returns:
        Per working slice: position, score and whether it was accepted.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> fat = Image(rng.random((16, 12, 20)).astype(np.float32), np.eye(4) * 4.4)
        >>> detect_spine(fat, fat).found  # fat fraction 0.5 everywhere: no blob, no spine
        False
    """
    settings = settings or SliceSettings()
    _check_channels([fat, water])
    f, w, affine, step = _working_volume(fat, water, settings)
    body, cue, inner = _marrow_cue(f, w, step, settings)
    cue = _blob_score(cue, inner, step, settings)
    zs, xs, ys, score, iso, body_y = _search_slices(body, cue, affine, step, settings)
    has_body = ~np.isnan(body_y)
    accepted = _accept(zs, ys, score, settings)
    reason = _why_not_a_spine(zs, has_body, accepted, score, iso, step[2], settings)
    if reason:
        accepted[:] = False
    return SpineDetection(
        z=zs,
        x=xs,
        y=ys,
        score=score,
        roundness=iso,
        body_y=_body_centre_world(body_y, affine, body.shape[0]),
        accepted=accepted,
        found=not reason,
        reason=reason,
    )


def coronal_path(
    detection: SpineDetection, z: npt.ArrayLike, *, settings: SliceSettings | None = None
) -> CoronalPath:
    """The AP position of the sampled surface at SI positions ``z`` (output rows).

    Within the detected spine: the smoothed detections; beyond its ends: a
    smooth relaxation to the body's AP centre; without a spine: the flat plane
    through the body's median AP centre (0 without any body).
    """
    settings = settings or SliceSettings()
    z = np.asarray(z, dtype=np.float64)
    has_body = ~np.isnan(detection.body_y)
    if not has_body.any():
        return CoronalPath(z, np.zeros_like(z), np.zeros(z.shape, bool), False)
    order = np.argsort(detection.z[has_body])
    zb, yb = detection.z[has_body][order], detection.body_y[has_body][order]
    if not detection.found:
        plane = float(np.median(yb))
        return CoronalPath(z, np.full_like(z, plane), np.zeros(z.shape, bool), False)
    # Everything is smoothed on the detection slices, never on the output rows, so
    # the path does not depend on how the output is cropped or padded.
    zc, yc = _smooth_path(zb, yb, settings.centre_smoothing_mm)
    centre = np.interp(z, zc, yc)
    acc = detection.accepted
    order = np.argsort(detection.z[acc])
    za, ya = detection.z[acc][order], detection.y[acc][order]
    lo, hi = float(za[0]), float(za[-1])
    on_spine = (z >= lo) & (z <= hi)
    zs, ys = _smooth_path(za, ya, settings.smoothing_mm)
    y = np.interp(z, zs, ys)
    for end, side in ((lo, z < lo), (hi, z > hi)):
        if side.any():
            offset = float(np.interp(end, zs, ys) - np.interp(end, zc, yc))
            decay = np.exp(-np.abs(z[side] - end) / settings.relax_mm)
            y[side] = centre[side] + offset * decay
    return CoronalPath(z, y, on_spine, True)


# ============================================================================ synthesis


def synthesize_coronal_slice(
    channels: Image | Sequence[Image],
    *,
    roles: Sequence[str] | None = None,
    settings: SliceSettings | None = None,
) -> CoronalSlice:
    """Unroll a volume into one coronal image that follows the spine (see module docs).

    Args:
        channels: One 3D image or several on one grid (e.g. Dixon fat and water).
        roles: Name of each channel; the spine is found from the ``"fat"`` and
            ``"water"`` channels. Default: ``("fat", "water")`` for two channels,
            none otherwise.
        settings: Output size, spacing, slab and detection settings.

    Returns:
        The 2D images (one per channel, same order), their grid and the path.

    Raises:
        InputError: Channels that are not 3D or do not share one grid.

    Warns:
        SpineNotFoundWarning: Without a fat/water pair or a detectable spine;
            the flat coronal plane through the body's AP centre is used.
    """
    settings = settings or SliceSettings()
    images = [channels] if isinstance(channels, Image) else list(channels)
    _check_channels(images)
    if roles is None:
        roles = ("fat", "water") if len(images) == 2 else tuple("" for _ in images)
    if len(roles) != len(images):
        raise InputError(f"{len(roles)} channel roles for {len(images)} channels")
    named = dict(zip(roles, images, strict=True))
    if "fat" in named and "water" in named:
        detection = detect_spine(named["fat"], named["water"], settings=settings)
    else:
        # Still measure the body, for the fallback plane.
        detection = detect_spine(images[0], images[0], settings=replace(settings, min_score=2.0))
        detection = replace(detection, found=False, reason="no fat and water channels")
    grid = output_grid(images[0].grid, size=settings.size, spacing=settings.spacing_mm)
    zs = grid.affine[1, 3] + grid.affine[1, 1] * np.arange(grid.shape[1])
    path = coronal_path(detection, zs, settings=settings)
    if not path.found:
        message = (
            f"no spine found ({detection.reason}); using the flat coronal plane "
            f"through the body centre (y = {path.y[0]:.1f} mm)"
        )
        LOG.warning(message)
        warnings.warn(message, SpineNotFoundWarning, stacklevel=2)
    out = tuple(
        sample_surface(img, grid, path.y, slab_mm=settings.slab_mm, order=settings.order)
        for img in images
    )
    return CoronalSlice(out, grid, path, detection, settings)
