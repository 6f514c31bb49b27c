"""Whole-body phantom: 2D DXA (bone, tissue) and 3D Dixon MR (fat, water) of synthetic subjects.

Each subject is an analytic body: soft-tissue envelopes (torso as a stack of
axial ellipses, head and feet as ellipsoids, limbs as tapered capsules), each
with skin, a subcutaneous fat layer and muscle; thoracic and abdominal cavities
with lungs, heart, liver, kidneys, bladder and textured visceral fat; and bones
with cortex and marrow: a vertebral column (bodies, discs, canal, arch,
spinous processes) along a per-subject curve with sagittal (lordosis,
kyphosis) and coronal (scoliosis) curvature, ribs, sternum, clavicles,
scapulae, pelvis (ilia, sacrum, acetabula, pubic and ischial rami), femurs,
tibiae, fibulae, humeri, forearm and hand bones and a skull. Subjects vary in
height, build, adiposity (subcutaneous, visceral and liver fat) and spine
shape.

Every shape answers two questions exactly: which points of a 3D grid lie
inside it (the MR is painted from these, later shapes over earlier ones), and
how long a line along the anterior-posterior axis runs inside it (the DXA is
the sum of these line integrals times a density). The DXA is therefore a
true projection of the same anatomy, computed on the 2D pixel grid only: no
3D volume of the whole body is ever built, and a subject takes well under a
second.

Frames (all RAS mm):

* **body frame** ``B``: x to the subject's right, y anterior, z superior;
  z = 0 at the soles. The anatomy is built here.
* **DXA world** ``D``: ``D = B - o_D``; the 2D DXA image uses the convention of
  every 2D image in mmreg: world ``(x, y, 0)`` with 2D ``x = D.x`` (left-right)
  and 2D ``y = D.z`` (inferior-superior), so ``z = 0``.
* **MR world** ``M``: ``M = R (B - o_M) + t`` with ``R`` a small rotation about
  the anterior-posterior axis (in the coronal plane), ``t`` a translation and
  ``o_M`` the body point at the MR field-of-view centre. The MR grid is
  axis-aligned in ``M`` and stored left-right flipped (LAS), as converters often do.
* **MR slice world**: the mid-coronal slice synthesised from the MR
  (:mod:`mmreg.imaging.slice_synthesis`) keeps the MR's ``x`` and ``z``:
  2D ``(x, y, 0) = (M.x, M.z, 0)``.

Because ``R`` turns about the anterior-posterior axis, the projection along it
commutes with the pose: DXA and MR slice are related by the exact 2D rigid map
``(x, y) -> [[c, s], [-s, c]] (x, y) + T`` (:attr:`WholeBodySubject.dxa_to_mr_slice`),
for the trunk. The limbs break it on purpose: each arm and leg turns by a few
degrees about its humeral or femoral head between the scans, and each shoulder
sits a few millimetres higher or lower and further in or out (patients shrug
differently on the two tables). The femoral heads and S1 are on the rigid trunk,
so the map carries them exactly; the humeral heads move with the shoulders, so
no rigid map fits all five landmarks and the best possible rigid error is not
zero, as with real scans.

Only NumPy and SciPy are used; nothing here depends on a registration engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.interpolate import PchipInterpolator

from mmreg.imaging.image import Grid, Image
from mmreg.typing import Matrix4, Points

FloatArray = npt.NDArray[np.floating]

#: Evaluation labels (DXA, MR and MR-slice label maps): ``index -> name``.
WHOLEBODY_LABELS: dict[int, str] = {0: "background", 1: "spine", 2: "pelvis", 3: "pelvic_cavity"}

#: Landmark names, in the order written to the landmark tables.
LANDMARK_NAMES: tuple[str, ...] = (
    "femoral_head_left",
    "femoral_head_right",
    "humeral_head_left",
    "humeral_head_right",
    "s1",
)


class Tissue(IntEnum):
    """Tissue classes of the MR tissue map (:attr:`WholeBodySubject.mr_tissues`).

    The first four are ordered skin < fat < muscle: envelopes are merged with a
    voxel-wise maximum, so where two body parts overlap the inner layer wins.
    """

    BACKGROUND = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    VISCERA = 4
    MEDIASTINUM = 5
    HEART = 6
    LUNG = 7
    LIVER = 8
    KIDNEY = 9
    BLADDER = 10
    BRAIN = 11
    CORTICAL = 12
    RED_MARROW = 13
    YELLOW_MARROW = 14
    DISC = 15
    CSF = 16
    RIB = 17


#: Fat and water signal per tissue (arbitrary units, subcutaneous fat ~ 1000), like a
#: T1-weighted two-point Dixon: fat bright in fat, muscle bright in water, CSF and bone
#: dark, vertebral (red) marrow a fat-water mix, long-bone (yellow) marrow mostly fat.
#: Visceral and liver fat are set per subject.
MR_SIGNAL: dict[Tissue, tuple[float, float]] = {
    Tissue.BACKGROUND: (0.0, 0.0),
    Tissue.SKIN: (250.0, 600.0),
    Tissue.FAT: (1000.0, 60.0),
    Tissue.MUSCLE: (60.0, 750.0),
    Tissue.VISCERA: (0.0, 560.0),
    Tissue.MEDIASTINUM: (80.0, 480.0),
    Tissue.HEART: (50.0, 600.0),
    Tissue.LUNG: (20.0, 50.0),
    Tissue.LIVER: (0.0, 0.0),
    Tissue.KIDNEY: (50.0, 650.0),
    Tissue.BLADDER: (10.0, 150.0),
    Tissue.BRAIN: (50.0, 600.0),
    Tissue.CORTICAL: (20.0, 30.0),
    Tissue.RED_MARROW: (560.0, 360.0),
    Tissue.YELLOW_MARROW: (850.0, 140.0),
    Tissue.DISC: (40.0, 380.0),
    Tissue.CSF: (20.0, 180.0),
    Tissue.RIB: (350.0, 150.0),
}

#: Mineral density (g/cm^3) of bone parts for the DXA bone channel.
BONE_DENSITY: dict[str, float] = {
    "cortical": 1.15,
    "red_marrow": 0.20,
    "yellow_marrow": 0.08,
    "rib": 0.45,
}
#: Soft-tissue densities (g/cm^3) for the DXA tissue channel.
SOFT_DENSITY: dict[str, float] = {"lean": 1.05, "fat": 0.92, "lung": 0.30}

#: Body proportions of a 1700 mm reference subject; fractions are of the height.
_REF_HEIGHT = 1700.0
#: Torso muscle envelope: height fraction, half-width and half-depth (mm, reference subject).
_TORSO = np.array(
    [
        (0.445, 15, 15),
        (0.455, 70, 55),
        (0.47, 112, 75),
        (0.49, 140, 88),
        (0.52, 150, 92),  # hips
        (0.56, 140, 88),
        (0.60, 125, 82),  # waist
        (0.64, 128, 85),
        (0.68, 138, 92),
        (0.72, 145, 98),  # chest
        (0.76, 148, 98),
        (0.79, 148, 92),
        (0.81, 135, 80),  # shoulders
        (0.825, 90, 60),
        (0.84, 55, 47),  # neck
        (0.87, 50, 45),
        (0.885, 40, 34),
    ]
)
_SKIN = 2.0  # mm


# ============================================================================ settings


@dataclass(frozen=True)
class WholeBodySettings:
    """How a whole-body subject is generated (anatomy is drawn from the seed).

    Attributes:
        mr_spacing_mm: Isotropic voxel size of the MR volumes.
        mr_size: MR field of view in voxels, ``(left-right, superior-inferior)``;
            the anterior-posterior size follows the subject's depth. The default
            501 x 224 (SI x LR) at 2.2 mm is the UK Biobank neck-to-knee Dixon.
        mr_slice_factor: The MR is acquired with slices this many voxels thick
            (along superior-inferior) and resampled to isotropic, like a
            multi-slice Dixon; 1 renders at full resolution (slower).
        dxa_spacing_mm: Pixel size of the DXA images.
        dxa_size: DXA field of view in pixels, ``(left-right, superior-inferior)``
            (the paper's 800 x 300 region, head to feet).
        height_range_mm: Subject heights are drawn uniformly from this range.
        max_rotation_deg: Largest in-plane (coronal) rotation of the MR relative
            to the DXA; the angle is drawn between half of this and this.
        large_rotations: Draw the in-plane rotation from the full circle instead
            (``max_rotation_deg`` is then ignored; a robustness test, not anatomy).
        max_translation_mm: Largest translation of the MR relative to the DXA
            along each axis.
        max_limb_deg: Largest change of each arm's and leg's abduction between
            the DXA and the MR.
        max_shoulder_mm: Largest change of each shoulder's (humeral head's)
            height between the DXA and the MR; half of it left-right.
        spine_curvature: Scale of the sagittal spine curvature (lordosis,
            kyphosis); 0 gives a spine straight in the sagittal plane.
        coronal_curvature: Scale of the coronal curvature (scoliosis); 0: none.
        spine: Build the vertebral column (False: a subject without one, nor the
            ribs it would carry, to test what depends on finding it).
        mr_noise: MR noise sigma relative to the fat signal (magnitude noise).
        mr_bias: Roughly the largest log-amplitude of the smooth MR bias field.
        dxa_noise: DXA noise sigma relative to a typical trunk value.
    """

    mr_spacing_mm: float = 2.2
    mr_size: tuple[int, int] = (224, 501)
    mr_slice_factor: int = 2
    dxa_spacing_mm: float = 2.2
    dxa_size: tuple[int, int] = (300, 800)
    height_range_mm: tuple[float, float] = (1550.0, 1740.0)
    max_rotation_deg: float = 4.0
    large_rotations: bool = False
    max_translation_mm: float = 20.0
    max_limb_deg: float = 4.0
    max_shoulder_mm: float = 10.0
    spine_curvature: float = 1.0
    coronal_curvature: float = 1.0
    spine: bool = True
    mr_noise: float = 0.02
    mr_bias: float = 0.2
    dxa_noise: float = 0.01

    def __post_init__(self) -> None:
        if self.mr_slice_factor < 1:
            raise ValueError(f"mr_slice_factor must be >= 1, got {self.mr_slice_factor}")
        if min(self.mr_size) < 8 or min(self.dxa_size) < 8:
            raise ValueError("mr_size and dxa_size need at least 8 voxels per axis")
        if self.mr_spacing_mm <= 0 or self.dxa_spacing_mm <= 0:
            raise ValueError("spacings must be positive")


@dataclass(frozen=True)
class WholeBodySubject:
    """One synthetic subject: DXA and Dixon MR, labels, landmarks and the true maps.

    Attributes:
        seed: The seed it was generated from.
        dxa_bone: 2D DXA bone channel (areal bone mineral density, g/cm^2).
        dxa_tissue: 2D DXA soft-tissue channel (areal density, g/cm^2).
        mr_fat: 3D Dixon fat image.
        mr_water: 3D Dixon water image (same grid as ``mr_fat``).
        dxa_labels: Evaluation labels on the DXA grid (:data:`WHOLEBODY_LABELS`).
        mr_labels: Evaluation labels on the MR grid.
        mr_tissues: Tissue classes (:class:`Tissue`, uint8) on the MR grid
            (nearest from the acquired slices).
        landmarks_dxa: ``name -> (x, y, 0)`` in the 2D DXA world.
        landmarks_mr: ``name -> (x, y, z)`` in the MR world.
        dxa_to_mr: 4x4 map from the 3D DXA frame (``D.x, B.y, D.z``) to MR world.
        dxa_to_mr_slice: 4x4 2D rigid map from the DXA world to the MR slice world
            (fixed DXA point -> moving MR-slice point, the ITK convention).
        spine_path_mr: ``(N, 3)`` centre line of the vertebral bodies (S1 up to
            C2, 1 mm steps) in MR world; empty without a spine.
        metadata: JSON-serialisable generation parameters.
    """

    seed: int
    dxa_bone: Image
    dxa_tissue: Image
    mr_fat: Image
    mr_water: Image
    dxa_labels: Image
    mr_labels: Image
    mr_tissues: Image
    landmarks_dxa: dict[str, npt.NDArray[np.float64]]
    landmarks_mr: dict[str, npt.NDArray[np.float64]]
    dxa_to_mr: Matrix4
    dxa_to_mr_slice: Matrix4
    spine_path_mr: Points
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def landmarks_mr_slice(self) -> dict[str, npt.NDArray[np.float64]]:
        """Landmarks in the 2D MR-slice world: ``(M.x, M.z, 0)``."""
        return {k: np.array([v[0], v[2], 0.0]) for k, v in self.landmarks_mr.items()}

    def dxa_to_mr_slice_points(self, points: npt.ArrayLike) -> Points:
        """Map 2D DXA world points ``(N, 3)`` (z = 0) to the MR-slice world."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        return pts @ self.dxa_to_mr_slice[:3, :3].T + self.dxa_to_mr_slice[:3, 3]


# ============================================================================ shapes
#
# Shapes are evaluated on broadcast coordinate arrays: in 3D ``x`` and ``z`` have shape
# (a, 1, c) and ``y`` (1, b, 1) (the MR pose rotates about y, so x and z of the body frame
# depend on two voxel axes only); in 2D (DXA) ``x`` and ``z`` are (a, c) and the shape
# returns its chord along y.


class Shape(Protocol):
    """A solid in the body frame."""

    def bbox(self) -> npt.NDArray[np.float64]:
        """``(2, 3)``: lowest and highest corner (mm)."""
        ...

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        """Which points lie inside."""
        ...

    def chord(self, x: FloatArray, z: FloatArray) -> FloatArray:
        """Length (mm) of the line through ``(x, ., z)`` along y inside the solid."""
        ...


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid with centre, semi-axes and principal axes (columns of ``axes``)."""

    centre: npt.NDArray[np.float64]
    radii: npt.NDArray[np.float64]
    axes: npt.NDArray[np.float64] = field(default_factory=lambda: np.eye(3))

    def _form(self) -> npt.NDArray[np.float64]:
        return self.axes @ np.diag(1.0 / np.square(self.radii)) @ self.axes.T

    def grown(self, mm: float) -> Ellipsoid:
        return Ellipsoid(self.centre, np.maximum(self.radii + mm, 0.5), self.axes)

    def bbox(self) -> npt.NDArray[np.float64]:
        half = np.sqrt(np.square(self.axes) @ np.square(self.radii))
        return np.stack([self.centre - half, self.centre + half])

    def _parts(self, x: FloatArray, z: FloatArray) -> tuple[FloatArray, FloatArray, float]:
        a = self._form()
        dx, dz = x - self.centre[0], z - self.centre[2]
        quad = a[0, 0] * dx * dx + 2 * a[0, 2] * dx * dz + a[2, 2] * dz * dz
        lin = a[0, 1] * dx + a[1, 2] * dz
        return quad, lin, float(a[1, 1])

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        quad, lin, a11 = self._parts(x, z)
        t = y - self.centre[1]
        return (quad - 1.0) + t * (2.0 * lin + a11 * t) <= 0.0

    def chord(self, x: FloatArray, z: FloatArray) -> FloatArray:
        quad, lin, a11 = self._parts(x, z)
        disc = lin * lin - a11 * (quad - 1.0)
        return 2.0 * np.sqrt(np.maximum(disc, 0.0)) / a11


@dataclass(frozen=True)
class Capsule:
    """A tapered capsule around the segment ``a``-``b``, which lies in a coronal plane."""

    a: npt.NDArray[np.float64]
    b: npt.NDArray[np.float64]
    ra: float
    rb: float

    def __post_init__(self) -> None:
        # Chords along y are exact only for an axis at constant y.
        if abs(self.a[1] - self.b[1]) > 1e-9:
            raise ValueError("capsule axis must lie in a coronal plane (equal y)")

    def grown(self, mm: float) -> Capsule:
        return Capsule(self.a, self.b, max(self.ra + mm, 0.5), max(self.rb + mm, 0.5))

    def bbox(self) -> npt.NDArray[np.float64]:
        r = max(self.ra, self.rb)
        return np.stack([np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r])

    def _radial(self, x: FloatArray, z: FloatArray) -> tuple[FloatArray, FloatArray]:
        """In-plane squared distance to the axis and the radius there."""
        ex, ez = self.b[0] - self.a[0], self.b[2] - self.a[2]
        length2 = max(ex * ex + ez * ez, 1e-12)
        dx, dz = x - self.a[0], z - self.a[2]
        t = np.clip((dx * ex + dz * ez) / length2, 0.0, 1.0)
        px, pz = dx - t * ex, dz - t * ez
        return px * px + pz * pz, self.ra + t * (self.rb - self.ra)

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        d2, r = self._radial(x, z)
        dy = y - self.a[1]
        return dy * dy <= r * r - d2

    def chord(self, x: FloatArray, z: FloatArray) -> FloatArray:
        d2, r = self._radial(x, z)
        return 2.0 * np.sqrt(np.maximum(r * r - d2, 0.0))


@dataclass(frozen=True)
class AxialStack:
    """A solid whose axial cross-sections are ellipses: centre and semi-axes vary with z.

    The profiles are tabulated on ``zs`` (increasing) and linearly interpolated.
    """

    zs: npt.NDArray[np.float64]
    xc: npt.NDArray[np.float64]
    yc: npt.NDArray[np.float64]
    ax: npt.NDArray[np.float64]
    by: npt.NDArray[np.float64]

    def grown(self, mm: float) -> AxialStack:
        return AxialStack(
            self.zs, self.xc, self.yc, np.maximum(self.ax + mm, 0.5), np.maximum(self.by + mm, 0.5)
        )

    def bbox(self) -> npt.NDArray[np.float64]:
        lo = [np.min(self.xc - self.ax), np.min(self.yc - self.by), self.zs[0]]
        hi = [np.max(self.xc + self.ax), np.max(self.yc + self.by), self.zs[-1]]
        return np.array([lo, hi], dtype=np.float64)

    def _section(self, z: FloatArray) -> tuple[FloatArray, ...]:
        def at(v: np.ndarray) -> FloatArray:
            return np.interp(z, self.zs, v).astype(z.dtype, copy=False)

        out_of_range = (z < self.zs[0]) | (z > self.zs[-1])
        return at(self.xc), at(self.yc), at(self.ax), at(self.by), out_of_range

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        xc, yc, ax, by, out = self._section(z)
        u = (x - xc) / ax
        rhs = by * by * (1.0 - u * u)
        rhs[out] = -1.0
        dy = y - yc
        return dy * dy <= rhs

    def chord(self, x: FloatArray, z: FloatArray) -> FloatArray:
        xc, _, ax, by, out = self._section(z)
        u = (x - xc) / ax
        c = 2.0 * by * np.sqrt(np.maximum(1.0 - u * u, 0.0))
        c[out] = 0.0
        return c


@dataclass(frozen=True)
class Clipped:
    """A shape cut by planes containing the y axis (so chords stay exact)."""

    shape: Shape
    xlim: tuple[float, float] = (-math.inf, math.inf)
    zlim: tuple[float, float] = (-math.inf, math.inf)

    def _keep(self, x: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        return (
            (x >= self.xlim[0]) & (x <= self.xlim[1]) & (z >= self.zlim[0]) & (z <= self.zlim[1])
        )

    def bbox(self) -> npt.NDArray[np.float64]:
        box = self.shape.bbox().copy()
        box[0, 0], box[1, 0] = max(box[0, 0], self.xlim[0]), min(box[1, 0], self.xlim[1])
        box[0, 2], box[1, 2] = max(box[0, 2], self.zlim[0]), min(box[1, 2], self.zlim[1])
        return box

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        return self.shape.inside(x, y, z) & self._keep(x, z)

    def chord(self, x: FloatArray, z: FloatArray) -> FloatArray:
        return self.shape.chord(x, z) * self._keep(x, z)


@dataclass(frozen=True)
class Prism:
    """An elliptic cylinder along y: ellipse in (x, z), cut at ``ylo`` and ``yhi``."""

    x0: float
    z0: float
    ax: float
    az: float
    ylo: float
    yhi: float

    def _in2d(self, x: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        return ((x - self.x0) / self.ax) ** 2 + ((z - self.z0) / self.az) ** 2 <= 1.0

    def bbox(self) -> npt.NDArray[np.float64]:
        return np.array(
            [
                [self.x0 - self.ax, self.ylo, self.z0 - self.az],
                [self.x0 + self.ax, self.yhi, self.z0 + self.az],
            ]
        )

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        return self._in2d(x, z) & ((y >= self.ylo) & (y <= self.yhi))

    def chord(self, x: FloatArray, z: FloatArray) -> FloatArray:
        return self._in2d(x, z) * (self.yhi - self.ylo)


@dataclass(frozen=True)
class RibCage:
    """Twelve pairs of ribs on an elliptic cylinder that follows the chest wall.

    Rib ``i`` leaves the spine at ``z_top - i * pitch`` and runs round the chest
    (angle ``psi`` from 0 at the back to pi at the front), dropping by
    ``drop * (1 - cos psi) / 2``; its bony part ends at ``psi_end[i]``. The
    cross-section is an ellipse of radial half-thickness ``tau`` and vertical
    half-height ``h``.
    """

    wall: AxialStack  # centre line of the ribs: section centre and semi-axes vs z
    z_top: float
    pitch: float
    drop: float
    psi_start: float
    psi_end: npt.NDArray[np.float64]
    tau: float
    h: float
    cap: float  # longest chord counted where the line runs along a rib

    def bbox(self) -> npt.NDArray[np.float64]:
        box = self.wall.bbox()
        box[0, :2] -= self.tau
        box[1, :2] += self.tau
        box[0, 2] = self.z_top - (len(self.psi_end) - 1) * self.pitch - self.drop - self.h
        box[1, 2] = self.z_top + self.h
        return box

    def _which(self, psi: FloatArray, z: FloatArray) -> tuple[npt.NDArray[np.bool_], FloatArray]:
        """Nearest rib at angle ``psi`` and height ``z``: valid mask and z offset."""
        fall = 0.5 * self.drop * (1.0 - np.cos(psi))
        k = np.rint((self.z_top - fall - z) / self.pitch)
        n = len(self.psi_end)
        kk = np.clip(k, 0, n - 1).astype(np.intp)
        valid = (k >= 0) & (k <= n - 1) & (psi >= self.psi_start) & (psi <= self.psi_end[kk])
        dz = z - (self.z_top - kk * self.pitch - fall)
        return valid, dz

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        xc, yc, ax, by, _ = self.wall._section(z)
        u = (x - xc) / ax
        v = (y - yc) / by
        rho = np.sqrt(u * u + v * v)
        psi = np.arctan2(np.abs(u), -v)
        radius = np.sqrt((ax * np.sin(psi)) ** 2 + (by * np.cos(psi)) ** 2)
        dr = (rho - 1.0) * radius
        valid, dz = self._which(psi, np.broadcast_to(z, psi.shape))
        return valid & ((dr / self.tau) ** 2 + (dz / self.h) ** 2 <= 1.0)

    def chord(self, x: FloatArray, z: FloatArray) -> FloatArray:
        xc, _, ax, by, _ = self.wall._section(z)
        u = np.minimum(np.abs(x - xc) / ax, 1.0)
        inside = np.abs(x - xc) <= ax + self.tau
        out = np.zeros_like(x)
        psi_back = np.arcsin(u)
        for psi in (psi_back, np.pi - psi_back):
            s, c = np.sin(psi), np.cos(psi)
            # y-component of the wall normal: the line crosses a shell of thickness 2 tau
            # over 2 tau / |n_y|, capped where it runs along the rib.
            ny = np.abs(c) / by / np.sqrt((s / ax) ** 2 + (c / by) ** 2)
            length = np.minimum(2.0 * self.tau / np.maximum(ny, 1e-6), self.cap)
            valid, dz = self._which(psi, z)
            profile = np.sqrt(np.maximum(1.0 - (dz / self.h) ** 2, 0.0))
            out += length * profile * (valid & inside)
        return out


# ============================================================================ anatomy


@dataclass(frozen=True)
class _Bone:
    outer: Shape
    inner: Shape | None
    marrow: Tissue | None  # tissue of the inner part (CSF: spinal canal); None: hollow
    density: float  # mineral density of the inner part (g/cm^3)
    group: str  # chords within a group combine by max (parts of one bone), across by sum
    structure: int = 0  # evaluation label (WHOLEBODY_LABELS), 0 for none
    cortex: Tissue = Tissue.CORTICAL
    cortex_density: float = BONE_DENSITY["cortical"]
    discs: bool = False  # interrupted at the intervertebral discs


@dataclass(frozen=True)
class _Envelope:
    outer: Shape  # skin surface
    skin: Shape  # inner surface of the skin
    muscle: Shape  # inner surface of the subcutaneous fat


@dataclass(frozen=True)
class _Organ:
    shape: Shape
    tissue: Tissue
    into: tuple[Tissue, ...]  # painted only over these tissues


@dataclass(frozen=True)
class _Scene:
    envelopes: list[_Envelope]
    cavities: list[_Organ]
    organs: list[_Organ]
    bones: list[_Bone]
    lungs: list[Shape]
    visceral: Shape  # abdominal cavity (visceral fat lives here)
    cavity: Prism  # pelvic cavity evaluation region
    body_lean: Shape  # torso muscle envelope (the cavity label stays inside it)
    disc_mask: Callable[[FloatArray], npt.NDArray[np.bool_]]


def _pchip(z_nodes: np.ndarray, values: np.ndarray, z: np.ndarray) -> np.ndarray:
    return PchipInterpolator(z_nodes, values, extrapolate=False)(
        np.clip(z, z_nodes[0], z_nodes[-1])
    )


def _bump(z: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((z - centre) / width) ** 2)


def _rot_y(deg: float) -> npt.NDArray[np.float64]:
    """Rotation about the anterior-posterior axis (x towards -z for positive angles)."""
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _axes_coronal(down: np.ndarray, lateral: np.ndarray) -> np.ndarray:
    """Principal axes (columns) of a limb part: lateral, anterior, along the limb."""
    return np.stack([lateral, np.array([0.0, 1.0, 0.0]), -down], axis=1)


def _p(*v: float) -> npt.NDArray[np.float64]:
    return np.array(v, dtype=np.float64)


@dataclass(frozen=True)
class _Anatomy:
    """Per-subject anatomy: everything the pose does not change."""

    height: float
    build: float
    adiposity: float
    fat_mm: float  # subcutaneous fat thickness scale
    visceral_fat: float  # fat fraction of the abdominal viscera (0-1)
    liver_fat: float
    spine_amplitudes: dict[str, float]
    scoliosis: tuple[float, float]
    drop: float
    tissue_jitter: npt.NDArray[np.float64]  # (n_tissues, 2) multiplicative


class _Body:
    """Profiles and key points of one subject (body frame) and the shapes built from them."""

    def __init__(self, anat: _Anatomy, settings: WholeBodySettings) -> None:
        self.anat = anat
        self.settings = settings
        h = anat.height
        self.s = s = h / _REF_HEIGHT
        self.w = w = anat.build
        self.zs = np.arange(0.0, h + 2.0, 2.0)
        zs = self.zs
        fz = zs / h

        # Torso muscle envelope (lean): the bottom rounds off into the buttocks (the
        # thighs carry on below), the top narrows into the neck.
        nodes, a_ref, b_ref = _TORSO.T
        bulge = 75.0 * max(anat.visceral_fat - 0.2, 0.0) * _bump(fz, 0.585, 0.045)
        self.a_lean = _pchip(nodes, a_ref, fz) * s * w
        self.b_lean = (_pchip(nodes, b_ref, fz) + bulge) * s * math.sqrt(w)
        fat_nodes = np.array([0.455, 0.52, 0.58, 0.64, 0.70, 0.78, 0.81, 0.83, 0.885])
        fat_prof = np.array([1.3, 1.3, 1.25, 1.0, 0.8, 0.6, 0.5, 0.3, 0.25])
        # Fat thins to nothing where the torso closes at the bottom.
        self.fat = (
            anat.fat_mm * _pchip(fat_nodes, fat_prof, fz) * np.clip((fz - 0.445) / 0.01, 0, 1)
        )
        self.z_torso = (0.445 * h, 0.885 * h)

        # Spine: S1 to C2, lumbar 30 %, thoracic 50 %, cervical 20 % of its length.
        self.z_hip = 0.525 * h
        self.z_s1 = self.z_hip + 0.038 * h
        self.z_c2 = 0.905 * h
        length = self.z_c2 - self.z_s1
        self.levels = self._levels(length)
        u = np.clip((zs - self.z_s1) / length, 0.0, 1.0)
        self.u = u
        r_nodes = np.array([0.0, 0.3, 0.55, 0.8, 0.85, 1.0])
        self.rx = _pchip(r_nodes, np.array([25, 22, 17, 13, 11, 10.0]), u) * s * w**0.3
        self.ry = _pchip(r_nodes, np.array([17, 16, 14, 10, 8, 8.0]), u) * s * w**0.3
        self.rc = _pchip(r_nodes, np.array([8.5, 8.5, 7.0, 7.0, 8.0, 8.0]), u) * s
        amp = anat.spine_amplitudes
        curv = (
            amp["lordosis"] * _bump(zs, self.z_s1 + 0.5 * 0.3 * length, 0.35 * 0.3 * length)
            - amp["kyphosis"] * _bump(zs, self.z_s1 + 0.55 * length, 0.35 * 0.5 * length)
            + amp["cervical"] * _bump(zs, self.z_s1 + 0.9 * length, 0.4 * 0.2 * length)
        )
        self.ys = 150.0 * s + settings.spine_curvature * curv
        b1, b2 = anat.scoliosis
        self.xs = settings.coronal_curvature * (
            b1 * np.sin(np.pi * u) + b2 * np.sin(2 * np.pi * u)
        )
        # Depth of the back muscles behind the vertebral bodies.
        self.pd = pd = (
            _pchip(
                np.array([0.5, 0.6, 0.67, 0.75, 0.82, 0.88]),
                np.array([50, 48, 42, 36, 34, 30.0]),
                fz,
            )
            * s
        )
        # The back follows the spine: spine depth below the skin = body + muscles + fat.
        self.y_back = self.ys - (self.ry + pd + 0.8 * self.fat + _SKIN)
        self.b_out = self.b_lean + self.fat + _SKIN
        self.a_out = self.a_lean + self.fat + _SKIN
        self.yc = self.y_back + self.b_out

        # Key points.
        self.hip_x = 0.05 * h * math.sqrt(w)
        self.y_hip = self.at(self.yc, self.z_hip) + 5.0 * s
        self.sh_x = 0.108 * h * w + 0.5 * self.at(self.fat, 0.8 * h)
        self.z_sh = 0.805 * h
        self.y_arm = self.at(self.yc, self.z_sh) - 15.0 * s
        self.r_fh = 23.0 * s * w**0.3
        self.s1 = _p(self.at(self.xs, self.z_s1), self.at(self.ys, self.z_s1), self.z_s1)

    # -------------------------------------------------------------- helpers

    def at(self, profile: np.ndarray, z: float) -> float:
        return float(np.interp(z, self.zs, profile))

    def _levels(self, length: float) -> list[tuple[float, float, float]]:
        """``(z_bottom, pitch, disc_fraction)`` per vertebral level, S1 upwards."""
        out = []
        z = self.z_s1
        for n, frac, disc in ((5, 0.3, 0.26), (12, 0.5, 0.2), (6, 0.2, 0.22)):
            pitch = frac * length / n
            for _ in range(n):
                out.append((z, pitch, disc))
                z += pitch
        return out

    def disc_mask(self, z: FloatArray) -> npt.NDArray[np.bool_]:
        """True within an intervertebral disc (the bottom part of each level)."""
        bottoms = np.array([lv[0] for lv in self.levels])
        pitch = np.array([lv[1] for lv in self.levels])
        disc = np.array([lv[2] for lv in self.levels])
        k = np.clip(np.searchsorted(bottoms, z, side="right") - 1, 0, len(bottoms) - 1)
        frac = (z - bottoms[k]) / pitch[k]
        return (frac >= 0) & (frac < disc[k]) & (z <= self.z_c2)

    def _stack(
        self, zlo: float, zhi: float, xc: np.ndarray, yc: np.ndarray, a: np.ndarray, b: np.ndarray
    ) -> AxialStack:
        sel = (self.zs >= zlo) & (self.zs <= zhi)
        zs = np.concatenate([[zlo], self.zs[sel], [zhi]])

        def cut(v: np.ndarray) -> np.ndarray:
            return np.interp(zs, self.zs, v)

        return AxialStack(zs, cut(xc), cut(yc), cut(a), cut(b))

    # -------------------------------------------------------------- scene

    def scene(self, pose: dict[str, float]) -> _Scene:
        """All shapes for one pose (limb abduction angles in degrees)."""
        h, s, w = self.anat.height, self.s, self.w
        zero = np.zeros_like(self.zs)
        envelopes: list[_Envelope] = []
        bones: list[_Bone] = []
        organs: list[_Organ] = []

        # ---- trunk and head envelopes
        zlo, zhi = self.z_torso
        envelopes.append(
            _Envelope(
                self._stack(zlo, zhi, zero, self.yc, self.a_out, self.b_out),
                self._stack(zlo, zhi, zero, self.yc, self.a_out - _SKIN, self.b_out - _SKIN),
                self._stack(zlo, zhi, zero, self.yc, self.a_lean, self.b_lean),
            )
        )
        head_c = _p(0.0, self.at(self.yc, 0.875 * h) + 5.0 * s, 0.932 * h)
        head = Ellipsoid(head_c, np.array([76.0 * w**0.3, 96.0, 112.0]) * s)
        envelopes.append(_Envelope(head.grown(4.0), head.grown(2.0), head))
        bones.append(_Bone(head.grown(-3.0), head.grown(-10.0), Tissue.BRAIN, 0.0, "skull"))

        # ---- cavities and organs
        z_d = 0.665 * h
        front = self.yc + self.b_lean
        chest_c = self._stack(
            z_d, 0.815 * h, zero, self.yc, self.a_lean - 12 * s, self.b_lean - 12 * s
        )
        post = self.ys + 0.3 * self.ry  # abdominal viscera lie in front of the spine
        abdo = self._stack(
            0.50 * h,
            z_d + 10 * s,
            zero,
            0.5 * (front + post),
            self.a_lean - 15 * s,
            np.maximum(0.5 * (front - post) - 8 * s, 10.0),
        )
        cavities = [
            _Organ(chest_c, Tissue.MEDIASTINUM, (Tissue.MUSCLE,)),
            _Organ(abdo, Tissue.VISCERA, (Tissue.MUSCLE,)),
        ]
        soft = (Tissue.VISCERA, Tissue.MEDIASTINUM, Tissue.MUSCLE)
        zk = self.z_s1 + 0.26 * (self.z_c2 - self.z_s1)
        lungs = []
        for side in (1.0, -1.0):
            lung = Ellipsoid(
                _p(side * 80 * s * w, self.at(self.yc, 0.74 * h) - 8 * s, 0.742 * h),
                np.array([58 * w, 75, 0.077 * _REF_HEIGHT]) * s,
            )
            lungs.append(lung)
            organs.append(_Organ(lung, Tissue.LUNG, (Tissue.MEDIASTINUM,)))
            kid = Ellipsoid(
                _p(
                    side * (self.at(self.rx, zk) + 45 * s),
                    self.at(self.ys, zk) + 12 * s,
                    zk - (12 * s if side > 0 else 0.0),
                ),
                np.array([28.0, 24.0, 55.0]) * s,
            )
            organs.append(_Organ(kid, Tissue.KIDNEY, soft))
            y_ps = self.at(self.ys, zk) + 8 * s
            psoas = Capsule(
                _p(side * (self.at(self.rx, zk + 40 * s) + 10 * s), y_ps, zk + 40 * s),
                _p(side * (self.hip_x - 22 * s), y_ps, self.z_hip + 15 * s),
                16 * s,
                26 * s,
            )
            organs.append(_Organ(psoas, Tissue.MUSCLE, soft))
        heart = Ellipsoid(
            _p(-22 * s, self.at(self.yc, 0.70 * h) + 22 * s, 0.705 * h),
            np.array([55.0, 46.0, 62.0]) * s,
            _rot_y(-25.0),
        )
        organs.append(_Organ(heart, Tissue.HEART, (Tissue.MEDIASTINUM, Tissue.LUNG)))
        liver = Ellipsoid(
            _p(45 * s * w, self.at(self.yc, 0.655 * h) + 5 * s, 0.652 * h),
            np.array([100 * w, 72, 62]) * s,
            _rot_y(12.0),
        )
        organs.append(
            _Organ(liver, Tissue.LIVER, (Tissue.VISCERA, Tissue.MEDIASTINUM, Tissue.LUNG))
        )
        bladder = Ellipsoid(
            _p(0.0, self.y_hip + 28 * s, self.z_hip - 2 * s), np.array([36.0, 28.0, 28.0]) * s
        )
        organs.append(_Organ(bladder, Tissue.BLADDER, soft))

        # ---- spine
        if self.settings.spine:
            bones.extend(self._spine())
        # ---- thorax bones (no ribs without a spine to carry them)
        bones.extend(self._thorax(ribs=self.settings.spine))
        # ---- pelvis
        bones.extend(self._pelvis())
        cavity = Prism(
            float(self.s1[0]),
            self.z_hip + 12 * s,
            self.hip_x - 25 * s,
            36 * s,
            float(self.s1[1]) - 20 * s,
            self.y_hip + 35 * s,
        )
        # ---- limbs
        for side, name in ((1.0, "right"), (-1.0, "left")):
            env, limb_bones = self._leg(side, pose[f"leg_{name}"])
            envelopes.extend(env)
            bones.extend(limb_bones)
            env, limb_bones = self._arm(
                side, pose[f"arm_{name}"], pose[f"elbow_{name}"], self.shoulder(side, pose)
            )
            envelopes.extend(env)
            bones.extend(limb_bones)
        return _Scene(
            envelopes=envelopes,
            cavities=cavities,
            organs=organs,
            bones=bones,
            lungs=lungs,
            visceral=abdo,
            cavity=cavity,
            body_lean=envelopes[0].muscle,
            disc_mask=self.disc_mask,
        )

    def _spine(self) -> list[_Bone]:
        s = self.s
        zlo, zhi = self.z_s1, self.z_c2
        body = self._stack(zlo, zhi, self.xs, self.ys, self.rx, self.ry)
        marrow = body.grown(-2.0 * s)
        canal_y = self.ys - self.ry - 2 * s - self.rc
        canal = self._stack(zlo, zhi, self.xs, canal_y, 1.1 * self.rc, self.rc)
        arch = self._stack(zlo, zhi, self.xs, canal_y, 1.1 * self.rc + 6 * s, self.rc + 5 * s)
        # Spinous processes: from the arch back to 6 mm under the back muscles' surface.
        arch_back = canal_y - self.rc - 5 * s
        length = np.maximum(arch_back - (self.ys - self.ry - self.pd + 6 * s), 4 * s)
        spinous = self._stack(
            zlo,
            zhi,
            self.xs,
            arch_back - 0.5 * length + 2 * s,
            np.full_like(self.zs, 4.5 * s),
            0.5 * length + 2 * s,
        )
        red = BONE_DENSITY["red_marrow"]
        return [
            _Bone(arch, canal, Tissue.CSF, 0.0, "spine_arch", structure=1),
            _Bone(spinous, None, Tissue.CORTICAL, 0.0, "spine_spinous", structure=1, discs=True),
            _Bone(body, marrow, Tissue.RED_MARROW, red, "spine_body", structure=1, discs=True),
        ]

    def _thorax(self, *, ribs: bool = True) -> list[_Bone]:
        h, s, w = self.anat.height, self.s, self.w
        zero = np.zeros_like(self.zs)
        bones: list[_Bone] = []
        yellow = BONE_DENSITY["yellow_marrow"]
        # Ribs: heads at the thoracic levels (T1..T12), on the chest wall 9 mm inside the muscle.
        thoracic = self.levels[5:17]
        z_top = thoracic[-1][0] + 0.5 * thoracic[-1][1]
        pitch = thoracic[0][1]
        wall = self._stack(
            z_top - 12 * pitch - self.anat.drop - 20 * s,
            z_top + 20 * s,
            zero,
            self.yc,
            self.a_lean - 9 * s,
            self.b_lean - 9 * s,
        )
        psi_end = np.array([0.78] * 7 + [0.68, 0.62, 0.56, 0.42, 0.36]) * np.pi
        z_mid = z_top - 6 * pitch
        wall_a = self.at(self.a_lean, z_mid) - 9 * s
        psi_start = math.asin(min(0.9, (self.at(self.rx, z_mid) + 6 * s) / wall_a))
        cage = RibCage(
            wall, z_top, pitch, self.anat.drop, psi_start, psi_end, 4.5 * s, 6.0 * s, 40.0 * s
        )
        if ribs:
            bones.append(
                _Bone(
                    cage,
                    None,
                    Tissue.RIB,
                    0.0,
                    "ribs",
                    cortex=Tissue.RIB,
                    cortex_density=BONE_DENSITY["rib"],
                )
            )
        # Sternum: a flat bar behind the front of the chest.
        zs0, zs1 = 0.705 * h, 0.805 * h
        y_st = self.yc + self.b_lean - 10 * s
        st = self._stack(
            zs0, zs1, zero, y_st, np.full_like(zero, 15 * s), np.full_like(zero, 6 * s)
        )
        bones.append(_Bone(st, st.grown(-2.5 * s), Tissue.RED_MARROW, 0.2, "sternum"))
        for side in (1.0, -1.0):
            z_cl = 0.815 * h
            y_cl = self.at(self.yc, 0.80 * h) + 30 * s
            clav = Capsule(
                _p(side * 22 * s, y_cl, z_cl),
                _p(side * (self.sh_x - 8 * s), y_cl, z_cl + 12 * s),
                7.5 * s,
                7.5 * s,
            )
            bones.append(
                _Bone(
                    clav,
                    clav.grown(-3.5 * s),
                    Tissue.YELLOW_MARROW,
                    yellow,
                    f"clavicle_{side:+.0f}",
                )
            )
            # The blade lies on the back of the rib cage, tangent to the chest wall.
            z_sc = 0.765 * h
            wall_a = self.at(self.a_lean, z_sc) - 9 * s
            wall_b = self.at(self.b_lean, z_sc) - 9 * s
            yc = self.at(self.yc, z_sc)
            x0 = side * min(0.055 * h * w, 0.8 * wall_a)
            y_wall = yc - wall_b * math.sqrt(1.0 - (x0 / wall_a) ** 2)
            normal = np.array([x0 / wall_a**2, (y_wall - yc) / wall_b**2, 0.0])
            normal /= np.linalg.norm(normal)
            along = np.array([-normal[1], normal[0], 0.0])
            along *= np.sign(along[0] * side)
            scap_axes = np.stack([along, normal, np.array([0.0, 0.0, 1.0])], axis=1)
            scap = Ellipsoid(
                _p(x0, y_wall, z_sc) + 14 * s * normal, np.array([45.0, 5.0, 65.0]) * s, scap_axes
            )
            bones.append(
                _Bone(
                    scap,
                    scap.grown(-2.0 * s),
                    Tissue.YELLOW_MARROW,
                    yellow,
                    f"scapula_{side:+.0f}",
                )
            )
        return bones

    def _pelvis(self) -> list[_Bone]:
        s, w = self.s, self.w
        hx, yh, zh = self.hip_x, self.y_hip, self.z_hip
        yellow = BONE_DENSITY["yellow_marrow"]
        bones: list[_Bone] = []
        # Sacrum: wide alae at S1 on a wedge tapering down to the coccyx (an inverted
        # triangle in the AP view).
        y_sac = self.s1[1] - 14 * s
        alae = Ellipsoid(
            _p(self.s1[0], y_sac, self.z_s1 - 22 * s), np.array([50.0 * w**0.3, 24.0, 24.0]) * s
        )
        wedge = Capsule(
            _p(self.s1[0], y_sac, self.z_s1 - 20 * s),
            _p(self.s1[0], y_sac, self.z_s1 - 100 * s),
            28 * s,
            8 * s,
        )
        for part in (alae, wedge):
            bones.append(
                _Bone(
                    part, part.grown(-3 * s), Tissue.YELLOW_MARROW, yellow, "sacrum", structure=2
                )
            )
        for side in (1.0, -1.0):
            grp = f"pelvis_{side:+.0f}"
            yaw = math.radians(45.0)
            il_axes = np.array(
                [
                    [side * math.cos(yaw), math.sin(yaw), 0.0],
                    [-math.sin(yaw), side * math.cos(yaw), 0.0],
                    [0.0, 0.0, 1.0],
                ]
            ).T
            # The wing rises laterally (crest highest at the side) ...
            roll = math.radians(-side * 18.0)
            il_axes = il_axes @ np.array(
                [
                    [math.cos(roll), 0.0, math.sin(roll)],
                    [0.0, 1.0, 0.0],
                    [-math.sin(roll), 0.0, math.cos(roll)],
                ]
            )
            ilium = Ellipsoid(
                _p(side * (hx + 8 * s), yh - 18 * s, zh + 70 * s),
                np.array([70.0 * w**0.5, 7.0, 46.0]) * s,
                il_axes,
            )
            # ... on a thick body that carries it down to the acetabulum.
            il_body = Capsule(
                _p(side * (hx - 4 * s), yh - 12 * s, zh + 12 * s),
                _p(side * (hx - 14 * s), yh - 12 * s, zh + 48 * s),
                17 * s,
                14 * s,
            )
            for part in (ilium, il_body):
                bones.append(
                    _Bone(
                        part, part.grown(-2.0 * s), Tissue.YELLOW_MARROW, yellow, grp, structure=2
                    )
                )
            centre = _p(side * hx, yh, zh)
            outer = Ellipsoid(centre, np.full(3, self.r_fh + 10 * s))
            inner = Ellipsoid(centre, np.full(3, self.r_fh + 2 * s))
            lim = hx + 0.55 * self.r_fh
            xlim = (-math.inf, lim) if side > 0 else (-lim, math.inf)
            zlim = (zh - 0.35 * self.r_fh, math.inf)
            bones.append(
                _Bone(
                    Clipped(outer, xlim, zlim),
                    Clipped(inner, xlim, zlim),
                    None,
                    0.0,
                    grp,
                    structure=2,
                )
            )
            rami = (
                ((hx - 18 * s, 18 * s, -12 * s), (9 * s, 18 * s, -32 * s), 10 * s),  # sup. ramus
                ((9 * s, 18 * s, -28 * s), (12 * s, 18 * s, -50 * s), 10 * s),  # pubic body
                ((12 * s, 5 * s, -50 * s), (hx - 30 * s, 5 * s, -68 * s), 9 * s),  # inf. ramus
                ((hx - 8 * s, -8 * s, -18 * s), (hx - 26 * s, -8 * s, -68 * s), 13 * s),  # ischium
            )
            for (ax_, ay, az), (bx, by, bz), r in rami:
                cap = Capsule(
                    _p(side * ax_, yh + ay, zh + az), _p(side * bx, yh + by, zh + bz), r, r
                )
                bones.append(
                    _Bone(cap, cap.grown(-4 * s), Tissue.YELLOW_MARROW, yellow, grp, structure=2)
                )
        return bones

    def _leg(self, side: float, abduct_deg: float) -> tuple[list[_Envelope], list[_Bone]]:
        h, s, w = self.anat.height, self.s, self.w
        beta = math.radians(abduct_deg)
        down = _p(side * math.sin(beta), 0.0, -math.cos(beta))
        lat = _p(side * math.cos(beta), 0.0, math.sin(beta))
        hip = _p(side * self.hip_x, self.y_hip, self.z_hip)
        knee = hip + (self.z_hip - 0.285 * h) * down
        ankle = knee + (0.285 - 0.045) * h * down
        axes = _axes_coronal(down, lat)
        fat = self.anat.fat_mm
        yellow = BONE_DENSITY["yellow_marrow"]
        grp = f"{side:+.0f}"

        def env(shape: Capsule | Ellipsoid, t: float) -> _Envelope:
            return _Envelope(shape.grown(t + _SKIN), shape.grown(t), shape)

        thigh = Capsule(hip - 35 * s * down + 10 * s * lat, knee, 68 * s * w, 40 * s * w)
        calf = Capsule(knee, ankle, 44 * s * w, 21 * s)
        foot = Ellipsoid(ankle + _p(0, 55 * s, -15 * s), np.array([35.0, 92.0, 28.0]) * s)
        envelopes = [env(thigh, 1.1 * fat), env(calf, 0.6 * fat), env(foot, 3.0)]

        gt = hip + 42 * s * lat + 30 * s * down
        head = Ellipsoid(hip, np.full(3, self.r_fh))
        neck = Capsule(hip, gt, 15 * s, 18 * s)
        shaft = Capsule(gt + 8 * s * down - 4 * s * lat, knee - 20 * s * down, 14 * s, 13 * s)
        cond = Ellipsoid(knee, np.array([38.0, 30.0, 24.0]) * s, axes)
        tib = Capsule(knee + 10 * s * down, ankle - 25 * s * down, 14 * s, 10 * s)
        plateau = Ellipsoid(knee + 30 * s * down, np.array([36.0, 28.0, 14.0]) * s, axes)
        fib_a = knee + 35 * s * down + 24 * s * lat
        fib_b = ankle - 10 * s * down + 20 * s * lat
        fib = Capsule(fib_a - _p(0, 12 * s, 0), fib_b - _p(0, 12 * s, 0), 6 * s, 6 * s)
        patella = Ellipsoid(knee + _p(0, 38 * s, 0), np.array([20.0, 9.0, 22.0]) * s, axes)
        foot_bone = Ellipsoid(ankle + _p(0, 40 * s, -10 * s), np.array([24.0, 65.0, 16.0]) * s)
        bones = [
            _Bone(head, head.grown(-2.5 * s), Tissue.YELLOW_MARROW, yellow, "femur" + grp),
            _Bone(neck, neck.grown(-6 * s), Tissue.YELLOW_MARROW, yellow, "femur" + grp),
            _Bone(shaft, shaft.grown(-6 * s), Tissue.YELLOW_MARROW, yellow, "femur" + grp),
            _Bone(cond, cond.grown(-3 * s), Tissue.YELLOW_MARROW, yellow, "femur" + grp),
            _Bone(tib, tib.grown(-5 * s), Tissue.YELLOW_MARROW, yellow, "tibia" + grp),
            _Bone(plateau, plateau.grown(-3 * s), Tissue.YELLOW_MARROW, yellow, "tibia" + grp),
            _Bone(fib, fib.grown(-3 * s), Tissue.YELLOW_MARROW, yellow, "fibula" + grp),
            _Bone(patella, patella.grown(-2 * s), Tissue.YELLOW_MARROW, yellow, "patella" + grp),
            _Bone(foot_bone, foot_bone.grown(-4 * s), Tissue.YELLOW_MARROW, yellow, "foot" + grp),
        ]
        return envelopes, bones

    def shoulder(self, side: float, pose: dict[str, float]) -> npt.NDArray[np.float64]:
        """Humeral head centre in one pose (``side`` +1 right, -1 left)."""
        name = "right" if side > 0 else "left"
        return _p(
            side * (self.sh_x + pose.get(f"shoulder_{name}_x_mm", 0.0)),
            self.y_arm,
            self.z_sh + pose.get(f"shoulder_{name}_z_mm", 0.0),
        )

    def _arm(
        self,
        side: float,
        abduct_deg: float,
        elbow_deg: float,
        sh: npt.NDArray[np.float64],
    ) -> tuple[list[_Envelope], list[_Bone]]:
        h, s, w = self.anat.height, self.s, self.w
        a1 = math.radians(abduct_deg)
        a2 = math.radians(abduct_deg + elbow_deg)
        down = _p(side * math.sin(a1), 0.0, -math.cos(a1))
        lat = _p(side * math.cos(a1), 0.0, math.sin(a1))
        down2 = _p(side * math.sin(a2), 0.0, -math.cos(a2))
        lat2 = _p(side * math.cos(a2), 0.0, math.sin(a2))
        elbow = sh + 0.172 * h * down
        wrist = elbow + 0.150 * h * down2
        hand_c = wrist + 0.055 * h * down2
        fat = 0.7 * self.anat.fat_mm
        yellow = BONE_DENSITY["yellow_marrow"]
        grp = f"{side:+.0f}"

        def env(shape: Capsule | Ellipsoid, t: float) -> _Envelope:
            return _Envelope(shape.grown(t + _SKIN), shape.grown(t), shape)

        shoulder = Ellipsoid(sh + 8 * s * lat, np.array([46.0 * w, 50.0, 55.0]) * s)
        upper = Capsule(sh, elbow, 38 * s * w, 32 * s * w)
        fore = Capsule(elbow, wrist, 32 * s * w, 21 * s)
        hand = Ellipsoid(
            hand_c, np.array([14.0, 40.0, 0.055 * _REF_HEIGHT]) * s, _axes_coronal(down2, lat2)
        )
        envelopes = [env(shoulder, fat), env(upper, fat), env(fore, 0.8 * fat), env(hand, 2.0)]
        head = Ellipsoid(sh, np.full(3, 22.0 * s))
        shaft = Capsule(sh + 15 * s * down, elbow - 12 * s * down, 11 * s, 10 * s)
        distal = Ellipsoid(
            elbow - 10 * s * down, np.array([30.0, 16.0, 12.0]) * s, _axes_coronal(down, lat)
        )
        bones = [
            _Bone(head, head.grown(-2.5 * s), Tissue.YELLOW_MARROW, yellow, "humerus" + grp),
            _Bone(shaft, shaft.grown(-5 * s), Tissue.YELLOW_MARROW, yellow, "humerus" + grp),
            _Bone(distal, distal.grown(-3 * s), Tissue.YELLOW_MARROW, yellow, "humerus" + grp),
        ]
        for name, off, dy in (("radius", 9.0, 6.0), ("ulna", -9.0, -6.0)):
            a = elbow + 5 * s * down2 + off * s * lat2 + _p(0, dy * s, 0)
            b = wrist + 1.1 * off * s * lat2 + _p(0, dy * s, 0)
            bone = Capsule(a, b, 7 * s, 8 * s)
            bones.append(
                _Bone(bone, bone.grown(-3.5 * s), Tissue.YELLOW_MARROW, yellow, name + grp)
            )
        hand_bone = Ellipsoid(
            hand_c - 0.01 * h * down2, np.array([9.0, 28.0, 60.0]) * s, _axes_coronal(down2, lat2)
        )
        bones.append(
            _Bone(hand_bone, hand_bone.grown(-2 * s), Tissue.YELLOW_MARROW, yellow, "hand" + grp)
        )
        return envelopes, bones


# ============================================================================ rendering


def _render_dxa(
    scene: _Scene,
    anat: _Anatomy,
    grid: Grid,
    origin: npt.NDArray[np.float64],
    settings: WholeBodySettings,
    rng: np.random.Generator,
) -> tuple[Image, Image, Image]:
    """Project the scene along y: bone and soft-tissue areal densities, evaluation labels."""
    nx, nz = grid.shape
    sp = settings.dxa_spacing_mm
    xw = grid.affine[0, 3] + sp * np.arange(nx) + origin[0]
    zw = grid.affine[1, 3] + sp * np.arange(nz) + origin[2]
    x_all = np.broadcast_to(xw[:, None], (nx, nz))
    z_all = np.broadcast_to(zw[None, :], (nx, nz))
    disc_all = scene.disc_mask(np.array(z_all))

    def window(bbox: np.ndarray) -> tuple[slice, slice] | None:
        i0, i1 = np.searchsorted(xw, [bbox[0, 0] - sp, bbox[1, 0] + sp])
        k0, k1 = np.searchsorted(zw, [bbox[0, 2] - sp, bbox[1, 2] + sp])
        return (slice(i0, i1), slice(k0, k1)) if i1 > i0 and k1 > k0 else None

    def chord(shape: Shape, box: tuple[slice, slice]) -> FloatArray:
        return shape.chord(np.array(x_all[box]), np.array(z_all[box]))

    # Everything is computed on each shape's bounding box only and merged into
    # full-size accumulators: a full array per shape would dominate the time.
    outer, skin, muscle, lung, visceral = (np.zeros((nx, nz)) for _ in range(5))
    for env in scene.envelopes:
        box = window(env.outer.bbox())
        if box is None:
            continue
        # Overlapping body parts (thigh in the buttock, arm at the shoulder) would count
        # twice in a sum; the longer chord approximates the union well.
        for acc, shape in ((outer, env.outer), (skin, env.skin), (muscle, env.muscle)):
            np.maximum(acc[box], chord(shape, box), out=acc[box])
    for shape, acc in [(s, lung) for s in scene.lungs] + [(scene.visceral, visceral)]:
        box = window(shape.bbox())
        if box is not None:
            acc[box] += chord(shape, box)
    visceral *= anat.visceral_fat
    lean = np.maximum((outer - skin) + muscle - lung - visceral, 0.0)
    fat = np.maximum(skin - muscle, 0.0) + visceral
    tissue = 0.1 * (
        SOFT_DENSITY["lean"] * lean + SOFT_DENSITY["fat"] * fat + SOFT_DENSITY["lung"] * lung
    )

    groups: dict[str, FloatArray] = {}
    # Projected bone per evaluation structure; 4 is the sacrum (see below).
    structures = {key: np.zeros((nx, nz)) for key in (1, 2, 4)}
    for bone in scene.bones:
        box = window(bone.outer.bbox())
        if box is None:
            continue
        path = chord(bone.outer, box)
        value = bone.cortex_density * path
        if bone.inner is not None:
            value -= (bone.cortex_density - bone.density) * chord(bone.inner, box)
        if bone.discs:
            value[disc_all[box]] = 0.0
        value *= 0.1  # mm -> cm: g/cm^2
        # Parts of one bone (femoral head, neck, shaft) overlap at their joins: the
        # larger value, not the sum; different bones add up.
        acc = groups.setdefault(bone.group, np.zeros((nx, nz)))
        np.maximum(acc[box], value, out=acc[box])
        if bone.structure:
            # In the AP view the sacrum lies behind the pelvic inlet: where they overlap the
            # inlet is what is labelled (as on the MR slice, which passes in front of it).
            key = 4 if bone.group == "sacrum" else bone.structure
            structures[key][box] += path
    bone_img = sum(groups.values())
    # Bone also attenuates the high-energy beam: a faint skeleton in the tissue image.
    tissue = tissue + 1.0 * bone_img

    labels = np.zeros((nx, nz), np.int32)
    labels[structures[4] > 0.5] = 2
    labels[scene.cavity._in2d(np.array(x_all), np.array(z_all))] = 3
    labels[structures[2] > 0.5] = 2
    labels[structures[1] > 0.5] = 1

    def finish(img: FloatArray, sigma: float) -> npt.NDArray[np.float32]:
        img = ndimage.gaussian_filter(img, 0.6)
        img = img + sigma * rng.standard_normal(img.shape)
        return np.maximum(img, 0.0).astype(np.float32)

    noise = settings.dxa_noise
    return (
        Image(finish(bone_img, noise * 1.0), grid.affine),
        Image(finish(tissue, noise * 20.0), grid.affine),
        Image(labels, grid.affine),
    )


class _MrSampler:
    """Body-frame coordinates of an axis-aligned MR grid (``M = R (B - o) + t``)."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        origin: np.ndarray,
        rot: np.ndarray,
        shift: np.ndarray,
        centre: np.ndarray,
    ) -> None:
        self.shape, self.spacing, self.origin = shape, np.asarray(spacing), np.asarray(origin)
        self.rot, self.shift, self.centre = rot, shift, centre
        xm, ym, zm = (origin[a] + spacing[a] * np.arange(shape[a]) for a in range(3))
        dx, dz = xm - shift[0], zm - shift[2]
        # B = R^T (M - t) + o, and R mixes only x and z.
        self.xb = (rot[0, 0] * dx[:, None] + rot[2, 0] * dz[None, :] + centre[0]).astype(
            np.float32
        )
        self.zb = (rot[0, 2] * dx[:, None] + rot[2, 2] * dz[None, :] + centre[2]).astype(
            np.float32
        )
        self.yb = (ym - shift[1] + centre[1]).astype(np.float32)

    def box(self, bbox: np.ndarray) -> tuple[slice, slice, slice] | None:
        corners = np.array(np.meshgrid(*bbox.T, indexing="ij")).reshape(3, -1).T
        world = (corners - self.centre) @ self.rot.T + self.shift
        ijk = (world - self.origin) / self.spacing
        lo = np.maximum(np.floor(ijk.min(0)).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(ijk.max(0)).astype(int) + 2, self.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[FloatArray, FloatArray, FloatArray]:
        i, j, k = box
        return self.xb[i, k][:, None, :], self.yb[j][None, :, None], self.zb[i, k][:, None, :]


def _paint(
    volume: np.ndarray,
    sampler: _MrSampler,
    shape: Shape,
    value: int,
    *,
    into: np.ndarray | None = None,
    where: Callable[[FloatArray], npt.NDArray[np.bool_]] | None = None,
    exclude: Shape | None = None,
) -> None:
    """Set ``volume`` to ``value`` inside ``shape`` (optionally only over tissues ``into``,
    only where ``where(z)``, and not inside ``exclude``)."""
    box = sampler.box(shape.bbox())
    if box is None:
        return
    x, y, z = sampler.coords(box)
    mask = shape.inside(x, y, z)
    if exclude is not None:
        mask &= ~exclude.inside(x, y, z)
    if where is not None:
        mask &= where(z)
    view = volume[box]
    if into is not None:
        mask &= into[view]
    view[mask] = value


def _resize_linear(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation of a small array onto ``shape`` (end points aligned)."""
    out = coarse
    for axis, n in enumerate(shape):
        m = out.shape[axis]
        pos = np.linspace(0.0, m - 1.0, n)
        lo = np.minimum(np.floor(pos).astype(int), m - 2)
        weights = np.zeros((n, m), np.float32)
        weights[np.arange(n), lo] = 1.0 - (pos - lo)
        weights[np.arange(n), lo + 1] = pos - lo
        out = np.moveaxis(np.tensordot(weights, out, axes=([1], [axis])), 0, axis)
    return out


def _texture(rng: np.random.Generator, shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """Smooth random field (unit variance): noise on a 10 mm grid, smoothed, interpolated."""
    coarse_shape = tuple(max(3, math.ceil(n * spacing / 10.0) + 1) for n in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 0.8)
    coarse /= max(float(coarse.std()), 1e-6)
    return _resize_linear(coarse.astype(np.float32), shape)


def _upsample_z(volume: np.ndarray, factor: int, n_out: int) -> np.ndarray:
    """Linear interpolation along the last axis, ``factor`` output slices per input slice."""
    if factor == 1:
        return volume[..., :n_out]
    out = np.empty((*volume.shape[:2], n_out), volume.dtype)
    for r in range(factor):
        part = out[..., r::factor]
        n = part.shape[2]
        if r == 0:
            part[...] = volume[..., :n]
        else:
            # In place: no full-size temporaries.
            w = np.float32(r / factor)
            np.multiply(volume[..., :n], np.float32(1.0) - w, out=part)
            part += w * volume[..., 1 : n + 1]
    return out


def _render_mr(
    scene: _Scene,
    anat: _Anatomy,
    sampler: _MrSampler,
    full: _MrSampler,
    settings: WholeBodySettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Paint the tissue map on the acquisition grid; fat and water; evaluation labels."""
    tissue = np.zeros(sampler.shape, np.uint8)
    for env in scene.envelopes:
        box = sampler.box(env.outer.bbox())
        if box is None:
            continue
        x, y, z = sampler.coords(box)
        layer = env.outer.inside(x, y, z).view(np.uint8)
        layer = layer + env.skin.inside(x, y, z).view(np.uint8)
        layer += env.muscle.inside(x, y, z).view(np.uint8)
        view = tissue[box]
        np.maximum(view, layer, out=view)

    n_tissue = len(Tissue)

    def allowed(codes: tuple[Tissue, ...]) -> np.ndarray:
        lut = np.zeros(256, bool)
        lut[list(codes)] = True
        return lut

    for organ in scene.cavities + scene.organs:
        _paint(tissue, sampler, organ.shape, organ.tissue, into=allowed(organ.into))
    discs = scene.disc_mask
    for bone in scene.bones:
        not_disc = (lambda z: ~discs(z)) if bone.discs else None
        if bone.marrow is None and bone.inner is not None:
            _paint(tissue, sampler, bone.outer, bone.cortex, where=not_disc, exclude=bone.inner)
            continue
        _paint(tissue, sampler, bone.outer, bone.cortex, where=not_disc)
        if bone.discs and bone.group == "spine_body":
            _paint(tissue, sampler, bone.outer, Tissue.DISC, where=discs)
        if bone.inner is not None and bone.marrow is not None:
            _paint(tissue, sampler, bone.inner, bone.marrow, where=not_disc)

    # Signal: per-tissue values (jittered per subject), liver and visceral fat per subject.
    signal = np.array([MR_SIGNAL[Tissue(i)] for i in range(n_tissue)]) * anat.tissue_jitter
    signal[Tissue.LIVER] = (900.0 * anat.liver_fat, 800.0 * (1.0 - anat.liver_fat))
    fat = signal[:, 0].astype(np.float32)[tissue]
    water = signal[:, 1].astype(np.float32)[tissue]
    box = sampler.box(scene.visceral.bbox())
    if box is not None:
        shape = tuple(s.stop - s.start for s in box)
        # Visceral fat: adipose depots (fat ~ subcutaneous) between bowel loops (water),
        # a fraction ``visceral_fat`` of the viscera, mixed only at their borders.
        field = _texture(rng, shape, abs(float(sampler.spacing[0])))
        level = np.quantile(field[::2, ::2, ::2], 1.0 - anat.visceral_fat)
        vis = (tissue[box] == Tissue.VISCERA) * (0.5 + 0.5 * np.tanh((field - level) / 0.1))
        fat[box] += signal[Tissue.FAT, 0] * vis
        water[box] += (signal[Tissue.FAT, 1] - signal[Tissue.VISCERA, 1]) * vis

    # Smooth multiplicative bias (one coil, both channels) and magnitude noise.
    profiles = []
    for n in sampler.shape:
        u = np.linspace(-1.0, 1.0, n, dtype=np.float32)
        c1, c2 = rng.uniform(-1.0, 1.0, 2) * settings.mr_bias / 2.0
        profiles.append(np.exp(c1 * u + c2 * (u * u - 1.0 / 3.0)).astype(np.float32))
    # Separable: two passes over the volume instead of building a 3D field.
    bias_xy = (profiles[0][:, None] * profiles[1][None, :])[:, :, None]
    sigma = np.float32(settings.mr_noise * 1000.0)
    for channel in (fat, water):
        channel *= bias_xy
        channel *= profiles[2]
        noise = rng.standard_normal(channel.shape, dtype=np.float32)
        noise *= sigma
        channel += noise
        np.abs(channel, out=channel)

    # Evaluation labels at full resolution: pelvic cavity, then pelvis, then spine.
    labels = np.zeros(full.shape, np.uint8)
    _paint(labels, full, scene.cavity, 3)
    box = full.box(scene.cavity.bbox())
    if box is not None:
        x, y, z = full.coords(box)
        view = labels[box]
        view[(view == 3) & ~scene.body_lean.inside(x, y, z)] = 0
    for structure in (2, 1):
        for bone in scene.bones:
            if bone.structure == structure:
                _paint(labels, full, bone.outer, structure)
    return tissue, fat, water, labels


# ============================================================================ generator


def _draw_anatomy(rng: np.random.Generator, settings: WholeBodySettings) -> _Anatomy:
    height = float(rng.uniform(*settings.height_range_mm))
    s = height / _REF_HEIGHT
    adiposity = float(rng.uniform(0.0, 1.0))
    return _Anatomy(
        height=height,
        build=float(rng.uniform(0.9, 1.12)),
        adiposity=adiposity,
        fat_mm=float(max(3.0, 4.0 + 30.0 * adiposity + rng.normal(0.0, 3.0)) * s),
        visceral_fat=float(np.clip(0.15 + 0.6 * adiposity + rng.normal(0.0, 0.08), 0.05, 0.9)),
        liver_fat=float(np.clip(0.02 + 0.2 * adiposity**2 + rng.normal(0.0, 0.02), 0.01, 0.35)),
        spine_amplitudes={
            "lordosis": float(rng.uniform(8.0, 22.0) * s),
            "kyphosis": float(rng.uniform(6.0, 18.0) * s),
            "cervical": float(rng.uniform(4.0, 14.0) * s),
        },
        scoliosis=(float(rng.uniform(-12.0, 12.0) * s), float(rng.uniform(-6.0, 6.0) * s)),
        drop=float(rng.uniform(55.0, 75.0) * s),
        tissue_jitter=rng.uniform(0.95, 1.05, (len(Tissue), 2)),
    )


def _draw_poses(
    rng: np.random.Generator, settings: WholeBodySettings, shoulder_rng: np.random.Generator
) -> tuple[dict[str, float], dict[str, float]]:
    dxa: dict[str, float] = {}
    for side in ("right", "left"):
        dxa[f"arm_{side}"] = float(rng.uniform(3.0, 9.0))
        dxa[f"elbow_{side}"] = float(rng.uniform(0.0, 5.0))
        dxa[f"leg_{side}"] = float(rng.uniform(2.0, 7.0))
    m = settings.max_limb_deg
    mr = {
        k: v + float(rng.uniform(-m, m) * (0.5 if "elbow" in k else 1.0)) for k, v in dxa.items()
    }
    s = settings.max_shoulder_mm
    for side in ("right", "left"):
        mr[f"shoulder_{side}_z_mm"] = float(shoulder_rng.uniform(-s, s))
        mr[f"shoulder_{side}_x_mm"] = float(shoulder_rng.uniform(-0.5 * s, 0.5 * s))
    return dxa, mr


def generate_wholebody_subject(
    seed: int, *, settings: WholeBodySettings | None = None
) -> WholeBodySubject:
    """Generate one synthetic subject: DXA bone and tissue, Dixon fat and water, ground truth.

    Args:
        seed: Seed of ``np.random.default_rng``; same seed and settings, same subject.
        settings: Generation settings (defaults: :class:`WholeBodySettings`).

    Returns:
        The subject; images are float32, label maps int32.

    Example:
        >>> s = generate_wholebody_subject(0)
        >>> s.dxa_bone.shape, s.mr_fat.shape[0::2], s.mr_fat.spacing
        ((300, 800), (224, 501), (2.2, 2.2, 2.2))
    """
    settings = settings or WholeBodySettings()
    rng = np.random.default_rng(seed)
    anat = _draw_anatomy(rng, settings)
    body = _Body(anat, settings)
    # The shoulders draw from their own stream, so every other draw of a seed is as before.
    pose_dxa, pose_mr = _draw_poses(rng, settings, np.random.default_rng([seed, 1]))
    h = anat.height

    # DXA: the body centred in the field of view, give or take a little.
    dxa_origin = _p(rng.uniform(-15.0, 15.0), 0.0, 0.5 * h + rng.uniform(-15.0, 15.0))
    dxa_grid = Grid(tuple(settings.dxa_size), _dxa_affine(settings))

    # MR pose: rotation in the coronal plane, translation, neck-to-knee field of view.
    mr_max = settings.max_rotation_deg
    angle = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5 * mr_max, mr_max))
    if settings.large_rotations:
        angle = float(rng.uniform(-180.0, 180.0))
    rot = _rot_y(angle)
    shift = rng.uniform(-1.0, 1.0, 3) * settings.max_translation_mm
    z_mid = 0.5 * (0.285 + 0.87) * h + rng.uniform(-20.0, 20.0)
    scene_mr = body.scene(pose_mr)
    sp = settings.mr_spacing_mm
    n_lr, n_si = settings.mr_size
    half_si = 0.5 * (n_si - 1) * sp
    y_lo, y_hi = math.inf, -math.inf
    for env in scene_mr.envelopes:
        box = env.outer.bbox()
        if box[1, 2] >= z_mid - half_si - 60.0 and box[0, 2] <= z_mid + half_si + 60.0:
            y_lo, y_hi = min(y_lo, box[0, 1]), max(y_hi, box[1, 1])
    mr_centre = _p(rng.uniform(-10.0, 10.0), 0.5 * (y_lo + y_hi), z_mid)
    margin = 12.0 + abs(shift[1])
    n_ap = math.ceil((y_hi - y_lo + 2 * margin) / sp) + 1
    factor = settings.mr_slice_factor
    n_acq = math.ceil((n_si - 1) / factor) + 1
    # Stored left-right flipped (LAS), as many converters do: rendered in that order.
    origin = _p(0.5 * (n_lr - 1) * sp, -0.5 * (n_ap - 1) * sp, -half_si)
    acq = _MrSampler((n_lr, n_ap, n_acq), (-sp, sp, sp * factor), origin, rot, shift, mr_centre)
    full = _MrSampler((n_lr, n_ap, n_si), (-sp, sp, sp), origin, rot, shift, mr_centre)

    scene_dxa = body.scene(pose_dxa)
    dxa_bone, dxa_tissue, dxa_labels = _render_dxa(
        scene_dxa, anat, dxa_grid, dxa_origin, settings, rng
    )
    tissue, fat, water, labels = _render_mr(scene_mr, anat, acq, full, settings, rng)
    fat = _upsample_z(fat, factor, n_si)
    water = _upsample_z(water, factor, n_si)
    nearest = np.minimum(np.rint(np.arange(n_si) / factor).astype(np.intp), n_acq - 1)
    tissue = tissue[..., nearest]

    mr_affine = np.diag([-sp, sp, sp, 1.0])
    mr_affine[:3, 3] = origin

    def to_mr(points: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(points) - mr_centre) @ rot.T + shift

    def body_landmarks(pose: dict[str, float]) -> dict[str, npt.NDArray[np.float64]]:
        return {
            "femoral_head_left": _p(-body.hip_x, body.y_hip, body.z_hip),
            "femoral_head_right": _p(body.hip_x, body.y_hip, body.z_hip),
            "humeral_head_left": body.shoulder(-1.0, pose),
            "humeral_head_right": body.shoulder(1.0, pose),
            "s1": body.s1,
        }

    lm_dxa = {
        k: _p(v[0] - dxa_origin[0], v[2] - dxa_origin[2], 0.0)
        for k, v in body_landmarks(pose_dxa).items()
    }
    lm_mr = {k: to_mr(v)[0] for k, v in body_landmarks(pose_mr).items()}

    # DXA 3D frame (D.x, B.y, D.z) -> MR world, and its 2D (coronal) part.
    dxa_to_mr = np.eye(4)
    dxa_to_mr[:3, :3] = rot
    dxa_to_mr[:3, 3] = rot @ (dxa_origin - mr_centre) + shift
    dxa_to_slice = np.eye(4)
    dxa_to_slice[np.ix_([0, 1], [0, 1])] = rot[np.ix_([0, 2], [0, 2])]
    dxa_to_slice[[0, 1], 3] = dxa_to_mr[[0, 2], 3]

    if settings.spine:
        zline = np.arange(body.z_s1, body.z_c2, 1.0)
        line = np.stack(
            [np.interp(zline, body.zs, body.xs), np.interp(zline, body.zs, body.ys), zline], 1
        )
        spine_path = to_mr(line)
    else:
        spine_path = np.zeros((0, 3))

    metadata: dict[str, Any] = {
        "generator": "mmreg.imaging.phantoms.wholebody.generate_wholebody_subject",
        "seed": int(seed),
        "settings": {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()
        },
        "height_mm": anat.height,
        "build": anat.build,
        "adiposity": anat.adiposity,
        "subcutaneous_fat_mm": anat.fat_mm,
        "visceral_fat_fraction": anat.visceral_fat,
        "liver_fat_fraction": anat.liver_fat,
        "spine_curvature_mm": anat.spine_amplitudes,
        "scoliosis_mm": list(anat.scoliosis),
        "pose_dxa_deg": pose_dxa,
        "pose_mr_deg": pose_mr,
        "mr_rotation_deg": angle,
        "mr_translation_mm": shift.tolist(),
        "dxa_origin_body_mm": dxa_origin.tolist(),
        "mr_centre_body_mm": mr_centre.tolist(),
        "dxa_to_mr_slice": dxa_to_slice.tolist(),
    }
    return WholeBodySubject(
        seed=int(seed),
        dxa_bone=dxa_bone,
        dxa_tissue=dxa_tissue,
        mr_fat=Image(fat, mr_affine),
        mr_water=Image(water, mr_affine),
        dxa_labels=dxa_labels,
        mr_labels=Image(labels.astype(np.int32), mr_affine),
        mr_tissues=Image(tissue, mr_affine),
        landmarks_dxa=lm_dxa,
        landmarks_mr=lm_mr,
        dxa_to_mr=dxa_to_mr,
        dxa_to_mr_slice=dxa_to_slice,
        spine_path_mr=spine_path,
        metadata=metadata,
    )


def _dxa_affine(settings: WholeBodySettings) -> Matrix4:
    """2D DXA affine: pixel ``(i, j)`` -> world ``(x, y, 0)``, centred on the field of view."""
    sp = settings.dxa_spacing_mm
    nx, nz = settings.dxa_size
    affine = np.diag([sp, sp, 1.0, 1.0])
    affine[0, 3] = -0.5 * (nx - 1) * sp
    affine[1, 3] = -0.5 * (nz - 1) * sp
    return affine
