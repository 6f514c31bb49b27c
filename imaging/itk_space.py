"""The one place where RAS (nibabel, mmreg) meets LPS (ITK, SimpleITK, ANTs).

mmreg keeps every world coordinate in RAS millimetres, as nibabel does. ITK and
everything built on it (SimpleITK, ANTs/antspyx) use LPS: the same physical
point has its x and y negated. Every sign flip in the project happens here,
so that no other module needs to know which convention a library uses.

With ``F = diag(-1, -1, 1)``:

* points and displacement vectors: ``p_lps = F p_ras`` (and back, ``F`` is its own inverse);
* world->world 4x4 matrices: ``M_lps = F4 M_ras F4`` with ``F4 = diag(-1, -1, 1, 1)``;
* image geometry: ITK's ``origin`` is ``F`` times the affine's translation, its
  ``direction`` is ``F`` times the affine's unit columns, ``spacing`` the column norms.

2D images become 2D ITK images: their geometry is taken from the x and y rows of the
first two affine columns, which requires the image plane to be the world xy plane
(z constant). The z row and column are dropped on the way in and restored on the way
back from a template affine (``z_from``), or set to the identity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from mmreg.imaging.image import Grid, Image
from mmreg.typing import Matrix4, Points

if TYPE_CHECKING:
    import ants

__all__ = [
    "ants_to_image",
    "grid_from_sitk",
    "grid_to_sitk_geometry",
    "image_to_ants",
    "image_to_sitk",
    "lps_to_ras_affine",
    "lps_to_ras_points",
    "ras_to_lps_affine",
    "ras_to_lps_points",
    "sitk_to_image",
    "sitk_to_vectors",
    "vectors_to_sitk",
]

_FLIP3 = np.array([-1.0, -1.0, 1.0])
_FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Tolerance for "the 2D image plane is the world xy plane".
_PLANE_TOL = 1e-6


def ras_to_lps_affine(matrix: npt.ArrayLike) -> Matrix4:
    """Convert a 4x4 RAS world->world matrix to LPS (``F4 M F4``).

    For voxel->world matrices use only the left factor (``F4 A``): voxel indices do
    not change with the world convention.

    Example:
        >>> m = np.eye(4); m[:3, 3] = [1.0, 2.0, 3.0]
        >>> ras_to_lps_affine(m)[:3, 3].tolist()
        [-1.0, -2.0, 3.0]
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {m.shape}")
    return _FLIP4 @ m @ _FLIP4


def lps_to_ras_affine(matrix: npt.ArrayLike) -> Matrix4:
    """Convert a 4x4 LPS matrix to RAS (the same operation as the other way)."""
    return ras_to_lps_affine(matrix)


def ras_to_lps_points(points: npt.ArrayLike) -> Points:
    """Convert RAS points or displacement vectors ``(..., 3)`` to LPS.

    Example:
        >>> ras_to_lps_points([[1.0, 2.0, 3.0]]).tolist()
        [[-1.0, -2.0, 3.0]]
    """
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] != 3:
        raise ValueError(f"expected points with 3 coordinates, got shape {p.shape}")
    return p * _FLIP3


def lps_to_ras_points(points: npt.ArrayLike) -> Points:
    """Convert LPS points or displacement vectors ``(..., 3)`` to RAS."""
    return ras_to_lps_points(points)


# --------------------------------------------------------------------------- geometry


def grid_to_sitk_geometry(
    grid: Grid,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """ITK ``(origin, spacing, direction)`` (LPS) of a grid, 2D or 3D.

    ``direction`` is flattened row-major, as SimpleITK's ``SetDirection`` expects.

    Raises:
        ValueError: For a 2D grid whose plane is not the world xy plane.
    """
    lps = _FLIP4 @ np.asarray(grid.affine, dtype=np.float64)
    n = grid.ndim
    if n == 2:
        off_plane = np.abs(grid.affine[2, :2]).max()
        if off_plane > _PLANE_TOL * max(1.0, np.abs(grid.affine[:3, :2]).max()):
            raise ValueError(
                "2D image is not in the world xy plane (its affine moves z along the image "
                "axes); ITK 2D images cannot represent it"
            )
    lin = lps[:n, :n]
    spacing = np.linalg.norm(lin, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("singular voxel-to-world affine")
    direction = lin / spacing
    origin = lps[:n, 3]
    return (
        tuple(float(v) for v in origin),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in direction.ravel()),
    )


def _affine_from_sitk_geometry(
    origin: npt.ArrayLike,
    spacing: npt.ArrayLike,
    direction: npt.ArrayLike,
    z_from: npt.ArrayLike | None,
) -> Matrix4:
    origin = np.asarray(origin, dtype=np.float64)
    spacing = np.asarray(spacing, dtype=np.float64)
    n = origin.size
    direction = np.asarray(direction, dtype=np.float64).reshape(n, n)
    lps = np.eye(4)
    if n == 2 and z_from is not None:
        # Keep the template's z row and column: a 2D ITK image has no z.
        lps = _FLIP4 @ np.asarray(z_from, dtype=np.float64)
        lps[2, :2] = 0.0
    lps[:n, :n] = direction * spacing
    lps[:n, 3] = origin
    return _FLIP4 @ lps


def grid_from_sitk(image: sitk.Image, *, z_from: npt.ArrayLike | None = None) -> Grid:
    """The RAS :class:`Grid` of a SimpleITK image (2D or 3D, scalar or vector).

    Args:
        image: Any SimpleITK image.
        z_from: For 2D images, a 4x4 affine whose z row and column to keep
            (default: z = 0, unit z axis).
    """
    affine = _affine_from_sitk_geometry(
        image.GetOrigin(), image.GetSpacing(), image.GetDirection(), z_from
    )
    return Grid(tuple(int(s) for s in image.GetSize()), affine)


def _set_geometry(image: sitk.Image, grid: Grid) -> sitk.Image:
    origin, spacing, direction = grid_to_sitk_geometry(grid)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


# --------------------------------------------------------------------------- SimpleITK


def image_to_sitk(image: Image) -> sitk.Image:
    """Convert an :class:`Image` to a SimpleITK image with the same physical geometry.

    Voxel ``(i, j, k)`` of ``image.data`` becomes ITK index ``(i, j, k)``; its ITK
    physical point is the RAS world point with x and y negated.

    Example:
        >>> img = Image(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 3.0, 4.0, 1.0]))
        >>> s = image_to_sitk(img)
        >>> s.GetSize(), s.TransformIndexToPhysicalPoint((1, 1, 1))
        ((4, 5, 6), (-2.0, -3.0, 4.0))
    """
    data = np.asarray(image.data)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    # SimpleITK arrays are indexed [z, y, x]; ours [x, y, z].
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.T), isVector=False)
    return _set_geometry(out, image.grid)


def sitk_to_image(image: sitk.Image, *, z_from: npt.ArrayLike | None = None) -> Image:
    """Convert a scalar SimpleITK image (2D or 3D) to an :class:`Image`.

    Args:
        image: A scalar 2D or 3D SimpleITK image.
        z_from: For 2D images, a 4x4 affine whose z row and column to restore.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("expected a scalar image; use sitk_to_vectors for vector images")
    if image.GetDimension() not in (2, 3):
        raise ValueError(f"expected a 2D or 3D image, got {image.GetDimension()}D")
    data = sitk.GetArrayFromImage(image).T
    return Image(np.ascontiguousarray(data), grid_from_sitk(image, z_from=z_from).affine)


def vectors_to_sitk(vectors: npt.ArrayLike, grid: Grid) -> sitk.Image:
    """A float64 SimpleITK vector image of LPS displacements from RAS ``vectors``.

    Args:
        vectors: RAS displacement vectors, ``grid.shape + (3,)``. For a 2D grid
            only the in-plane (x, y) components are kept.
        grid: The grid the vectors live on.
    """
    v = ras_to_lps_points(vectors)
    if v.shape[:-1] != tuple(grid.shape):
        raise ValueError(f"vectors of shape {v.shape} do not match grid {grid.shape}")
    v = v[..., : grid.ndim]
    # Move the spatial axes to ITK's [z, y, x] order and keep components last.
    arr = np.ascontiguousarray(np.moveaxis(v, range(grid.ndim), range(grid.ndim)[::-1]))
    out = sitk.GetImageFromArray(arr.astype(np.float64), isVector=True)
    return _set_geometry(out, grid)


def sitk_to_vectors(
    image: sitk.Image, *, z_from: npt.ArrayLike | None = None
) -> tuple[npt.NDArray[np.float64], Grid]:
    """RAS displacement vectors ``shape + (3,)`` and their grid from an LPS vector image.

    Accepts what ``sitk.ReadImage`` gives for an ANTs warp file (``1Warp.nii.gz``,
    a 5D NIfTI with vector intent), and the field of a ``DisplacementFieldTransform``.
    """
    ndim = image.GetDimension()
    ncomp = image.GetNumberOfComponentsPerPixel()
    if ndim not in (2, 3) or ncomp != ndim:
        raise ValueError(f"expected a {ndim}D field with {ndim} components per voxel, got {ncomp}")
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    arr = np.moveaxis(arr, range(ndim), range(ndim)[::-1])
    full = np.zeros((*arr.shape[:-1], 3))
    full[..., :ndim] = arr
    return lps_to_ras_points(full), grid_from_sitk(image, z_from=z_from)


# --------------------------------------------------------------------------- ANTs


def image_to_ants(image: Image) -> ants.ANTsImage:
    """Convert an :class:`Image` to an antspyx image (same index order and geometry).

    Integer and boolean data become float32, since antspyx handles few pixel types.
    """
    import ants

    data = np.asarray(image.data)
    if data.dtype not in (np.float32, np.float64, np.uint8, np.uint32):
        data = data.astype(np.float32)
    origin, spacing, direction = grid_to_sitk_geometry(image.grid)
    n = image.ndim
    return ants.from_numpy(
        np.ascontiguousarray(data),
        origin=origin,
        spacing=spacing,
        direction=np.asarray(direction).reshape(n, n),
    )


def ants_to_image(image: ants.ANTsImage, *, z_from: npt.ArrayLike | None = None) -> Image:
    """Convert a scalar antspyx image (2D or 3D) to an :class:`Image`.

    Args:
        image: A scalar antspyx image.
        z_from: For 2D images, a 4x4 affine whose z row and column to restore.
    """
    if image.components != 1:
        raise ValueError("expected a scalar antspyx image")
    if image.dimension not in (2, 3):
        raise ValueError(f"expected a 2D or 3D image, got {image.dimension}D")
    affine = _affine_from_sitk_geometry(
        image.origin, image.spacing, np.asarray(image.direction).ravel(), z_from
    )
    return Image(np.ascontiguousarray(image.numpy()), affine)
