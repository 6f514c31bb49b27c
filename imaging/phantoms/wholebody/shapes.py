"""Solids of the whole-body phantom and the small geometry helpers the anatomy is built with.

Every shape answers two questions exactly: which points of a 3D grid lie
inside it (the MR is painted from these), and how long a line along the
anterior-posterior axis (y) runs inside it (the DXA is the sum of these line
integrals times a density).

Shapes are evaluated on broadcast coordinate arrays: in 3D ``x`` and ``z`` have shape
(a, 1, c) and ``y`` (1, b, 1) (the MR pose rotates about y, so x and z of the body frame
depend on two voxel axes only); in 2D (DXA) ``x`` and ``z`` are (a, c) and the shape
returns its chord along y.

Example:
    >>> ball = Ellipsoid(point(0, 0, 0), point(10, 20, 30))
    >>> float(ball.chord(np.array([0.0]), np.array([0.0]))[0])  # the full y diameter
    40.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]


def point(*v: float) -> npt.NDArray[np.float64]:
    """A point (or vector) of the body frame as a float64 array."""
    return np.array(v, dtype=np.float64)


def rot_y(deg: float) -> npt.NDArray[np.float64]:
    """Rotation about the anterior-posterior axis (x towards -z for positive angles)."""
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def axes_coronal(down: np.ndarray, lateral: np.ndarray) -> np.ndarray:
    """Principal axes (columns) of a limb part: lateral, anterior, along the limb."""
    return np.stack([lateral, np.array([0.0, 1.0, 0.0]), -down], axis=1)


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

    def footprint(self, x: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        """Which points of the coronal plane the ellipse covers."""
        return ((x - self.x0) / self.ax) ** 2 + ((z - self.z0) / self.az) ** 2 <= 1.0

    def bbox(self) -> npt.NDArray[np.float64]:
        return np.array(
            [
                [self.x0 - self.ax, self.ylo, self.z0 - self.az],
                [self.x0 + self.ax, self.yhi, self.z0 + self.az],
            ]
        )

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        return self.footprint(x, z) & ((y >= self.ylo) & (y <= self.yhi))

    def chord(self, x: FloatArray, z: FloatArray) -> FloatArray:
        return self.footprint(x, z) * (self.yhi - self.ylo)


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
