"""The in-memory image type, and validated NIfTI reading and atomic writing.

An :class:`Image` is a 2D or 3D array plus the 4x4 matrix that maps voxel
indices to world coordinates in millimetres, in RAS (nibabel's convention).
2D images keep a 4x4 affine; their world points have z from the affine's
third column and translation (usually z = 0).

Reading validates everything registration relies on and raises
:class:`~mmreg.errors.InputError` with a one-line reason otherwise.
"""

from __future__ import annotations

import errno
import gzip
import itertools
import logging
import math
import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel.spatialimages import SpatialImage

from mmreg import notices
from mmreg.atomic import atomic_path
from mmreg.errors import InputError
from mmreg.typing import Matrix4, PathLike

LOG = logging.getLogger("mmreg.imaging.image")

#: Fewest voxels along any spatial axis for an image to be registrable.
MIN_VOXELS_PER_AXIS = 8
#: Plausible voxel sizes, mm: anything outside is a header error (pixdim or its units).
MIN_VOXEL_SIZE_MM = 1e-3
MAX_VOXEL_SIZE_MM = 1e3
#: Largest plausible field of view along one axis, mm (10 m).
MAX_FIELD_OF_VIEW_MM = 1e4
#: Most voxels a resampled grid may have (:func:`check_grid_size`): 2**30, 4 GiB as float32.
MAX_GRID_VOXELS = 2**30
#: qform and sform further apart than this (mm at a grid corner, or degrees between
#: axes) are reported when both are set.
QFORM_SFORM_TOLERANCE_MM = 1.0
QFORM_SFORM_TOLERANCE_DEG = 1.0
#: Two grids are the same when their corners are this close, in voxels (smallest voxel).
SAME_GRID_TOLERANCE_VOXELS = 0.1


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


#: One-line reasons for the operating-system errors reading a file can meet.
_OS_REASONS = {
    errno.ENOENT: "file not found",
    errno.EACCES: "permission denied (the file is not readable by this user)",
    errno.EPERM: "permission denied (the file is not readable by this user)",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOTDIR: "a parent of the path is not a directory",
    errno.ELOOP: "symbolic link loop (the link resolves back to itself)",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error while reading (damaged disk or network share?)",
}

#: Error numbers of the errors raised without one (nibabel's ``FileNotFoundError``).
_OS_ERROR_KINDS: tuple[tuple[type[OSError], int], ...] = (
    (FileNotFoundError, errno.ENOENT),
    (PermissionError, errno.EACCES),
    (IsADirectoryError, errno.EISDIR),
)


def describe_os_error(exc: OSError, path: PathLike, *, opened: bool = False) -> str:
    """A one-line reason for an :class:`OSError` met reading ``path`` (no file name).

    Args:
        exc: The error.
        path: The file being read.
        opened: The file was there a moment before (it passed a ``stat``), so "not
            found" means it disappeared while being read.

    Example:
        >>> import errno
        >>> describe_os_error(OSError(errno.ELOOP, "loop"), "a.nii.gz")
        'symbolic link loop (the link resolves back to itself)'
    """
    path = Path(path)
    other = Path(exc.filename).name if isinstance(exc.filename, str) else path.name
    code = exc.errno or next(
        (code for kind, code in _OS_ERROR_KINDS if isinstance(exc, kind)), None
    )
    if code == errno.ENOENT and other == path.name:
        if opened:
            return "file disappeared while being read (deleted or moved by another process?)"
        if path.is_symlink():
            return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
    reason = _OS_REASONS.get(code or -1) or f"cannot read the file ({type(exc).__name__})"
    return reason if other == path.name else f"{reason}: {other}"


def _check_regular_file(path: Path) -> None:
    """Raise :class:`InputError` unless ``path`` is a non-empty regular file."""
    try:
        info = path.stat()
    except OSError as exc:
        raise _fail(path, describe_os_error(exc, path)) from None
    if stat.S_ISDIR(info.st_mode):
        raise _fail(path, "is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise _fail(path, "not a regular file (a device, pipe or socket)")
    if info.st_size == 0:
        raise _fail(path, "empty file (0 bytes)")


def _open_nifti(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """The NIfTI image at ``path`` (header read, data not yet), or :class:`InputError`."""
    _check_regular_file(path)
    try:
        img = nib.load(str(path))
    except nib.filebasedimages.ImageFileError:
        try:
            broken = _is_broken_gzip(path)
        except OSError as exc:
            raise _fail(path, describe_os_error(exc, path, opened=True)) from None
        if broken:
            raise _fail(path, "corrupt or truncated file (gzip stream ends early)") from None
        raise _fail(path, "not a NIfTI image (unrecognised file format)") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise _fail(path, describe_os_error(exc, path, opened=True)) from None
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise _fail(path, f"corrupt or truncated file ({type(exc).__name__})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise _fail(path, f"not a NIfTI image ({type(img).__name__})")
    return img


def load_spatial(path: PathLike) -> SpatialImage:
    """``nibabel.load`` for an image with a voxel grid (header read, data not yet).

    Any format nibabel reads (NIfTI, MGH, ...), unlike :func:`load_image`'s NIfTI only.

    Raises:
        InputError: For a file nibabel reads as something else (a GIFTI surface, say).
    """
    img = nib.load(str(path))
    if not isinstance(img, SpatialImage):
        raise InputError(f"{Path(path).name}: not a spatial image ({type(img).__name__})")
    return img


def _spatial_shape(path: Path, shape: tuple[int, ...], ndim: int | None) -> tuple[int, ...]:
    """The array shape :func:`load_image` returns for a file of ``shape``.

    Trailing singleton axes beyond the third are dropped, and a single-slice volume
    ``(X, Y, 1)`` is a 2D image unless ``ndim`` is 3.
    """
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        volumes = math.prod(shape[3:])
        raise _fail(
            path,
            f"{len(shape)}D image with {volumes} volumes (shape {shape}) where a single "
            "2D or 3D image is expected; extract one volume (e.g. with fslroi) first",
        )
    if len(shape) == 3 and shape[2] == 1 and ndim != 3:
        shape = shape[:2]
    if len(shape) < 2:
        raise _fail(path, f"{len(shape)}D image (shape {shape}) where 2D or 3D is expected")
    if ndim is not None and len(shape) != ndim:
        raise _fail(path, f"{len(shape)}D image (shape {shape}) where {ndim}D is expected")
    return shape


def _mm(values: npt.ArrayLike) -> str:
    """``1 x 1 x 2.5`` (no unit)."""
    return " x ".join(f"{float(v):.4g}" for v in np.ravel(values))


_WARNED: set[tuple[int, str, str]] = set()


def _warn_once(path: Path, message: str) -> None:
    """Log ``message`` as a warning, once per file and task (files are read often).

    Per task, not per process: each task reports its inputs' warnings with its results
    (:mod:`mmreg.notices`), and a worker process runs many tasks.
    """
    key = (notices.collector_id(), str(path.resolve()), message)
    if key not in _WARNED:
        _WARNED.add(key)
        LOG.warning(message)


def _check_qform_sform(path: Path, img: nib.Nifti1Image | nib.Nifti2Image) -> None:
    """Warn when a file sets both qform and sform and they place the image apart."""
    sform, scode = img.get_sform(coded=True)
    qform, qcode = img.get_qform(coded=True)
    if not scode or not qcode or sform is None or qform is None:
        return
    if not (np.all(np.isfinite(sform)) and np.all(np.isfinite(qform))):
        return
    shape = [*(int(n) for n in img.shape[:3]), 1, 1][:3]
    corners = np.array(list(itertools.product(*[(0, max(n - 1, 0)) for n in shape])), float)
    hom = np.c_[corners, np.ones(len(corners))]
    shift = float(np.max(np.linalg.norm((hom @ (sform - qform).T)[:, :3], axis=1)))
    angle = 0.0
    for k in range(3):
        s, q = np.linalg.norm(sform[:3, k]), np.linalg.norm(qform[:3, k])
        if s > 0 and q > 0:
            cos = float(np.dot(sform[:3, k], qform[:3, k]) / (s * q))
            angle = max(angle, math.degrees(math.acos(min(1.0, max(-1.0, cos)))))
    if shift > QFORM_SFORM_TOLERANCE_MM or angle > QFORM_SFORM_TOLERANCE_DEG:
        label = img.header.get_value_label("sform_code")
        _warn_once(
            path,
            f"{path.name}: qform and sform disagree (by up to {shift:.3g} mm and "
            f"{angle:.3g} degrees); using the sform (sform_code {scode}: {label}), "
            "as nibabel does; the qform is ignored",
        )


def _checked_affine(
    path: Path, img: nib.Nifti1Image | nib.Nifti2Image, shape: tuple[int, ...]
) -> Matrix4:
    """The voxel-to-world affine of an image of array ``shape``, validated."""
    _check_qform_sform(path, img)
    nd = len(shape)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise _fail(path, "singular or non-finite voxel-to-world affine")
    lin = affine[:3, :nd]
    sizes = np.linalg.norm(lin, axis=0)
    if np.any(sizes == 0) or np.linalg.matrix_rank(lin / sizes, tol=1e-6) < nd:
        raise _fail(path, "singular or non-finite voxel-to-world affine")
    if np.any(sizes < MIN_VOXEL_SIZE_MM) or np.any(sizes > MAX_VOXEL_SIZE_MM):
        units = img.header.get_xyzt_units()[0]
        raise _fail(
            path,
            f"implausible voxel size {_mm(sizes)} mm (allowed {MIN_VOXEL_SIZE_MM:g} to "
            f"{MAX_VOXEL_SIZE_MM:g} mm per axis; header units: {units}); "
            "the header's pixdim or affine is probably wrong",
        )
    fov = sizes * np.asarray(shape)
    if np.any(fov > MAX_FIELD_OF_VIEW_MM):
        raise _fail(
            path,
            f"implausible field of view {_mm(fov)} mm (voxel size {_mm(sizes)} mm, "
            f"shape {shape}; at most {MAX_FIELD_OF_VIEW_MM / 1000:g} m per axis); "
            "the header's pixdim or affine is probably wrong",
        )
    if nd == 2 and abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        # A 2D image needs a valid third axis for world maths; complete it.
        affine = affine.copy()
        normal = np.cross(affine[:3, 0], affine[:3, 1])
        affine[:3, 2] = normal / np.linalg.norm(normal)
    return affine


def read_grid(path: PathLike, *, ndim: int | None = None) -> Grid:
    """The grid :func:`load_image` would give ``path``, from its header alone.

    Raises:
        InputError: As :func:`load_image`, for everything but the data themselves.
    """
    path = Path(path)
    img = _open_nifti(path)
    shape = _spatial_shape(path, img.shape, ndim)
    return Grid(shape, _checked_affine(path, img, shape))


def load_image(
    path: PathLike,
    *,
    ndim: int | None = None,
    dtype: npt.DTypeLike = np.float32,
    check_contents: bool = True,
) -> Image:
    """Read and validate a NIfTI image.

    Complex data are read as their magnitude (with a warning). When both the qform
    and the sform are set and they disagree, the sform is used (with a warning).

    Args:
        path: A ``.nii`` or ``.nii.gz`` file.
        ndim: Required spatial dimensionality (2 or 3); ``None`` accepts either.
            A 3D file with one slice (``(X, Y, 1)``) is read as 2D.
        dtype: Array type of the returned data.
        check_contents: Reject NaN/Inf, constant data and images too small to
            register (turn off for label maps, which may legitimately be empty).

    Raises:
        InputError: With a one-line reason, for a missing, unreadable, empty,
            truncated or non-NIfTI file (or a directory), non-finite or constant
            data, wrong dimensionality or several volumes, a singular affine, an
            implausible voxel size or field of view, or an image too small to register.
    """
    path = Path(path)
    img = _open_nifti(path)
    shape = _spatial_shape(path, img.shape, ndim)
    affine = _checked_affine(path, img, shape)
    try:
        data = np.asanyarray(img.dataobj)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise _fail(path, describe_os_error(exc, path, opened=True)) from None
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise _fail(path, f"corrupt or truncated image data ({type(exc).__name__})") from None
    data = data.reshape(shape)

    if np.iscomplexobj(data):
        _warn_once(
            path,
            f"{path.name}: complex-valued data ({data.dtype}); using the magnitude "
            "(the phase is discarded)",
        )
        data = np.abs(data)
    if not np.issubdtype(data.dtype, np.number):
        raise _fail(path, f"unsupported data type {data.dtype}")
    out = np.asarray(data, dtype=dtype)
    if check_contents:
        check_registrable(out, name=path.name)
    return Image(out, affine)


def check_registrable(data: npt.NDArray, *, name: str) -> None:
    """Raise :class:`InputError` if ``data`` cannot be registered.

    Every axis needs :data:`MIN_VOXELS_PER_AXIS` voxels: a stack of two slices is
    neither a 3D volume nor a 2D image, and a 3D array with one voxel along its first
    or second axis is not how a 2D image is stored (``(X, Y)`` or ``(X, Y, 1)``).
    """
    shape = tuple(int(n) for n in data.shape)
    thin = [(axis, n) for axis, n in enumerate(shape) if n < MIN_VOXELS_PER_AXIS]
    if thin:
        axis, n = thin[0]
        what = "slice" if len(shape) == 3 and axis == 2 else "voxel"
        count = f"only {n} {what}{'' if n == 1 else 's'}"
        slab = len(shape) == 3 and all(
            m >= MIN_VOXELS_PER_AXIS for other, m in enumerate(shape) if other != axis
        )
        if slab and n == 1 and axis == 2:
            hint = "; a single slice is a 2D image, and a 3D one is needed here"
        elif slab and n == 1:
            hint = "; a 2D image must be stored as (X, Y) or (X, Y, 1)"
        elif slab:
            hint = "; a stack this thin is not a 3D volume (give one slice as a 2D image)"
        else:
            hint = ""
        raise InputError(
            f"{name}: image too small to register: {count} along axis {axis} "
            f"(shape {shape}); need at least {MIN_VOXELS_PER_AXIS} voxels along each "
            f"axis{hint}"
        )
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int(data.size - finite.sum())
        raise InputError(f"{name}: contains {n_bad} NaN/Inf voxel(s)")
    if data.size == 0 or float(data.max()) == float(data.min()):
        value = float(data.flat[0]) if data.size else float("nan")
        raise InputError(f"{name}: image is constant (all voxels = {value:g})")


def check_grid_size(grid: Grid, spacing: float, *, name: str = "image") -> tuple[int, ...]:
    """Shape of ``grid``'s field of view resampled to ``spacing`` mm voxels, refusing
    grids of more than :data:`MAX_GRID_VOXELS` voxels.

    The voxel counts are those of
    :func:`~mmreg.imaging.preprocess.isotropic_grid_affine`; call this before
    allocating the resampled array.

    Raises:
        InputError: The resampled grid would be too large (naming the voxel size and
            the field of view, which point at a wrong header).

    Example:
        >>> check_grid_size(Grid((10, 20, 5), np.diag([2.0, 1.0, 4.0, 1.0])), 2.0)
        (10, 10, 10)
    """
    spacing = float(spacing)
    if not math.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"spacing must be a positive number of mm, got {spacing!r}")
    sizes = np.asarray(grid.spacing)
    fov = np.asarray(grid.shape, dtype=np.float64) * sizes
    counts = [max(1.0, math.floor(f / spacing + 0.5)) for f in fov]
    total = math.prod(counts)
    if total > MAX_GRID_VOXELS:
        raise InputError(
            f"{name}: resampling to {spacing:g} mm voxels would need {total:.3g} voxels "
            f"(more than {MAX_GRID_VOXELS:.3g}): field of view {_mm(fov)} mm, voxel size "
            f"{_mm(sizes)} mm, shape {tuple(grid.shape)}; check the voxel size in the header"
        )
    return tuple(int(n) for n in counts)


def check_same_grid(
    grid: Grid,
    reference: Grid,
    *,
    name: str,
    reference_name: str,
    what: str = "label map",
) -> None:
    """Raise :class:`InputError` unless ``grid`` is ``reference`` (same shape, and
    corners within :data:`SAME_GRID_TOLERANCE_VOXELS` of the smallest voxel).

    Args:
        grid: The grid to check (a label map's).
        reference: The grid it must be on (its image's).
        name: File name of ``grid``, for the message.
        reference_name: File name of ``reference``.
        what: What ``grid`` is, for the message.
    """
    same = tuple(grid.shape) == tuple(reference.shape)
    if same:
        corners = np.array(
            list(itertools.product(*[(0, max(n - 1, 0)) for n in reference.shape])), float
        )
        apart = np.linalg.norm(grid.voxel_to_world(corners) - reference.voxel_to_world(corners), 1)
        same = float(apart.max()) <= SAME_GRID_TOLERANCE_VOXELS * min(reference.spacing)
    if not same:
        raise InputError(
            f"{name}: {what} grid ({_describe_grid(grid)}) is not the grid of its image "
            f"{reference_name} ({_describe_grid(reference)}); resample it onto the image's "
            "grid (nearest neighbour)"
        )


def _describe_grid(grid: Grid) -> str:
    origin = ", ".join(f"{v:.4g}" for v in grid.affine[:3, 3])
    return f"shape {tuple(grid.shape)}, voxel {_mm(grid.spacing)} mm, origin ({origin}) mm"


def load_labels(
    path: PathLike, *, ndim: int | None = None, image: PathLike | Grid | None = None
) -> Image:
    """Read an integer label map (no contents check beyond readability).

    Args:
        path: The label map.
        ndim: Required spatial dimensionality.
        image: The image (its file, or its grid) the labels belong to: the label map
            must be on its grid (:func:`check_same_grid`).
    """
    img = load_image(path, ndim=ndim, dtype=np.float64, check_contents=False)
    data = img.data
    if not np.all(np.isfinite(data)):
        raise InputError(f"{Path(path).name}: label map contains NaN/Inf")
    if image is not None:
        reference = image if isinstance(image, Grid) else read_grid(image, ndim=ndim)
        reference_name = "image" if isinstance(image, Grid) else Path(image).name
        check_same_grid(img.grid, reference, name=Path(path).name, reference_name=reference_name)
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
        data = np.asarray(load_spatial(path).dataobj, dtype=np.float32)
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
