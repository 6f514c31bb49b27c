"""Spatial transforms: fixed-space world points -> moving-space world points (RAS mm).

A :class:`Transform` is a chain of steps applied in order to a fixed-space point:
:class:`AffineStep` (a 4x4 world->world matrix) and :class:`FieldStep` (a dense
displacement field, linearly interpolated, zero outside its grid as in ITK). As in
ITK, resampling the moving image onto the fixed grid is a pull:
``warped(x) = moving(T(x))``.

Transforms are written as ITK files that SimpleITK and antspyx read back: ``.txt``,
``.tfm`` or ``.mat`` (one ``AffineTransform``, linear transforms only) and ``.h5``
(a ``CompositeTransform`` of ``AffineTransform`` and ``DisplacementFieldTransform``).
All sign flips between RAS and LPS go through :mod:`mmreg.imaging.itk_space`.

Composition order (determined empirically, SimpleITK 2.5 / ITK 5.4 / antspyx 0.6,
and checked by the tests):

* ITK ``CompositeTransform([t0, t1, ..., tn]).TransformPoint(x)`` is
  ``t0(t1(...tn(x)))``: the LAST transform added acts FIRST on the point. Our steps
  (first step acts first) are therefore stored in reverse order.
* ``ants.apply_transforms(..., transformlist=[t0, t1, ..., tn])`` (and
  ``antsApplyTransforms -t t0 -t t1 ...``) maps a fixed point to
  ``tn(...t1(t0(x)))``: the FIRST listed acts FIRST on the point, i.e. the list
  is already in our step order. So a registration's ``fwdtransforms``
  ``[1Warp, 0GenericAffine]`` is the map ``x -> affine(warp(x))``.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage

from mmreg.atomic import atomic_path
from mmreg.errors import TransformError
from mmreg.imaging import itk_space
from mmreg.imaging.image import Grid, Image
from mmreg.typing import Matrix4, PathLike, Points

__all__ = ["AffineStep", "FieldStep", "Step", "Transform"]

#: Suffixes written as a single ITK ``AffineTransform`` (linear transforms only).
LINEAR_SUFFIXES = (".txt", ".tfm", ".mat")
#: Suffixes written as an ITK ``CompositeTransform`` (any transform).
COMPOSITE_SUFFIXES = (".h5", ".hdf5")
#: Suffixes read as a displacement-field image (an ANTs ``Warp.nii.gz``).
FIELD_SUFFIXES = (".nii", ".nii.gz")
#: Points resampled per batch in :meth:`Transform.apply`, bounding memory on big grids.
_BATCH_POINTS = 1 << 21
#: Relative tolerance for "a 2D transform leaves z alone".
_Z_TOL = 1e-6
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _affine_points(
    points: npt.NDArray[np.float64], matrix: npt.NDArray[np.floating], ndim: int = 3
) -> Points:
    """``(N, k)`` points through a 4x4 (first k columns, rows ``:ndim``) plus translation."""
    # Column-wise multiply-adds: (N, 3) x (3, 3) through BLAS is slow and thread-hungry.
    out = np.empty((points.shape[0], ndim))
    for i in range(ndim):
        col = out[:, i]
        col.fill(matrix[i, 3])
        for j in range(points.shape[1]):
            if matrix[i, j] != 0.0:
                col += matrix[i, j] * points[:, j]
    return out


def _world_to_voxel(grid: Grid, points: Points) -> npt.NDArray[np.float64]:
    return _affine_points(points, np.linalg.inv(grid.affine), grid.ndim)


def _as_points(points: npt.ArrayLike) -> Points:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 1:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {p.shape}")
    return p


@dataclass(frozen=True, eq=False)
class AffineStep:
    """A linear step ``p -> M p`` with ``M`` a 4x4 RAS world->world matrix."""

    matrix: Matrix4

    def __post_init__(self) -> None:
        m = np.array(self.matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise TransformError(f"affine matrix must be a finite 4x4 array, got {m.shape}")
        if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0]):
            raise TransformError("affine matrix must have last row [0, 0, 0, 1]")
        m[3] = [0.0, 0.0, 0.0, 1.0]
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)

    def map_points(self, points: Points) -> Points:
        """Map ``(N, 3)`` world points."""
        return _affine_points(points, self.matrix)


@dataclass(frozen=True, eq=False)
class FieldStep:
    """A dense displacement step ``p -> p + u(p)``.

    ``u`` is linearly interpolated between voxel centres, held at the edge value up to
    half a voxel beyond the outermost centres and zero further out, which is what ITK's
    ``DisplacementFieldTransform`` does.

    Args:
        grid: Where the field is sampled (2D or 3D).
        vectors: RAS displacements in mm, ``grid.shape + (3,)``. For a 2D grid,
            ``grid.shape + (2,)`` is accepted and gets z = 0.
    """

    grid: Grid
    vectors: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        v = np.array(self.vectors, dtype=np.float64)
        shape = tuple(self.grid.shape)
        if v.shape == (*shape, 2) and len(shape) == 2:
            v = np.concatenate([v, np.zeros((*shape, 1))], axis=-1)
        if v.shape != (*shape, 3):
            raise TransformError(
                f"displacement field of shape {v.shape} does not match grid {shape} + (3,)"
            )
        if not np.all(np.isfinite(v)):
            raise TransformError("displacement field contains NaN/Inf")
        v.setflags(write=False)
        object.__setattr__(self, "vectors", v)
        object.__setattr__(self, "grid", Grid(shape, np.asarray(self.grid.affine, np.float64)))

    def displacement(self, points: Points) -> Points:
        """The displacement ``u(p)`` at ``(N, 3)`` world points."""
        idx = _world_to_voxel(self.grid, points)
        size = np.asarray(self.grid.shape, dtype=np.float64)
        inside = np.all((idx >= -0.5) & (idx < size - 0.5), axis=1)
        out = np.zeros((points.shape[0], 3))
        if not inside.any():
            return out
        coords = np.clip(idx[inside], 0.0, size - 1.0).T
        for c in range(3):
            comp = self.vectors[..., c]
            if not comp.any():
                continue
            out[inside, c] = ndimage.map_coordinates(
                comp, coords, order=1, mode="nearest", prefilter=False
            )
        return out

    def map_points(self, points: Points) -> Points:
        """Map ``(N, 3)`` world points."""
        return points + self.displacement(points)


Step = AffineStep | FieldStep


def _grid_points(grid: Grid, start: int, stop: int) -> Points:
    """World points of the voxels ``start:stop`` along the first axis, C order."""
    sub = (stop - start, *grid.shape[1:])
    idx = np.indices(sub, dtype=np.float64).reshape(grid.ndim, -1).T
    idx[:, 0] += start
    return _affine_points(idx, grid.affine)


def _check_planar(matrix: Matrix4) -> None:
    """Raise unless a 4x4 matrix leaves z alone (as a 2D transform must)."""
    scale = max(1.0, float(np.abs(matrix[:3, :3]).max()))
    z_ok = np.allclose(matrix[2], [0.0, 0.0, 1.0, 0.0], atol=_Z_TOL * scale)
    if not z_ok or np.abs(matrix[:2, 2]).max() > _Z_TOL * scale:
        raise TransformError("2D transform couples z with x/y; it cannot be written as 2D ITK")


def _itk_reason(exc: Exception) -> str:
    """A short one-line reason from an ITK/SimpleITK exception text."""
    text = str(exc)
    match = re.search(r"ITK ERROR: [^:]*\):\s*(.*)", text)
    reason = match.group(1) if match else text.splitlines()[-1] if text else type(exc).__name__
    reason = " ".join(reason.split())
    return reason if len(reason) <= 120 else reason[:117] + "..."


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


@dataclass(frozen=True, eq=False)
class Transform:
    """A fixed->moving spatial map (RAS mm): ``steps`` applied in order to a point.

    Args:
        steps: Steps applied in order to a fixed-space point.
        ndim: 2 or 3. 2D transforms act on (x, y) and leave z untouched.

    Example:
        >>> shift = np.eye(4); shift[0, 3] = 5.0
        >>> t = Transform.from_affine(shift)
        >>> t.map_points([[1.0, 2.0, 3.0]]).tolist()
        [[6.0, 2.0, 3.0]]
        >>> float(t.then(t).as_affine()[0, 3])
        10.0
    """

    steps: tuple[Step, ...] = field(default_factory=tuple)
    ndim: int = 3

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3):
            raise TransformError(f"transform must be 2D or 3D, got ndim={self.ndim}")
        steps = tuple(self.steps)
        for step in steps:
            if not isinstance(step, AffineStep | FieldStep):
                raise TypeError(f"not a transform step: {type(step).__name__}")
            if isinstance(step, FieldStep) and step.grid.ndim != self.ndim:
                raise TransformError(
                    f"{step.grid.ndim}D displacement field in a {self.ndim}D transform"
                )
        object.__setattr__(self, "steps", steps)

    # ----------------------------------------------------------------- construction

    @classmethod
    def identity(cls, ndim: int = 3) -> Transform:
        """The identity map."""
        return cls((), ndim)

    @classmethod
    def from_affine(cls, matrix: npt.ArrayLike, ndim: int = 3) -> Transform:
        """A linear transform from a 4x4 RAS world->world matrix (fixed -> moving)."""
        return cls((AffineStep(np.asarray(matrix, dtype=np.float64)),), ndim)

    @classmethod
    def from_field(cls, grid: Grid, vectors: npt.ArrayLike) -> Transform:
        """A deformable transform ``p -> p + u(p)`` from RAS displacements on ``grid``."""
        return cls((FieldStep(grid, np.asarray(vectors)),), grid.ndim)

    def then(self, other: Transform) -> Transform:
        """The map ``x -> other(self(x))``.

        Adjacent linear steps are merged into one matrix.
        """
        if other.ndim != self.ndim:
            raise TransformError(f"cannot chain a {self.ndim}D and a {other.ndim}D transform")
        steps = list(self.steps)
        for step in other.steps:
            if steps and isinstance(step, AffineStep) and isinstance(steps[-1], AffineStep):
                steps[-1] = AffineStep(step.matrix @ steps[-1].matrix)
            else:
                steps.append(step)
        return Transform(tuple(steps), self.ndim)

    # ----------------------------------------------------------------- queries

    @property
    def is_linear(self) -> bool:
        return all(isinstance(s, AffineStep) for s in self.steps)

    def as_affine(self) -> Matrix4:
        """The 4x4 RAS matrix of a linear transform.

        Raises:
            TransformError: If the transform has a displacement field.
        """
        if not self.is_linear:
            raise TransformError("transform is deformable; it has no single affine matrix")
        m = np.eye(4)
        for step in self.steps:
            assert isinstance(step, AffineStep)  # is_linear
            m = step.matrix @ m
        return m

    def map_points(self, points: npt.ArrayLike) -> Points:
        """Map ``(N, 3)`` fixed-space world points (RAS mm) to moving space."""
        p = _as_points(points)
        for step in self.steps:
            p = step.map_points(p)
        return p

    def apply(
        self,
        moving: Image,
        reference: Grid | Image,
        *,
        interpolation: Literal["linear", "nearest"] = "linear",
        fill: float = 0.0,
    ) -> Image:
        """Resample ``moving`` onto ``reference``: ``out(x) = moving(T(x))``.

        Interpolation and out-of-image handling follow ITK's resampler: sample points
        up to half a voxel beyond the outermost voxel centres take the edge value,
        points further out get ``fill``.

        Args:
            moving: The image to warp (2D or 3D).
            reference: The output grid (usually the fixed image).
            interpolation: ``"linear"`` (output float32) or ``"nearest"`` (for label
                maps: int32 for integer/boolean input, float32 otherwise).
            fill: Value for points that map outside the moving image.

        Returns:
            The warped image on the reference grid.
        """
        if interpolation not in ("linear", "nearest"):
            raise ValueError(f"unknown interpolation {interpolation!r}")
        grid = reference.grid if isinstance(reference, Image) else reference
        data = np.asarray(moving.data)
        integral = data.dtype == np.bool_ or np.issubdtype(data.dtype, np.integer)
        if interpolation == "nearest" and integral:
            out_dtype: type[np.int32] | type[np.float32] = np.int32
            src = data.astype(np.int32, copy=False)
        else:
            out_dtype = np.float32
            src = data if data.dtype in (np.float32, np.float64) else data.astype(np.float32)
        size = np.asarray(moving.shape, dtype=np.float64)
        out = np.empty(int(np.prod(grid.shape)), dtype=out_dtype)
        rows_per_batch = max(1, _BATCH_POINTS // max(1, int(np.prod(grid.shape[1:]))))
        pos = 0
        for start in range(0, grid.shape[0], rows_per_batch):
            stop = min(grid.shape[0], start + rows_per_batch)
            pts = self.map_points(_grid_points(grid, start, stop))
            idx = _world_to_voxel(moving.grid, pts)
            inside = np.all((idx >= -0.5) & (idx < size - 0.5), axis=1)
            coords = np.clip(idx, 0.0, size - 1.0)
            if interpolation == "nearest":
                # Round half up, like ITK's NearestNeighborInterpolateImageFunction.
                ijk = np.floor(coords + 0.5).astype(np.intp)
                vals = src[tuple(ijk.T)].astype(out_dtype, copy=False)
            else:
                vals = ndimage.map_coordinates(
                    src, coords.T, order=1, mode="nearest", prefilter=False, output=np.float64
                ).astype(out_dtype)
            vals[~inside] = fill
            out[pos : pos + vals.size] = vals
            pos += vals.size
        return Image(out.reshape(grid.shape), grid.affine)

    def jacobian_determinant(self, reference: Grid | Image) -> npt.NDArray[np.float64]:
        """Determinant of the Jacobian of the full fixed->moving map on ``reference``.

        Computed from finite differences (central inside, one-sided at the edges) of
        the mapped world coordinates of the grid's voxel centres, in world mm, so a
        linear map gives ``det(M[:3, :3])`` everywhere. For 2D grids the out-of-plane
        direction is differentiated along the affine's third column.

        Example:
            >>> t = Transform.from_affine(np.diag([2.0, 1.0, 0.5, 1.0]))
            >>> float(t.jacobian_determinant(Grid((3, 3, 3), np.eye(4))).mean())
            1.0
        """
        grid = reference.grid if isinstance(reference, Image) else reference
        if self.is_linear:
            return np.full(grid.shape, float(np.linalg.det(self.as_affine()[:3, :3])))
        world = _grid_points(grid, 0, grid.shape[0]).reshape(*grid.shape, 3)
        mapped = self.map_points(world.reshape(-1, 3)).reshape(world.shape)
        cols = []
        for axis in range(3):
            if axis < grid.ndim and grid.shape[axis] >= 2:
                cols.append(np.gradient(mapped, axis=axis))
            else:
                step = grid.affine[:3, axis]
                ahead = self.map_points((world + 0.5 * step).reshape(-1, 3))
                behind = self.map_points((world - 0.5 * step).reshape(-1, 3))
                cols.append((ahead - behind).reshape(world.shape))
        a, b, c = cols
        # det([a b c]) = a . (b x c), per voxel.
        det_d = a[..., 0] * (b[..., 1] * c[..., 2] - b[..., 2] * c[..., 1])
        det_d += a[..., 1] * (b[..., 2] * c[..., 0] - b[..., 0] * c[..., 2])
        det_d += a[..., 2] * (b[..., 0] * c[..., 1] - b[..., 1] * c[..., 0])
        return det_d / float(np.linalg.det(grid.affine[:3, :3]))

    def displacement_field(self, reference: Grid | Image) -> npt.NDArray[np.float64]:
        """RAS displacements ``T(x) - x`` at the voxel centres of ``reference``."""
        grid = reference.grid if isinstance(reference, Image) else reference
        world = _grid_points(grid, 0, grid.shape[0]).reshape(*grid.shape, 3)
        return self.map_points(world.reshape(-1, 3)).reshape(world.shape) - world

    # ----------------------------------------------------------------- ITK conversion

    def _affine_to_sitk(self, matrix: Matrix4) -> sitk.AffineTransform:
        lps = itk_space.ras_to_lps_affine(matrix)
        n = self.ndim
        if n == 2:
            _check_planar(matrix)
        tx = sitk.AffineTransform(n)
        tx.SetMatrix(tuple(float(v) for v in lps[:n, :n].ravel()))
        tx.SetTranslation(tuple(float(v) for v in lps[:n, 3]))
        return tx

    def _step_to_sitk(self, step: Step) -> sitk.Transform:
        if isinstance(step, AffineStep):
            return self._affine_to_sitk(step.matrix)
        if self.ndim == 2 and np.abs(step.vectors[..., 2]).max() > 0:
            raise TransformError("2D displacement field has z components")
        image = itk_space.vectors_to_sitk(step.vectors, step.grid)
        return sitk.DisplacementFieldTransform(image)

    def to_sitk(self, *, composite: bool = False) -> sitk.Transform:
        """A SimpleITK transform (LPS) with the same fixed->moving point map.

        Args:
            composite: Always return a ``CompositeTransform`` (otherwise only for
                more than one step).
        """
        parts = [self._step_to_sitk(s) for s in self.steps] or [sitk.AffineTransform(self.ndim)]
        if len(parts) == 1 and not composite:
            return parts[0]
        # ITK applies the last-added transform first.
        return sitk.CompositeTransform(parts[::-1])

    @classmethod
    def from_sitk(cls, transform: sitk.Transform) -> Transform:
        """Convert a SimpleITK transform (LPS) to a :class:`Transform`.

        Any linear transform (Affine, Euler, Similarity, Versor, Translation, Scale,
        MatrixOffset, Identity, ...) becomes one :class:`AffineStep`;
        ``DisplacementFieldTransform`` a :class:`FieldStep`; ``CompositeTransform``
        its parts in point order.

        Raises:
            TransformError: For other transform types (e.g. BSpline) or dimensions.
        """
        ndim = int(transform.GetDimension())
        if ndim not in (2, 3):
            raise TransformError(f"{ndim}D transform where 2D or 3D is expected")
        return cls(tuple(_steps_from_sitk(transform, ndim)), ndim)

    # ----------------------------------------------------------------- files

    def write(self, path: PathLike) -> Path:
        """Write atomically as an ITK transform file readable by SimpleITK and antspyx.

        ``.txt``/``.tfm``/``.mat``: one LPS ``AffineTransform`` (linear only);
        ``.h5``: a ``CompositeTransform`` of ``AffineTransform`` and
        ``DisplacementFieldTransform`` (any transform).

        Raises:
            TransformError: For a deformable transform with a linear-only suffix or an
                unsupported suffix.
        """
        path = Path(path)
        suffix = _suffix(path)
        if suffix in LINEAR_SUFFIXES:
            if not self.is_linear:
                raise TransformError(
                    f"{path.name}: a deformable transform needs an .h5 file, not {suffix}"
                )
            tx: sitk.Transform = self._affine_to_sitk(self.as_affine())
        elif suffix in COMPOSITE_SUFFIXES:
            tx = self.to_sitk(composite=True)
        else:
            raise TransformError(f"{path.name}: unsupported transform file type {suffix!r}")
        with atomic_path(path) as tmp:
            try:
                sitk.WriteTransform(tx, str(tmp))
            except RuntimeError as exc:
                raise TransformError(f"{path.name}: cannot write ({_itk_reason(exc)})") from None
            if suffix in COMPOSITE_SUFFIXES and not self.is_linear:
                _compact_h5(tmp)
        return path

    @classmethod
    def read(cls, path: PathLike, *, ndim: int | None = None) -> Transform:
        """Read an ITK transform file (``.txt``/``.tfm``/``.mat``/``.h5``) or an
        ANTs displacement-field image (``.nii``/``.nii.gz``).

        Args:
            path: The file.
            ndim: Required dimensionality (2 or 3); ``None`` accepts either.

        Raises:
            TransformError: One line, e.g. ``"xfm.h5: unreadable transform file (...)"``,
                for a missing, empty, garbage or unsupported file.
        """
        path = Path(path)
        name = path.name
        if not path.exists():
            raise TransformError(f"{name}: transform file not found")
        if not path.is_file():
            raise TransformError(f"{name}: not a regular file")
        if path.stat().st_size == 0:
            raise TransformError(f"{name}: empty transform file (0 bytes)")
        suffix = _suffix(path)
        try:
            if suffix in FIELD_SUFFIXES:
                out = cls._read_field_image(path)
            else:
                if suffix in COMPOSITE_SUFFIXES:
                    with open(path, "rb") as fh:
                        if fh.read(8) != _HDF5_MAGIC:
                            raise TransformError(
                                f"{name}: unreadable transform file (not an HDF5 file)"
                            )
                try:
                    tx = sitk.ReadTransform(str(path))
                except RuntimeError as exc:
                    raise TransformError(
                        f"{name}: unreadable transform file ({_itk_reason(exc)})"
                    ) from None
                out = cls.from_sitk(tx)
        except TransformError as exc:
            msg = str(exc)
            raise TransformError(msg if msg.startswith(f"{name}:") else f"{name}: {msg}") from None
        if ndim is not None and out.ndim != ndim:
            raise TransformError(f"{name}: {out.ndim}D transform where {ndim}D is expected")
        return out

    @classmethod
    def _read_field_image(cls, path: Path) -> Transform:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise TransformError(
                f"{path.name}: unreadable displacement field ({_itk_reason(exc)})"
            ) from None
        try:
            vectors, grid = itk_space.sitk_to_vectors(image)
        except ValueError as exc:
            raise TransformError(f"{path.name}: not a displacement field ({exc})") from None
        return cls.from_field(grid, vectors)

    @classmethod
    def from_ants_files(cls, paths: Sequence[PathLike], ndim: int) -> Transform:
        """One transform from an antspyx registration's ``fwdtransforms`` list.

        The list is in ``ants.apply_transforms`` order, in which the first file acts
        first on a fixed-space point (``[1Warp.nii.gz, 0GenericAffine.mat]`` is
        ``x -> affine(warp(x))``).

        Example:
            >>> # reg = ants.registration(fixed, moving, "SyN")
            >>> # t = Transform.from_ants_files(reg["fwdtransforms"], ndim=3)
        """
        out = cls.identity(ndim)
        for p in paths:
            out = out.then(cls.read(p, ndim=ndim))
        return out


def _linear_matrix_from_sitk(tx: sitk.Transform, ndim: int) -> Matrix4:
    """The RAS 4x4 of a linear sitk transform, probed at the origin and unit points.

    Probing covers every linear ITK type (centred or not) with one code path.
    """
    origin = np.zeros(ndim)
    t0 = np.asarray(tx.TransformPoint(tuple(origin)))
    lps = np.eye(4)
    for j in range(ndim):
        e = np.zeros(ndim)
        e[j] = 1.0
        lps[:ndim, j] = np.asarray(tx.TransformPoint(tuple(e))) - t0
    lps[:ndim, 3] = t0
    return itk_space.lps_to_ras_affine(lps)


def _steps_from_sitk(tx: sitk.Transform, ndim: int) -> list[Step]:
    if int(tx.GetDimension()) != ndim:
        raise TransformError(f"{tx.GetDimension()}D part in a {ndim}D composite transform")
    with contextlib.suppress(AttributeError, RuntimeError):
        tx = tx.Downcast()
    if isinstance(tx, sitk.CompositeTransform):
        steps: list[Step] = []
        # ITK applies the last-added transform first; ours act in list order.
        for i in reversed(range(tx.GetNumberOfTransforms())):
            steps.extend(_steps_from_sitk(tx.GetNthTransform(i), ndim))
        return steps
    if isinstance(tx, sitk.DisplacementFieldTransform):
        vectors, grid = itk_space.sitk_to_vectors(tx.GetDisplacementField())
        return [FieldStep(grid, vectors)]
    if tx.IsLinear():
        matrix = _linear_matrix_from_sitk(tx, ndim)
        if not np.all(np.isfinite(matrix)) or math.isclose(
            float(np.linalg.det(matrix[:3, :3])), 0.0, abs_tol=1e-12
        ):
            raise TransformError(f"singular or non-finite {tx.GetName()}")
        return [AffineStep(matrix)]
    raise TransformError(f"unsupported transform type {tx.GetName()}")


def _compact_h5(path: Path) -> None:
    """Rewrite an ITK ``.h5`` transform file with its large arrays compressed.

    ITK writes displacement fields uncompressed in float64 (25 MB for a 1 MB image).
    Large parameter arrays are stored gzip-compressed (with HDF5's byte shuffle), as
    float32 when that loses nothing (fields computed in float32), so ITK, SimpleITK and
    antspyx read back exactly the same numbers.
    """
    import h5py
    import numpy as np

    tmp = path.with_name(path.name + ".compact")
    try:
        with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
            dst.attrs.update(dict(src.attrs))

            def copy(name: str, obj: h5py.Group | h5py.Dataset) -> None:
                if isinstance(obj, h5py.Group):
                    dst.require_group(name).attrs.update(dict(obj.attrs))
                    return
                data = obj[()]
                large = isinstance(data, np.ndarray) and data.dtype.kind == "f" and data.size > 256
                if large and data.dtype == np.float64:
                    single = data.astype(np.float32)
                    if np.array_equal(single.astype(np.float64), data):
                        data = single
                options = {"compression": "gzip", "compression_opts": 6, "shuffle": True}
                out = dst.create_dataset(name, data=data, **(options if large else {}))
                out.attrs.update(dict(obj.attrs))

            src.visititems(copy)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
