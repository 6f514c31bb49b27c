"""Multi-channel 2D images on the encoders' working grids.

The whole-body images are 2D with a few channels (DXA: bone, tissue; MR slice: fat,
water). An :class:`~mmreg.imaging.image.Image` holds one array, so a channel image
comes either as one ``(X, Y, C)`` array (a 3D image whose last axis has at most
:data:`MAX_CHANNELS` entries: the channels, not a z axis), as a 2D image (one channel),
or as several 2D images on the same grid (:func:`as_channels`).

The encoders read a *working grid*: world-aligned (optionally rotated about a centre),
``spacing`` mm per pixel, intensities per channel mapped robustly to [0, 1]. A grid is
a 3x3 homogeneous matrix ``G`` with ``world_xy = G @ (i, j, 1)``; all geometry of this
package is in world (x, y) millimetres, with 2D world z = 0 as in the rest of mmreg.

Example:
    >>> import numpy as np
    >>> img = ChannelImage(np.ones((2, 10, 6), np.float32), np.diag([2.0, 2.0, 1.0, 1.0]))
    >>> img.centre.tolist()  # world (x, y) of the array centre
    [9.0, 5.0]
    >>> grid = working_grid(img.centre, (5, 3), spacing=4.0)
    >>> sample(img, grid, (5, 3)).shape
    (2, 5, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mmreg.errors import InputError
from mmreg.imaging.image import Image, load_image, load_spatial
from mmreg.imaging.preprocess import normalise_channels

__all__ = [
    "MAX_CHANNELS",
    "ChannelImage",
    "as_channels",
    "covering_shape",
    "inside_mask",
    "load_channels",
    "normalise_channels",
    "rigid_matrix",
    "sample",
    "working_grid",
]

#: Most channels a ``(X, Y, C)`` array may have to be read as a channel image.
MAX_CHANNELS = 4

Matrix3 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ChannelImage:
    """A 2D image with channels: ``data`` ``(C, X, Y)`` and its 4x4 voxel->world affine.

    Only the in-plane part of the affine is used (columns i, j and the translation,
    rows x, y): 2D images live in the world plane z = 0.
    """

    data: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", np.asarray(self.data, dtype=np.float32))
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64))
        if self.data.ndim != 3:
            raise ValueError(f"channel image data must be (C, X, Y), got {self.data.shape}")

    @property
    def channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[1]), int(self.data.shape[2]))

    @property
    def grid(self) -> Matrix3:
        """3x3 in-plane voxel->world matrix."""
        a = self.affine
        return np.array([[a[0, 0], a[0, 1], a[0, 3]], [a[1, 0], a[1, 1], a[1, 3]], [0, 0, 1.0]])

    @property
    def centre(self) -> npt.NDArray[np.float64]:
        """World (x, y) of the array centre."""
        mid = (np.asarray(self.shape, dtype=float) - 1.0) / 2.0
        return (self.grid @ np.array([mid[0], mid[1], 1.0]))[:2]

    def corners(self) -> npt.NDArray[np.float64]:
        """World (x, y) of the four outer voxel edges' corners, ``(4, 2)``."""
        x, y = self.shape
        ij = np.array([[-0.5, -0.5], [x - 0.5, -0.5], [-0.5, y - 0.5], [x - 0.5, y - 0.5]])
        return (np.c_[ij, np.ones(4)] @ self.grid.T)[:, :2]


def as_channels(image: Image | Sequence[Image]) -> ChannelImage:
    """A channel image from an ``(X, Y, C)`` image, a 2D image (its
    :attr:`~mmreg.imaging.image.Image.channels` when it carries them), or 2D images on
    one grid.

    Raises:
        InputError: For a 3D volume (more than :data:`MAX_CHANNELS` entries along its
            last axis) or channel images on different grids.

    Example:
        >>> import numpy as np
        >>> as_channels(Image(np.zeros((8, 9, 2)), np.eye(4))).data.shape
        (2, 8, 9)
    """
    if isinstance(image, Image):
        source = image.data if image.channels is None else image.channels
        data = np.asarray(source, dtype=np.float32)
        if data.ndim == 2:
            return ChannelImage(data[None], image.affine)
        if data.shape[2] > MAX_CHANNELS:
            raise InputError(
                f"the contrastive methods register 2D images (with up to {MAX_CHANNELS} "
                f"channels on the last axis); got a 3D volume of shape {data.shape}"
            )
        return ChannelImage(np.moveaxis(data, 2, 0), image.affine)
    images = list(image)
    if not images:
        raise InputError("no channel image given")
    first = images[0]
    for other in images[1:]:
        if other.shape != first.shape or not np.allclose(other.affine, first.affine, atol=1e-4):
            raise InputError("channel images must share one grid (shape and affine)")
    return ChannelImage(
        np.concatenate([as_channels(im).data for im in images], axis=0), first.affine
    )


def load_channels(path: str | Path | Sequence[str | Path]) -> ChannelImage:
    """Read a channel image from one NIfTI file or several single-channel files.

    One file may hold ``(X, Y)``, ``(X, Y, C)`` or ``(X, Y, 1, C)`` (channels on the last
    axis, at most :data:`MAX_CHANNELS`); several files are 2D images on one grid, one
    channel each, in the given order.

    Raises:
        InputError: For an unreadable file, a 3D volume, or non-finite or constant data.
    """
    if not isinstance(path, str | Path):
        return as_channels([load_image(p, ndim=2) for p in path])
    path = Path(path)
    try:
        return as_channels(load_image(path))
    except InputError as exc:
        if "too small" not in str(exc) and "4D image" not in str(exc):
            raise
    # load_image refuses a short channel axis (too few voxels) or a 4D (X, Y, 1, C) file.
    img = load_spatial(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim != 3 or data.shape[2] > MAX_CHANNELS or min(data.shape[:2]) < 8:
        raise InputError(f"{path.name}: not a 2D channel image (shape {data.shape})")
    if not np.all(np.isfinite(data)) or float(data.max()) == float(data.min()):
        raise InputError(f"{path.name}: non-finite or constant data")
    return ChannelImage(np.moveaxis(data, 2, 0), np.asarray(img.affine, dtype=np.float64))


def rigid_matrix(angle_deg: float, translation: npt.ArrayLike = (0.0, 0.0)) -> Matrix3:
    """3x3 homogeneous 2D rigid map ``p -> R(angle) p + t`` (counter-clockwise in x, y).

    Example:
        >>> np.round(rigid_matrix(90.0, (1.0, 0.0)) @ [1.0, 0.0, 1.0], 6).tolist()
        [1.0, 1.0, 1.0]
    """
    a = np.deg2rad(angle_deg)
    t = np.asarray(translation, dtype=float)
    return np.array([[np.cos(a), -np.sin(a), t[0]], [np.sin(a), np.cos(a), t[1]], [0, 0, 1.0]])


def working_grid(
    centre: npt.ArrayLike, shape: tuple[int, int], spacing: float, angle_deg: float = 0.0
) -> Matrix3:
    """The grid of ``shape`` pixels of ``spacing`` mm whose centre sits on world ``centre``.

    The grid's axes are the world axes rotated by ``angle_deg`` (counter-clockwise).
    """
    mid = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    scale = np.diag([spacing, spacing, 1.0])
    to_centre = np.eye(3)
    to_centre[:2, 2] = -mid
    return rigid_matrix(angle_deg, centre) @ scale @ to_centre


def covering_shape(
    image: ChannelImage, spacing: float, *, multiple: int = 1, angle_deg: float = 0.0
) -> tuple[int, int]:
    """Working-grid size that covers the image's bounding box, rounded up to ``multiple``.

    With ``angle_deg``, the box is taken along the world axes rotated by that angle
    (the axes of a rotated working grid).
    """
    corners = image.corners() @ rigid_matrix(angle_deg)[:2, :2]  # rows: R^T p
    extent = corners.max(axis=0) - corners.min(axis=0)
    size = np.ceil(extent / spacing - 1e-6).astype(int)
    size = -(-size // multiple) * multiple
    return (int(max(size[0], multiple)), int(max(size[1], multiple)))


def sample(
    image: ChannelImage, grid: Matrix3, shape: tuple[int, int], *, order: int = 1
) -> npt.NDArray[np.float32]:
    """Resample every channel onto a working grid (``(C, *shape)``; 0 outside the image)."""
    ij = np.indices(shape, dtype=np.float64).reshape(2, -1)
    world = grid @ np.vstack([ij, np.ones(ij.shape[1])])
    voxel = np.linalg.solve(image.grid, world)[:2]
    out = np.empty((image.channels, *shape), dtype=np.float32)
    for c, channel in enumerate(image.data):
        out[c] = ndimage.map_coordinates(
            channel, voxel, order=order, mode="constant", cval=0.0
        ).reshape(shape)
    return out


def inside_mask(
    image: ChannelImage, grid: Matrix3, shape: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """Which working-grid pixels fall inside the image (within half a voxel of its edge)."""
    ij = np.indices(shape, dtype=np.float64).reshape(2, -1)
    world = grid @ np.vstack([ij, np.ones(ij.shape[1])])
    voxel = np.linalg.solve(image.grid, world)[:2]
    size = np.asarray(image.shape, dtype=float)[:, None]
    return np.all((voxel >= -0.5) & (voxel <= size - 0.5), axis=0).reshape(shape)
