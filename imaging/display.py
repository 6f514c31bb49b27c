"""Images prepared for a person to look at: world resampling, windowing, mid-planes.

Display aids only (the reports' figures); nothing here feeds a registration.

Example:
    >>> import numpy as np
    >>> robust_normalise(np.array([[0.0, 1.0], [2.0, 3.0]]), lower=0, upper=100) * 3
    array([[0., 1.],
           [2., 3.]], dtype=float32)
    >>> checkerboard(np.zeros((2, 2)), np.ones((2, 2)), tiles=2).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mmreg.imaging.image import Image


def resample_to(image: Image, reference: Image, *, order: int = 1) -> Image:
    """``image`` resampled onto ``reference``'s grid through world coordinates.

    An identity mapping in world space: this is only a display aid for images
    that are not already on the same grid (and for showing the moving image
    as it lies before registration).

    Raises:
        ValueError: If the two images differ in dimensionality.
    """
    if image.ndim != reference.ndim:
        raise ValueError(f"cannot overlay a {image.ndim}D image on a {reference.ndim}D one")
    if image.shape == reference.shape and np.allclose(image.affine, reference.affine, atol=1e-4):
        return image
    n = reference.ndim
    vox = np.linalg.inv(image.affine) @ reference.affine
    # Axes beyond ndim are not indexed; a 2D image's (x, y) depend on (i, j) only.
    matrix, offset = vox[:n, :n], vox[:n, 3]
    data = ndimage.affine_transform(
        np.asarray(image.data, dtype=np.float32),
        matrix,
        offset,
        output_shape=reference.shape,
        order=order,
        mode="constant",
        cval=0.0,
    )
    return Image(data.astype(np.float32), reference.affine)


def robust_normalise(
    data: npt.ArrayLike, *, lower: float = 1.0, upper: float = 99.0
) -> npt.NDArray[np.float32]:
    """Intensities mapped to ``[0, 1]`` between two percentiles (NaN -> 0).

    Percentiles ignore exact-zero background where there is foreground, so
    a small object in a large empty field still gets the full grey range.
    """
    arr = np.nan_to_num(np.asarray(data, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    values = arr[arr != 0]
    if values.size < 16:
        values = arr.ravel()
    if values.size == 0:
        return np.zeros_like(arr)
    lo, hi = (float(v) for v in np.percentile(values, [lower, upper]))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def canonical(data: npt.NDArray, affine: npt.NDArray) -> tuple[npt.NDArray, npt.NDArray]:
    """Data with axes reordered/flipped to RAS, and each axis' voxel size in mm.

    A 2D image gets a singleton third axis first, so it lands in whichever
    world plane its affine puts it (axial, coronal or sagittal).
    """
    data3 = data if data.ndim == 3 else data[..., None]
    ornt = nib.orientations.io_orientation(affine)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    out = nib.orientations.apply_orientation(data3, ornt)
    spacing = np.empty(3)
    for vox_axis, (world_axis, _) in enumerate(ornt):
        spacing[int(world_axis)] = zooms[vox_axis]
    return np.asarray(out), spacing


#: Display planes of a RAS volume: (name, axis held fixed, (horizontal, vertical) axes).
PLANES = (("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2)))


def plane_slices(
    fixed: npt.NDArray, moving: npt.NDArray, spacing: npt.NDArray
) -> list[tuple[str, npt.NDArray, npt.NDArray, tuple[float, float]]]:
    """Mid slices ``(name, fixed_2d, moving_2d, (width_mm, height_mm))``, (h, v) indexed.

    All three planes of a volume; for a 2D image (one singleton axis after
    :func:`canonical`) only the plane across that axis.
    """
    flat = [axis for axis in range(3) if fixed.shape[axis] == 1]
    out = []
    for name, axis, (h, v) in PLANES:
        if flat and axis != flat[0]:
            continue
        index = fixed.shape[axis] // 2
        extent = (float(fixed.shape[h] * spacing[h]), float(fixed.shape[v] * spacing[v]))
        out.append(
            (name, np.take(fixed, index, axis=axis), np.take(moving, index, axis=axis), extent)
        )
    return out


def edge_map(slice2d: npt.NDArray, *, quantile: float = 90.0) -> npt.NDArray[np.float32]:
    """Strength in ``[0, 1]`` of the strongest intensity edges of a normalised slice."""
    smooth = ndimage.gaussian_filter(np.asarray(slice2d, dtype=np.float32), 0.7)
    magnitude = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
    nonzero = magnitude[magnitude > 1e-6]
    if nonzero.size == 0:
        return np.zeros_like(magnitude)
    threshold = float(np.percentile(nonzero, quantile))
    top = float(nonzero.max())
    if top <= threshold:
        return (magnitude >= threshold).astype(np.float32)
    return np.clip((magnitude - threshold) / (top - threshold) * 2.0, 0.0, 1.0).astype(np.float32)


def checkerboard(a: npt.NDArray, b: npt.NDArray, *, tiles: int = 8) -> npt.NDArray:
    """``a`` and ``b`` interleaved in a ``tiles`` x ``tiles`` checkerboard."""
    rows = (np.arange(a.shape[0]) * tiles // max(a.shape[0], 1)) % 2
    cols = (np.arange(a.shape[1]) * tiles // max(a.shape[1], 1)) % 2
    use_a = (rows[:, None] + cols[None, :]) % 2 == 0
    return np.where(use_a, a, b)
