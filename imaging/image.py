"""The in-memory image type, and validated NIfTI reading and atomic writing.

An :class:`Image` is a 2D or 3D array plus the 4x4 matrix that maps voxel
indices to world coordinates in millimetres, in RAS (nibabel's convention).
2D images keep a 4x4 affine; their world points have z from the affine's
third column and translation (usually z = 0).

Reading validates everything registration relies on and raises
:class:`~mmreg.errors.InputError` with a one-line reason otherwise.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from mmreg.atomic import atomic_path
from mmreg.errors import InputError
from mmreg.typing import Matrix4, PathLike

#: Fewest voxels along any spatial axis for an image to be registrable.
MIN_VOXELS_PER_AXIS = 8


@dataclass(frozen=True)
class Grid:
    """A sampling grid: array shape plus voxel-to-world (RAS, mm) affine."""

    shape: tuple[int, ...]
    affine: Matrix4

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, : self.ndim], axis=0))

    def voxel_to_world(self, ijk: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map voxel indices ``(N, ndim)`` to world points ``(N, 3)``."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        pad = np.zeros((ijk.shape[0], 3 - self.ndim))
        hom = np.concatenate([ijk, pad, np.ones((ijk.shape[0], 1))], axis=1)
        return (hom @ self.affine.T)[:, :3]

    def world_to_voxel(self, xyz: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map world points ``(N, 3)`` to (fractional) voxel indices ``(N, ndim)``."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        hom = np.concatenate([xyz, np.ones((xyz.shape[0], 1))], axis=1)
        return (hom @ np.linalg.inv(self.affine).T)[:, : self.ndim]

    def world_coordinates(self) -> npt.NDArray[np.float64]:
        """World coordinates of every voxel centre, shape ``shape + (3,)``."""
        idx = np.indices(self.shape, dtype=np.float64).reshape(self.ndim, -1).T
        return self.voxel_to_world(idx).reshape(*self.shape, 3)


@dataclass(frozen=True)
class Image:
    """A 2D or 3D image with its voxel-to-world (RAS, mm) affine.

    Args:
        data: Spatial array, ``(X, Y)`` or ``(X, Y, Z)``.
        affine: 4x4 voxel-to-world matrix, RAS millimetres.

    Example:
        >>> import numpy as np
        >>> img = Image(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
        >>> img.ndim, img.spacing
        (3, (2.0, 2.0, 2.0))
    """

    data: npt.NDArray
    affine: Matrix4 = field(default_factory=lambda: np.eye(4))
    #: Co-registered channels of a 2D image, ``(X, Y, C)`` on its grid (e.g. DXA bone and
    #: tissue, Dixon fat and water): what multi-channel methods read; ``data`` is the
    #: scalar image everything else reads.
    channels: npt.NDArray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64))
        if self.data.ndim not in (2, 3):
            raise ValueError(f"Image data must be 2D or 3D, got shape {self.data.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if self.channels is not None and (
            self.data.ndim != 2 or self.channels.shape[:2] != self.data.shape
        ):
            raise ValueError(
                f"channels {self.channels.shape} must be (X, Y, C) on a 2D grid {self.data.shape}"
            )

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def grid(self) -> Grid:
        return Grid(self.shape, self.affine)

    @property
    def spacing(self) -> tuple[float, ...]:
        return self.grid.spacing

    def with_data(self, data: npt.NDArray) -> Image:
        """A new image on the same grid with other data."""
        if data.shape != self.data.shape:
            raise ValueError(f"shape {data.shape} does not match grid {self.data.shape}")
        return Image(data, self.affine)

    def to_nifti(self, dtype: npt.DTypeLike | None = None) -> nib.Nifti1Image:
        """A NIfTI image with both sform and qform set to the affine."""
        data = self.data if dtype is None else self.data.astype(dtype)
        img = nib.Nifti1Image(data, self.affine)
        img.set_sform(self.affine, code=1)
        img.set_qform(self.affine, code=1)
        img.header.set_xyzt_units("mm")
        return img


def _is_broken_gzip(path: Path) -> bool:
    """True for a gzip file whose stream is cut short or damaged."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return False
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error):
        return True
    return False


def _fail(path: Path, reason: str) -> InputError:
    return InputError(f"{path.name}: {reason}")


def load_image(
    path: PathLike,
    *,
    ndim: int | None = None,
    dtype: npt.DTypeLike = np.float32,
    check_contents: bool = True,
) -> Image:
    """Read and validate a NIfTI image.

    Args:
        path: A ``.nii`` or ``.nii.gz`` file.
        ndim: Required spatial dimensionality (2 or 3); ``None`` accepts either.
            A 3D file with one slice (``(X, Y, 1)``) is read as 2D.
        dtype: Array type of the returned data.
        check_contents: Reject NaN/Inf, constant data and images too small to
            register (turn off for label maps, which may legitimately be empty).

    Raises:
        InputError: With a one-line reason, for a missing, empty, truncated or
            non-NIfTI file, non-finite or constant data, wrong dimensionality,
            a singular affine or an image too small to register.
    """
    path = Path(path)
    if not path.exists():
        raise _fail(path, "file not found")
    if not path.is_file():
        raise _fail(path, "not a regular file")
    if path.stat().st_size == 0:
        raise _fail(path, "empty file (0 bytes)")
    try:
        img = nib.load(str(path))
    except nib.filebasedimages.ImageFileError:
        if _is_broken_gzip(path):
            raise _fail(path, "corrupt or truncated file (gzip stream ends early)") from None
        raise _fail(path, "not a NIfTI image (unrecognised file format)") from None
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise _fail(path, f"corrupt or truncated file ({type(exc).__name__})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise _fail(path, f"not a NIfTI image ({type(img).__name__})")
    try:
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise _fail(path, f"corrupt or truncated image data ({type(exc).__name__})") from None

    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim > 3:
        raise _fail(path, f"{data.ndim}D image (shape {data.shape}) where 2D or 3D is expected")
    if data.ndim == 3 and data.shape[2] == 1 and ndim != 3:
        data = data[:, :, 0]
    if data.ndim < 2:
        raise _fail(path, f"{data.ndim}D image (shape {data.shape}) where 2D or 3D is expected")
    if ndim is not None and data.ndim != ndim:
        raise _fail(path, f"{data.ndim}D image (shape {data.shape}) where {ndim}D is expected")

    affine = np.asarray(img.affine, dtype=np.float64)
    lin = affine[:3, :3][:, : data.ndim]
    if not np.all(np.isfinite(affine)) or np.linalg.matrix_rank(lin, tol=1e-6) < data.ndim:
        raise _fail(path, "singular or non-finite voxel-to-world affine")
    if data.ndim == 2 and abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        # A 2D image needs a valid third axis for world maths; complete it.
        affine = affine.copy()
        normal = np.cross(affine[:3, 0], affine[:3, 1])
        affine[:3, 2] = normal / np.linalg.norm(normal)

    if not np.issubdtype(data.dtype, np.number):
        raise _fail(path, f"unsupported data type {data.dtype}")
    out = np.asarray(data, dtype=dtype)
    if check_contents:
        check_registrable(out, name=path.name)
    return Image(out, affine)


def check_registrable(data: npt.NDArray, *, name: str) -> None:
    """Raise :class:`InputError` if ``data`` cannot be registered."""
    small = [s for s in data.shape if s < MIN_VOXELS_PER_AXIS]
    if small:
        raise InputError(
            f"{name}: image too small to register (shape {tuple(data.shape)}; "
            f"need at least {MIN_VOXELS_PER_AXIS} voxels along each axis)"
        )
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int(data.size - finite.sum())
        raise InputError(f"{name}: contains {n_bad} NaN/Inf voxel(s)")
    if data.size == 0 or float(data.max()) == float(data.min()):
        value = float(data.flat[0]) if data.size else float("nan")
        raise InputError(f"{name}: image is constant (all voxels = {value:g})")


def load_labels(path: PathLike, *, ndim: int | None = None) -> Image:
    """Read an integer label map (no contents check beyond readability)."""
    img = load_image(path, ndim=ndim, dtype=np.float64, check_contents=False)
    data = img.data
    if not np.all(np.isfinite(data)):
        raise InputError(f"{Path(path).name}: label map contains NaN/Inf")
    return Image(np.rint(data).astype(np.int32), img.affine)


def save_channels(image: Image, path: PathLike) -> Path | None:
    """Write an image's :attr:`Image.channels` as a ``(X, Y, 1, C)`` NIfTI (atomically),
    or nothing (``None``) when it carries none. :func:`load_channels_into` reads it back."""
    if image.channels is None:
        return None
    data = np.asarray(image.channels, dtype=np.float32)[:, :, None, :]
    return _write_nifti(nib.Nifti1Image(data, image.affine), Path(path))


def load_channels_into(image: Image, path: PathLike | None) -> Image:
    """``image`` carrying the channels :func:`save_channels` wrote to ``path`` (if any).

    Raises:
        InputError: For an unreadable file or channels on another grid.
    """
    if path is None:
        return image
    try:
        data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    except Exception as exc:
        raise InputError(f"{Path(path).name}: cannot read channels ({exc})") from exc
    if data.ndim != 4 or data.shape[:2] != image.shape or data.shape[2] != 1:
        raise InputError(f"{Path(path).name}: channels {data.shape} do not fit {image.shape}")
    return Image(image.data, image.affine, channels=data[:, :, 0, :])


def _write_nifti(nifti: nib.Nifti1Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        if path.name.endswith(".gz"):
            tmp.write_bytes(gzip.compress(nifti.to_bytes(), compresslevel=6, mtime=0))
        else:
            nib.save(nifti, str(tmp))
    return path


def save_image(image: Image, path: PathLike, *, dtype: npt.DTypeLike | None = None) -> Path:
    """Write ``image`` as NIfTI atomically (temporary name, then rename).

    ``.nii.gz`` files are compressed in memory with no file name and a zero
    time stamp in the gzip header, so equal images give byte-identical files
    (gzip would otherwise record the random temporary name).
    """
    return _write_nifti(image.to_nifti(dtype), Path(path))
