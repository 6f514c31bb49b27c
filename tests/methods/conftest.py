"""Synthetic multi-contrast pairs with a known fixed->moving transform.

The fixed image is a smooth blobby "head"; the moving image is a second contrast of
it (a non-monotonic intensity remap, so only a multi-modal metric aligns them),
resampled so that ``moving(truth(x)) = remap(fixed(x))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage

from mmreg.imaging.image import Image
from mmreg.imaging.transform import Transform


@dataclass(frozen=True)
class Pair:
    fixed: Image
    moving: Image
    truth: Transform
    points: np.ndarray  # (N, 3) RAS test points inside the head, fixed space

    def error(self, transform: Transform) -> float:
        """Mean distance (mm) between mapped test points and their true images."""
        diff = transform.map_points(self.points) - self.truth.map_points(self.points)
        return float(np.linalg.norm(diff, axis=1).mean())

    @property
    def initial_error(self) -> float:
        return self.error(Transform.identity(self.fixed.ndim))


def centred_affine(shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """Voxel->world affine with the grid centre at the world origin."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    centre = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    affine[: len(shape), 3] = -spacing * centre
    return affine


def head(shape: tuple[int, ...], *, seed: int = 0) -> np.ndarray:
    """An ellipsoid of smooth random texture plus a few bright and dark blobs, in [0, 1]."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    radius = sum((g / r) ** 2 for g, r in zip(axes, (0.75, 0.85, 0.7), strict=False))
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    texture = (texture - texture.min()) / np.ptp(texture)
    data = (radius < 1.0) * (0.35 + 0.45 * texture)
    for _ in range(6):
        centre = rng.uniform(-0.45, 0.45, size=len(shape))
        width = rng.uniform(0.08, 0.18)
        blob = np.exp(-sum((g - c) ** 2 for g, c in zip(axes, centre, strict=True)) / width**2)
        data = data + rng.choice([-0.3, 0.4]) * blob * (radius < 1.0)
    data = ndimage.gaussian_filter(np.clip(data, 0.0, None), 0.8)
    return (data / data.max()).astype(np.float32)


def second_contrast(data: np.ndarray) -> np.ndarray:
    """A non-monotonic remap: mid intensities become brightest."""
    return (np.sin(2.8 * data) ** 2 + 0.15 * data).astype(np.float32)


def rigid_matrix(degrees_z: float, degrees_x: float, translation: tuple[float, ...]) -> np.ndarray:
    """4x4 RAS rigid matrix: rotation about x, then about z, then a shift (mm)."""
    a, b = np.deg2rad(degrees_z), np.deg2rad(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = np.eye(4)
    m[:3, :3] = rz @ rx
    m[: len(translation), 3] = translation
    return m


def make_pair(
    shape: tuple[int, ...], spacing: float, truth_matrix: np.ndarray, *, seed: int = 0
) -> Pair:
    affine = centred_affine(shape, spacing)
    data = head(shape, seed=seed)
    fixed = Image(data, affine)
    truth = Transform.from_affine(truth_matrix, ndim=len(shape))
    # Pull with the inverse, so that moving(truth(x)) = contrast(fixed(x)).
    inverse = Transform.from_affine(np.linalg.inv(truth_matrix), ndim=len(shape))
    moving = inverse.apply(Image(second_contrast(data), affine), fixed.grid)
    extent = 0.3 * spacing * np.asarray(shape, dtype=float)
    unit = np.array(
        [[1, 0, 0], [-1, 0.5, 0.3], [0, -1, 0.5], [0.3, 0.8, -0.7], [0, 0, 0], [-0.6, -0.6, -0.4]]
    )
    points = np.zeros((len(unit), 3))
    points[:, : len(shape)] = unit[:, : len(shape)] * extent
    return Pair(fixed, moving, truth, points)


@pytest.fixture(scope="session")
def pair3d() -> Pair:
    """40^3 at 2.5 mm; truth: 10 deg about z, 5 deg about x, (5, -3, 2) mm."""
    return make_pair((40, 40, 40), 2.5, rigid_matrix(10.0, 5.0, (5.0, -3.0, 2.0)))


@pytest.fixture(scope="session")
def pair2d() -> Pair:
    """72x80 at 2 mm; truth: 10 deg in-plane, (5, -4) mm."""
    return make_pair((72, 80), 2.0, rigid_matrix(10.0, 0.0, (5.0, -4.0)), seed=1)


@pytest.fixture
def far_initial() -> Callable[[int], Transform]:
    """An initial transform that maps every fixed point far outside the moving image."""

    def make(ndim: int) -> Transform:
        m = np.eye(4)
        m[0, 3] = 5000.0
        return Transform.from_affine(m, ndim=ndim)

    return make
