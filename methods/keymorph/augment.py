"""Random training views: spatial warps (full-circle rotations) and intensity remaps.

A *view* of a training subject is its image resampled onto the detector's input
grid through a random spatial map ``W`` (view millimetres -> subject world), then
given a random contrast. Writing ``q`` for a point of the input grid in mm
relative to its centre::

    W(q) = c + L (q + u(q))

with ``c`` the grid centre in the subject's world (the subject's centre plus a
random shift), ``L`` a random linear map (a rotation uniform over all of SO(d) for
most views, or a small one, times scales and shears) and ``u`` a smooth random
displacement. A keypoint ``q_k`` found in the view is the subject-world point
``W(q_k)``: comparing ``W_a(q_a)`` and ``W_b(q_b)`` across two views (two warps, or
two contrasts of the same subject, which share its world) is the keypoint
consistency the detector is trained for; ``W`` is differentiable in ``q``.

The intensity model makes keypoints contrast-agnostic: random piecewise-linear
look-up tables (monotone or not, background kept at 0), gamma, a smooth
multiplicative bias field, Gaussian noise and blur.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from mmreg.methods.keymorph.sampling import normalize_input, voxel_to_grid_sample

__all__ = [
    "AugmentSettings",
    "View",
    "add_clutter",
    "intensity_augment",
    "random_linear",
    "random_lut",
    "random_rotation",
    "random_rotation_kind",
    "render_view",
    "sample_view",
]


@dataclass(frozen=True)
class AugmentSettings:
    """How random training views are drawn.

    Attributes:
        small_rotation_deg: Largest angle of the small rotations (the detector must be
            most accurate near upright, where test-time refinement brings the images).
        large_rotation_deg: Largest angle of the large rotations: at least the
            covering radius of the test-time rotation search (62.8 degrees for the 24
            rotations of the cube), so one searched pose is always within reach.
        large_rotation_prob: Share of non-upright views with a large rotation.
        full_rotation_prob: Share of non-upright views rotated uniformly over all
            orientations (the rest get small rotations).
        log_scale: Half-range of the per-axis log scale of the view (a scale above 1
            shows more of the world per voxel: a smaller head).
        log_scale_bias: Centre of that range: the phantom's MNI-sized brains are
            5-10% larger than native brains, so views shrink them a little on average.
        shear: Half-range of the shear terms.
        shift_mm: Standard deviation of the grid centre's offset from the subject's
            centre, per axis.
        far_shift_mm: Radius of the large offsets (a foreground centroid pulled
            away from the brain by a neck or a large field of view).
        far_shift_prob: Share of views with a large offset.
        warp_mm: Largest peak displacement of the smooth random warp.
        warp_prob: Share of views with a smooth warp.
        lut_prob: Share of views whose intensities go through a random look-up table.
        monotone_prob: Share of those tables that are monotone.
        lut_points: Control points of a table.
        gamma: Half-range of log(gamma).
        bias: Largest log-amplitude of the bias field.
        noise: Largest noise standard deviation (intensities in [0, 1]).
        blur_prob: Share of views blurred (sigma up to 1 voxel).
        crop_prob: Share of views with a slab of the field of view cut away.
        clutter_prob: Share of views with tissue painted around the head
            (:func:`add_clutter`).
        neck_prob: Share of those with a neck.
        face_prob: Share of those with a face.
        blobs: Most random blobs.
    """

    small_rotation_deg: float = 15.0
    large_rotation_deg: float = 70.0
    large_rotation_prob: float = 0.5
    full_rotation_prob: float = 0.1
    log_scale: float = 0.11
    log_scale_bias: float = 0.05
    shear: float = 0.05
    shift_mm: float = 6.0
    far_shift_mm: float = 45.0
    far_shift_prob: float = 0.3
    warp_mm: float = 6.0
    warp_prob: float = 0.5
    lut_prob: float = 0.8
    monotone_prob: float = 0.3
    lut_points: int = 8
    gamma: float = 0.4
    bias: float = 0.4
    noise: float = 0.05
    blur_prob: float = 0.2
    crop_prob: float = 0.2
    clutter_prob: float = 0.7
    neck_prob: float = 0.8
    face_prob: float = 0.6
    blobs: int = 5


def random_rotation(rng: np.random.Generator, ndim: int, max_deg: float | None) -> np.ndarray:
    """A random rotation: uniform over SO(ndim) if ``max_deg`` is None, else a random
    axis (3D) and an angle uniform in ``[-max_deg, max_deg]``."""
    if ndim == 2:
        angle = (
            rng.uniform(-np.pi, np.pi)
            if max_deg is None
            else np.deg2rad(rng.uniform(-max_deg, max_deg))
        )
        c, s = np.cos(angle), np.sin(angle)
        return np.array([[c, -s], [s, c]])
    if max_deg is None:
        return Rotation.random(random_state=rng).as_matrix()
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    return Rotation.from_rotvec(np.deg2rad(rng.uniform(-max_deg, max_deg)) * axis).as_matrix()


ROTATIONS = ("small", "large", "full")


def random_linear(
    rng: np.random.Generator,
    ndim: int,
    settings: AugmentSettings,
    *,
    rotation: str,
    difficulty: float = 1.0,
) -> np.ndarray:
    """Rotation @ scale @ shear (``ndim x ndim``).

    ``rotation`` is ``small``, ``large`` or ``full`` (uniform over all orientations).
    ``difficulty`` in [0, 1] widens the large rotations from the small range to
    their full range, and full-circle rotations only start at 1 (before, they are
    large ones): a curriculum, since a detector first has to learn the anatomy.
    """
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {', '.join(ROTATIONS)}")
    small, large = settings.small_rotation_deg, settings.large_rotation_deg
    difficulty = min(1.0, max(0.0, difficulty))
    if rotation == "full" and difficulty >= 1.0:
        rot = random_rotation(rng, ndim, None)
    elif rotation == "small":
        rot = random_rotation(rng, ndim, small)
    else:
        rot = random_rotation(rng, ndim, small + (large - small) * difficulty)
    lo, hi = (
        settings.log_scale_bias - settings.log_scale,
        settings.log_scale_bias + settings.log_scale,
    )
    scale = np.diag(np.exp(rng.uniform(lo, hi, ndim)))
    shear = np.eye(ndim) + np.triu(rng.uniform(-settings.shear, settings.shear, (ndim, ndim)), 1)
    return rot @ scale @ shear


def random_rotation_kind(rng: np.random.Generator, settings: AugmentSettings) -> str:
    """Draw ``small``, ``large`` or ``full`` with the settings' probabilities."""
    u = rng.random()
    if u < settings.full_rotation_prob:
        return "full"
    if u < settings.full_rotation_prob + settings.large_rotation_prob:
        return "large"
    return "small"


@dataclass
class View:
    """One random spatial map ``W(q) = c + L (q + u(q))`` onto a ``size``-voxel grid.

    Attributes:
        center: ``c`` (d,), subject world mm.
        linear: ``L`` (d, d).
        size: Grid voxels per axis.
        spacing: Grid voxel size (mm).
        warp: Coarse displacement ``u`` in view mm, ``(1, d, g, ..., g)`` over the
            grid's extent, or ``None``.
    """

    center: np.ndarray
    linear: np.ndarray
    size: int
    spacing: float
    warp: torch.Tensor | None = None

    @property
    def ndim(self) -> int:
        return len(self.center)

    def voxel_to_mm(self, index: torch.Tensor) -> torch.Tensor:
        """Grid voxel indices ``(..., d)`` -> view mm ``q`` (centre of the grid = 0)."""
        return (index - (self.size - 1) / 2.0) * self.spacing

    def _displacement(self, q: torch.Tensor) -> torch.Tensor:
        """``u(q)`` for view-mm points ``(M, d)``, zero without a field."""
        if self.warp is None:
            return torch.zeros_like(q)
        half = (self.size - 1) / 2.0 * self.spacing
        coords = (q / half).flip(-1).reshape(1, *([1] * (self.ndim - 1)), -1, self.ndim)
        out = F.grid_sample(
            self.warp.to(q), coords, mode="bilinear", padding_mode="border", align_corners=True
        )
        return out.reshape(self.ndim, -1).T

    def to_world(self, index: torch.Tensor) -> torch.Tensor:
        """Grid voxel indices ``(M, d)`` -> subject world ``(M, d)`` (differentiable)."""
        q = self.voxel_to_mm(index)
        q = q + self._displacement(q)
        lin = torch.as_tensor(self.linear, dtype=q.dtype, device=q.device)
        return q @ lin.T + torch.as_tensor(self.center, dtype=q.dtype, device=q.device)

    def grid_world(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """World points of every grid voxel, ``(size**d, d)`` (C order)."""
        idx = _voxel_grid(self.size, self.ndim, torch.device(device))
        if self.warp is None:
            return self.to_world(idx)
        # The dense field comes from upsampling the coarse one (cheaper than grid_sample).
        q = self.voxel_to_mm(idx)
        mode = "trilinear" if self.ndim == 3 else "bilinear"
        dense = F.interpolate(
            self.warp.to(device), size=(self.size,) * self.ndim, mode=mode, align_corners=True
        )
        q = q + dense.reshape(self.ndim, -1).T
        lin = torch.as_tensor(self.linear, dtype=q.dtype, device=q.device)
        return q @ lin.T + torch.as_tensor(self.center, dtype=q.dtype, device=q.device)

    def half(self) -> View:
        """The same map on a grid of half the voxels per axis (same extent, same warp)."""
        size = max(2, self.size // 2)
        spacing = self.spacing * (self.size - 1) / max(1, size - 1)
        return View(self.center, self.linear, size, spacing, self.warp)

    def voxel_matrix(self) -> np.ndarray:
        """``(d+1, d+1)`` map from grid voxel indices to world, ignoring the warp."""
        nd = self.ndim
        m = np.eye(nd + 1)
        m[:nd, :nd] = self.linear * self.spacing
        m[:nd, nd] = self.center - self.linear @ np.full(nd, (self.size - 1) / 2.0 * self.spacing)
        return m


_GRIDS: dict[tuple[int, int, str], torch.Tensor] = {}


def _voxel_grid(size: int, ndim: int, device: torch.device) -> torch.Tensor:
    """All voxel indices of a ``size**ndim`` grid, ``(size**ndim, ndim)`` float32 (cached)."""
    key = (size, ndim, str(device))
    if key not in _GRIDS:
        axes = [torch.arange(size, dtype=torch.float32, device=device)] * ndim
        _GRIDS[key] = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, ndim)
    return _GRIDS[key]


def random_view(
    rng: np.random.Generator,
    center: npt.ArrayLike,
    *,
    size: int,
    spacing: float,
    settings: AugmentSettings,
    rotation: str | None = None,
    difficulty: float = 1.0,
) -> View:
    """Draw a :class:`View` around the subject-world point ``center``.

    ``rotation``: ``small``, ``large``, ``full`` or ``None`` (drawn, see
    :func:`random_rotation_kind`); ``difficulty`` (0 to 1) scales the range of the
    large rotations and offsets.
    """
    center = np.asarray(center, dtype=np.float64)
    nd = center.size
    if rotation is None:
        rotation = random_rotation_kind(rng, settings)
    linear = random_linear(rng, nd, settings, rotation=rotation, difficulty=difficulty)
    if rng.random() < settings.far_shift_prob:
        direction = rng.standard_normal(nd)
        radius = settings.shift_mm + (settings.far_shift_mm - settings.shift_mm) * min(
            1.0, max(0.0, difficulty)
        )
        shift = direction / np.linalg.norm(direction) * radius * rng.random() ** (1.0 / nd)
    else:
        shift = rng.normal(0.0, settings.shift_mm, nd)
    warp = None
    if settings.warp_mm > 0 and rng.random() < settings.warp_prob:
        coarse = rng.standard_normal((1, nd, *([5] * nd)))
        peak = np.abs(coarse).max()
        warp = torch.as_tensor(
            coarse / max(peak, 1e-6) * rng.uniform(0.0, settings.warp_mm), dtype=torch.float32
        )
    return View(center + shift, linear, size, spacing, warp)


def sample_view(
    volume: torch.Tensor,
    affine: npt.NDArray[np.float64],
    view: View,
    *,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resample ``volume`` ``(C, *S)`` (voxel -> world ``affine``, d+1 square) through ``view``.

    Returns ``(C, size, ..., size)``; zero outside the volume.
    """
    nd = view.ndim
    shape = tuple(volume.shape[1:])
    if view.warp is None:
        # One affine from output to input grid_sample coordinates: affine_grid is far
        # cheaper than mapping every point.
        to_src = np.linalg.inv(affine) @ view.voxel_matrix()  # grid voxels -> source voxels
        n_out = np.diag([*(2.0 / max(view.size - 1, 1) for _ in range(nd)), 1.0])
        n_out[:nd, nd] = -1.0
        n_src = np.diag([*(2.0 / max(s - 1, 1) for s in shape), 1.0])
        n_src[:nd, nd] = -1.0
        theta = n_src @ to_src @ np.linalg.inv(n_out)  # normalised, array axis order
        rev = np.eye(nd + 1)
        rev[:nd, :nd] = np.eye(nd)[::-1]
        theta = rev @ theta @ rev  # grid_sample's (last axis first) order
        theta_t = torch.as_tensor(theta[:nd], dtype=torch.float32, device=volume.device)
        coords = F.affine_grid(theta_t[None], [1, 1, *([view.size] * nd)], align_corners=True)
    else:
        world = view.grid_world(volume.device)
        inv = torch.as_tensor(np.linalg.inv(affine), dtype=torch.float32, device=volume.device)
        idx = world @ inv[:nd, :nd].T + inv[:nd, nd]
        coords = voxel_to_grid_sample(idx, shape).reshape(1, *([view.size] * nd), nd)
    out = F.grid_sample(
        volume[None].float(), coords, mode=mode, padding_mode="zeros", align_corners=True
    )
    return out[0]


def random_lut(
    rng: np.random.Generator, settings: AugmentSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Control points ``(x, y)`` of a random piecewise-linear intensity table, ``y(0) = 0``."""
    x = np.linspace(0.0, 1.0, settings.lut_points)
    y = rng.random(settings.lut_points)
    if rng.random() < settings.monotone_prob:
        y = np.sort(y)
        if rng.random() < 0.5:
            y = y[::-1].copy()
    y[0] = 0.0
    if y.max() <= 0:
        y[-1] = 1.0
    return x, y / y.max()


def _apply_lut(x: torch.Tensor, xs: np.ndarray, ys: np.ndarray) -> torch.Tensor:
    """Piecewise-linear table with equally spaced ``xs`` over [0, 1]."""
    ys_t = torch.as_tensor(ys, dtype=x.dtype, device=x.device)
    pos = x.clamp(0.0, 1.0) * (len(xs) - 1)
    i = pos.floor().clamp(max=len(xs) - 2)
    frac = pos - i
    i = i.long()
    return ys_t[i] + (ys_t[i + 1] - ys_t[i]) * frac


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], amplitude: float, device: torch.device
) -> torch.Tensor:
    nd = len(shape)
    coarse = torch.as_tensor(rng.uniform(-1.0, 1.0, (1, 1, *([4] * nd))), dtype=torch.float32)
    mode = "trilinear" if nd == 3 else "bilinear"
    return F.interpolate(coarse.to(device), size=shape, mode=mode, align_corners=True)[0, 0] * (
        amplitude
    )


def intensity_augment(
    image: torch.Tensor, rng: np.random.Generator, settings: AugmentSettings
) -> torch.Tensor:
    """Random contrast for one view ``(*S)`` with intensities in ~[0, 1]; output normalised."""
    x = image.clamp(0.0, 1.0)
    shape = tuple(x.shape)
    if rng.random() < settings.lut_prob:
        # Below the noise floor stays dark: normalised scans have a black background.
        floor = 0.04
        x = _apply_lut(((x - floor) / (1 - floor)).clamp_min(0.0), *random_lut(rng, settings))
    if settings.gamma > 0:
        x = x.clamp_min(0.0) ** float(np.exp(rng.uniform(-settings.gamma, settings.gamma)))
    if settings.bias > 0:
        x = x * torch.exp(_smooth_field(rng, shape, rng.uniform(0, settings.bias), x.device))
    if rng.random() < settings.blur_prob:
        x = _blur(x, float(rng.uniform(0.3, 1.0)))
    if settings.noise > 0:
        # From the view's own stream (no second seeded generator): a view stays a
        # function of its rng alone, as the training's (seed, step) views need.
        noise = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).to(x.device)
        x = (x + noise * float(rng.uniform(0.0, settings.noise))).clamp_min(0.0)
    if rng.random() < settings.crop_prob:
        x = _crop(x, rng)
    return normalize_input(x)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(np.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    nd = x.dim()
    out = x[None, None]
    conv = F.conv3d if nd == 3 else F.conv2d
    for axis in range(nd):
        shape = [1, 1] + [1] * nd
        shape[2 + axis] = kernel.numel()
        pad = [0] * (2 * nd)
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), kernel.reshape(shape))
    return out[0, 0]


def _crop(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Zero a slab from one side (a smaller field of view)."""
    axis = int(rng.integers(x.dim()))
    n = x.shape[axis]
    depth = int(rng.integers(1, max(2, n // 5)))
    x = x.clone()
    index = [slice(None)] * x.dim()
    index[axis] = slice(0, depth) if rng.random() < 0.5 else slice(n - depth, n)
    x[tuple(index)] = 0.0
    return x


def _ellipsoid(
    world: torch.Tensor, centre: np.ndarray, radii: np.ndarray, rot: np.ndarray
) -> torch.Tensor:
    """Soft indicator (edge ~4 mm wide) of an ellipsoid at world points ``(M, d)``."""
    local = (world - torch.as_tensor(centre, dtype=world.dtype)) @ torch.as_tensor(
        rot, dtype=world.dtype
    )
    r = torch.sqrt(((local / torch.as_tensor(radii, dtype=world.dtype)) ** 2).sum(-1))
    mean_radius = float(np.mean(radii))
    return torch.sigmoid((1.0 - r) * mean_radius / 2.0)


def add_clutter(
    image: torch.Tensor,
    world: torch.Tensor,
    centre: npt.ArrayLike,
    rng: np.random.Generator,
    settings: AugmentSettings,
) -> torch.Tensor:
    """Paint random tissue into the background of a view (``image`` in ~[0, 1]).

    Real head scans show a neck, a face, fat and muscle around the skull that the
    training phantom lacks; without them the detector latches onto whatever it
    has not seen. Ellipsoids of random textured intensity go below (a neck) and
    in front of and below (a face) the subject's centre (RAS world: inferior is -z,
    anterior +y) and at random places around it, only where the view is background,
    so the head itself is never covered.

    Args:
        image: View intensities ``(*S)``.
        world: Subject-world points ``(prod(S // 2), d)`` of the view's half-resolution
            grid (see :meth:`View.half`), where the shapes are painted.
        centre: The subject's centre (brain), world mm.
        rng: Random stream.
        settings: Probabilities (``neck_prob``, ``face_prob``, ``blobs``).
    """
    nd = world.shape[1]
    c = np.asarray(centre, dtype=np.float64)
    shapes: list[tuple[np.ndarray, np.ndarray]] = []
    if nd == 3 and rng.random() < settings.neck_prob:
        offset = np.array([rng.uniform(-10, 10), rng.uniform(-35, 10), rng.uniform(-120, -80)])
        radii = np.array([rng.uniform(35, 60), rng.uniform(35, 60), rng.uniform(45, 80)])
        shapes.append((c + offset, radii))
    if nd == 3 and rng.random() < settings.face_prob:
        offset = np.array([rng.uniform(-10, 10), rng.uniform(50, 85), rng.uniform(-75, -35)])
        radii = np.array([rng.uniform(35, 55), rng.uniform(15, 35), rng.uniform(25, 50)])
        shapes.append((c + offset, radii))
    for _ in range(int(rng.integers(0, settings.blobs + 1))):
        direction = rng.standard_normal(nd)
        direction /= np.linalg.norm(direction)
        shapes.append((c + direction * rng.uniform(70, 130), rng.uniform(8, 35, nd)))
    if not shapes:
        return image
    # Paint on a half-resolution grid (the shapes are smooth), then upsample.
    shape = tuple(image.shape)
    low = tuple(max(2, n // 2) for n in shape)
    paint = torch.zeros(low, dtype=image.dtype, device=image.device)
    for centre_k, radii in shapes:
        rot = random_rotation(rng, nd, 30.0)
        inside = _ellipsoid(world, centre_k, radii, rot).reshape(low)
        texture = 1.0 + _smooth_field(rng, low, rng.uniform(0.0, 0.5), image.device)
        paint = torch.maximum(paint, (inside * rng.uniform(0.15, 1.0) * texture).clamp(0, 1))
    mode = "trilinear" if nd == 3 else "bilinear"
    paint = F.interpolate(paint[None, None], size=shape, mode=mode, align_corners=True)[0, 0]
    return torch.where(image < 0.05, torch.maximum(image, paint), image)


def render_view(
    image: torch.Tensor,
    affine: npt.NDArray[np.float64],
    view: View,
    rng: np.random.Generator,
    settings: AugmentSettings | None,
    *,
    centre: npt.ArrayLike | None = None,
) -> torch.Tensor:
    """The network input ``(size, ..., size)`` of one view: resampled and (optionally) augmented.

    ``image`` is ``(*S)`` with intensities in ~[0, 1] (already anti-aliased);
    ``centre`` (the subject's centre) places the clutter (:func:`add_clutter`).
    """
    sampled = sample_view(image[None], affine, view)[0]
    if settings is None:
        return normalize_input(sampled)
    if centre is not None and rng.random() < settings.clutter_prob:
        world = view.half().grid_world(sampled.device)
        sampled = add_clutter(sampled, world, centre, rng, settings)
    return intensity_augment(sampled, rng, settings)
