"""Feature maps of two images -> a dense displacement field (instance optimisation).

Both optimisers work on the fixed image's voxel grid. The moving image has already been
resampled onto it through the initial (e.g. affine) transform, so the field ``u`` is the
residual: ``warped(p) = moving_on_fixed(p + u(p))``. Displacements are in voxels of that
grid, one component per array axis: ``u[:, a]`` moves along axis ``a``.

- :func:`convex_adam`, the ConvexAdam class (Siebert, Hansen and Heinrich, 2021; winner
  of Learn2Reg): features pooled onto a coarse grid; a cost volume of feature differences
  over a discrete window of displacements; a coupled convex optimisation that alternates
  a per-point argmin with smoothing of the field while the coupling grows; optionally
  inverse consistency between the forward and backward searches; then Adam on a finer
  grid with a diffusion regulariser.
- :func:`multilevel_adam`, the instance optimisation of Mok et al. (CVPR 2024): Adam on
  the displacement at three levels, coarse to fine, minimising minus the cosine
  similarity of Gaussian-smoothed feature maps plus a diffusion regulariser.

Example:
    >>> import torch
    >>> f = torch.zeros(1, 1, 16, 16, 16); f[..., 6:10, 6:10, 6:10] = 1.0
    >>> m = torch.roll(f, shifts=2, dims=2)  # moving = fixed shifted by +2 along axis 0
    >>> u = convex_adam(f, m, ConvexAdamSettings(grid=2, window=3, adam_iterations=0))
    >>> round(float(u[0, 0, 8, 8, 8]))
    2
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "AdamLevel",
    "ConvexAdamSettings",
    "MultilevelSettings",
    "convex_adam",
    "diffusion",
    "multilevel_adam",
    "smooth_field",
    "warp",
]

#: Coupling weights of the convex stage, growing (ConvexAdam's schedule).
COUPLING = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: Cost per squared voxel of displacement added to the cost volume, so that ties (flat
#: regions, where every displacement costs the same) resolve to no motion.
TIE_BREAK = 1e-4
#: Cost-volume scale: feature differences are averaged over channels and multiplied by
#: this, so any channel count costs like the 12 MIND-SSC channels ConvexAdam tuned for.
COST_CHANNELS = 12.0

Progress = Callable[[str, int, int], None]


def _pool(ndim: int) -> Callable[..., torch.Tensor]:
    return F.avg_pool3d if ndim == 3 else F.avg_pool2d


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Replicate-pad the spatial axes up to a multiple; returns the original sizes."""
    sizes = tuple(x.shape[2:])
    pads: list[int] = []
    for size in reversed(sizes):
        pads += [0, (-size) % multiple]
    if any(pads):
        x = F.pad(x, pads, mode="replicate")
    return x, sizes


def _crop(x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    return x[(slice(None), slice(None), *(slice(0, s) for s in sizes))]


def smooth_field(u: torch.Tensor, passes: int = 1, size: int = 3) -> torch.Tensor:
    """Box-smooth a field ``passes`` times (replicated borders)."""
    ndim = u.dim() - 2
    pool = _pool(ndim)
    r = size // 2
    for _ in range(passes):
        u = pool(F.pad(u, (r,) * (2 * ndim), mode="replicate"), size, stride=1)
    return u


def _identity(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    axes = [torch.arange(s, dtype=torch.float32, device=device) for s in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)[None]


def warp(x: torch.Tensor, u: torch.Tensor, *, mode: str = "bilinear") -> torch.Tensor:
    """``x(p + u(p))`` for ``x`` ``(B, C, *sp)`` and ``u`` ``(B, ndim, *sp)`` in voxels.

    Samples outside ``x`` take the border value.
    """
    sizes = tuple(x.shape[2:])
    pos = _identity(sizes, x.device) + u
    scale = torch.tensor([max(s - 1, 1) for s in sizes], dtype=u.dtype, device=u.device)
    norm = 2.0 * pos / scale.view(1, -1, *([1] * len(sizes))) - 1.0
    # grid_sample wants (x, y[, z]) = reversed array axes, channels last.
    grid = norm.flip(1).movedim(1, -1)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=True)


def diffusion(u: torch.Tensor) -> torch.Tensor:
    """Mean squared finite difference of ``u`` along every axis (a diffusion energy)."""
    ndim = u.dim() - 2
    total = u.new_zeros(())
    for axis in range(ndim):
        total = total + u.diff(dim=2 + axis).pow(2).mean()
    return total


# ---------------------------------------------------------------- ConvexAdam


@dataclass(frozen=True)
class ConvexAdamSettings:
    """Parameters of :func:`convex_adam` (voxels of the working grid unless stated).

    Attributes:
        grid: Spacing of the coarse grid of the convex stage.
        window: Half-width of the discrete search, in coarse-grid steps (the search
            reaches ``grid * window`` voxels).
        inverse_consistent: Average the forward search with the inverted backward one.
        adam_grid: Spacing of the grid Adam optimises.
        adam_iterations: Adam steps (0: the convex result only).
        lambda_reg: Weight of the diffusion regulariser (in ``adam_grid`` units).
        lr: Adam's learning rate (``adam_grid`` voxels).
        smooth_passes: Box smoothings of the field inside each Adam step.
    """

    grid: int = 4
    window: int = 4
    inverse_consistent: bool = True
    adam_grid: int = 2
    adam_iterations: int = 80
    lambda_reg: float = 1.25
    lr: float = 1.0
    smooth_passes: int = 3

    def __post_init__(self) -> None:
        for name in ("grid", "window", "adam_grid"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.adam_iterations < 0 or self.smooth_passes < 0:
            raise ValueError("adam_iterations and smooth_passes must not be negative")
        if not (self.lambda_reg >= 0 and math.isfinite(self.lambda_reg)):
            raise ValueError("lambda_reg must be finite and not negative")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError("lr must be positive")


def _offsets(ndim: int, window: int, device: torch.device) -> torch.Tensor:
    """All integer offsets of the search window, ``(O, ndim)``."""
    rng = range(-window, window + 1)
    return torch.tensor(list(itertools.product(rng, repeat=ndim)), dtype=torch.float32).to(device)


def _cost_volume(fixed: torch.Tensor, moving: torch.Tensor, window: int) -> torch.Tensor:
    """``cost[o, p] = mean_c |fixed(p) - moving(p + o)|``, smoothed twice; ``(O, *sp)``."""
    ndim = fixed.dim() - 2
    sizes = tuple(fixed.shape[2:])
    padded = F.pad(moving, (window,) * (2 * ndim), mode="replicate")
    channels = fixed.shape[1]
    costs = []
    for offset in itertools.product(range(-window, window + 1), repeat=ndim):
        moved = [slice(window + o, window + o + s) for o, s in zip(offset, sizes, strict=True)]
        index = (slice(None), slice(None), *moved)
        costs.append((fixed - padded[index]).abs().sum(1) * (COST_CHANNELS / channels))
    cost = torch.cat(costs, dim=0)[:, None]
    return smooth_field(cost, passes=2)[:, 0]


def _coupled_convex(cost: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Alternate per-point argmin and smoothing while the coupling grows; ``(1, ndim, *sp)``."""
    ndim = offsets.shape[1]
    sizes = tuple(cost.shape[1:])
    flat = cost.reshape(cost.shape[0], -1)
    norms = offsets.pow(2).sum(1, keepdim=True)  # (O, 1)

    def field(choice: torch.Tensor) -> torch.Tensor:
        u = offsets[choice].T.reshape(1, ndim, *sizes)
        return smooth_field(u)

    flat = flat + TIE_BREAK * norms
    soft = field(flat.argmin(0))
    # argmin_o cost + w |o - soft|^2 = argmin_o cost + w (|o|^2 - 2 o.soft): |soft|^2 is
    # the same for every o, and the rest is one fused matrix product [o, |o|^2] @
    # [-2w soft; w] added to the cost (the cost volume is the large operand on a CPU).
    augmented = torch.cat([offsets, norms], dim=1)  # (O, ndim + 1)
    ones = torch.ones(1, flat.shape[1], dtype=flat.dtype, device=flat.device)
    for weight in COUPLING:
        rhs = torch.cat([-2.0 * weight * soft.reshape(ndim, -1), weight * ones], dim=0)
        soft = field(torch.addmm(flat, augmented, rhs).argmin(0))
    return soft


def _invert_consistently(
    forward: torch.Tensor, backward: torch.Tensor, iterations: int = 15
) -> torch.Tensor:
    """Make the forward and backward fields each other's inverse (ConvexAdam's scheme)."""
    fwd, bwd = forward, backward
    for _ in range(iterations):
        fwd, bwd = 0.5 * (fwd - warp(bwd, fwd)), 0.5 * (bwd - warp(fwd, bwd))
    return fwd


def _upsample(u: torch.Tensor, factor: int, sizes: tuple[int, ...]) -> torch.Tensor:
    """A field on a grid of spacing ``factor`` -> the full grid (values scaled to voxels).

    Coarse point ``q`` sits at the centre of its ``factor`` block, which is where
    ``interpolate(align_corners=False)`` puts it.
    """
    if factor == 1:
        return _crop(u, sizes)
    mode = "trilinear" if u.dim() == 5 else "bilinear"
    full = F.interpolate(u * factor, scale_factor=factor, mode=mode, align_corners=False)
    return _crop(full, sizes)


def _downsample(u: torch.Tensor, factor: int) -> torch.Tensor:
    """Inverse of :func:`_upsample` on a padded grid (block means, values in coarse units)."""
    if factor == 1:
        return u
    return _pool(u.dim() - 2)(u, factor, stride=factor) / factor


def convex_adam(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    settings: ConvexAdamSettings | None = None,
    *,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The displacement ``u`` (voxels, ``(1, ndim, *sp)``) that aligns ``moving`` to ``fixed``.

    Args:
        fixed: Fixed feature map ``(1, C, *sp)``.
        moving: Moving feature map on the same grid.
        settings: See :class:`ConvexAdamSettings`.
        progress: Called as ``progress(stage, done, total)``.
    """
    s = settings or ConvexAdamSettings()
    if fixed.shape != moving.shape:
        raise ValueError(f"feature maps differ in shape: {fixed.shape} vs {moving.shape}")
    ndim = fixed.dim() - 2
    step = math.lcm(s.grid, s.adam_grid)
    fixed_p, sizes = _pad_to(fixed.float(), step)
    moving_p, _ = _pad_to(moving.float(), step)
    pool = _pool(ndim)
    with torch.no_grad():
        coarse_f = pool(fixed_p, s.grid, stride=s.grid)
        coarse_m = pool(moving_p, s.grid, stride=s.grid)
        offsets = _offsets(ndim, s.window, fixed.device)
        u = _coupled_convex(_cost_volume(coarse_f, coarse_m, s.window), offsets)
        if s.inverse_consistent:
            back = _coupled_convex(_cost_volume(coarse_m, coarse_f, s.window), offsets)
            u = _invert_consistently(u, back)
        if progress is not None:
            progress("convex", 1, 1)
        padded_sizes = tuple(fixed_p.shape[2:])
        u = _upsample(u, s.grid, padded_sizes)
    if s.adam_iterations == 0:
        return _crop(u, sizes)
    u = _adam(fixed_p, moving_p, u, s, progress)
    return _crop(u, sizes)


def _adam(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    u: torch.Tensor,
    s: ConvexAdamSettings,
    progress: Progress | None,
) -> torch.Tensor:
    ndim = fixed.dim() - 2
    pool = _pool(ndim)
    g = s.adam_grid
    feat_f = pool(fixed, g, stride=g) if g > 1 else fixed
    feat_m = pool(moving, g, stride=g) if g > 1 else moving
    param = torch.nn.Parameter(_downsample(u, g).detach().clone())
    optimiser = torch.optim.Adam([param], lr=s.lr)
    scale = COST_CHANNELS / fixed.shape[1]
    for it in range(s.adam_iterations):
        optimiser.zero_grad()
        field = smooth_field(param, passes=s.smooth_passes)
        cost = (warp(feat_m, field) - feat_f).pow(2).sum(1).mean() * scale
        loss = cost + s.lambda_reg * diffusion(field)
        loss.backward()
        optimiser.step()
        if progress is not None:
            progress("adam", it + 1, s.adam_iterations)
    with torch.no_grad():
        field = smooth_field(param, passes=s.smooth_passes)
        return _upsample(field, g, tuple(fixed.shape[2:]))


# ---------------------------------------------------------------- Mok et al.'s IO


@dataclass(frozen=True)
class AdamLevel:
    """One level of :func:`multilevel_adam`: feature grid ``shrink``, Adam ``lr`` (in units of
    the normalised ``[-1, 1]`` image extent, as in Mok et al.), ``iterations``, ``lambda_reg``."""

    shrink: int
    lr: float
    iterations: int
    lambda_reg: float


@dataclass(frozen=True)
class MultilevelSettings:
    """Parameters of :func:`multilevel_adam` (defaults: Mok et al.'s three levels).

    Attributes:
        levels: Coarse to fine.
        sigma: Gaussian smoothing of the feature maps, in voxels of each level.
        control: Least spacing (working-grid voxels) of the grid of displacements Adam
            moves; a level's own grid when it is coarser. 1 is Mok et al.'s dense field;
            2 halves the unknowns per axis at a small cost in detail.
        samples: Voxels at which the similarity is evaluated per step, drawn afresh each
            step (0: every voxel). On a CPU the full-resolution level is the cost;
            sampling keeps its detail at a fraction of the price.
        seed: Seed of the voxel sampling.
    """

    levels: tuple[AdamLevel, ...] = (
        AdamLevel(4, 1e-2, 100, 0.6),
        AdamLevel(2, 5e-3, 80, 0.5),
        AdamLevel(1, 3e-3, 50, 0.4),
    )
    sigma: float = 1.0
    control: int = 1
    samples: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("at least one level is needed")
        if self.control < 1 or self.samples < 0:
            raise ValueError("control must be >= 1 and samples >= 0")


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of the spatial axes (replicated borders).

    Each pass is a weighted sum of shifted views: on a CPU that is more than twice as fast
    as a grouped convolution over many feature channels.
    """
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    weights = (kernel / kernel.sum()).tolist()
    ndim = x.dim() - 2
    for axis in range(ndim):
        pads = [0, 0] * ndim
        pads[2 * (ndim - 1 - axis)] = radius
        pads[2 * (ndim - 1 - axis) + 1] = radius
        padded = F.pad(x, pads, mode="replicate")
        n = x.shape[2 + axis]
        out = padded.narrow(2 + axis, 0, n) * weights[0]
        for i in range(1, len(weights)):
            out.add_(padded.narrow(2 + axis, i, n), alpha=weights[i])
        x = out
    return x


def _normalised(pos: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """Voxel positions ``(N, ndim)`` -> grid_sample coordinates ``(1, N, 1[, 1], ndim)``."""
    scale = torch.tensor([max(n - 1, 1) for n in sizes], dtype=pos.dtype, device=pos.device)
    norm = (2.0 * pos / scale - 1.0).flip(-1)
    return norm.view(1, -1, *([1] * (len(sizes) - 1)), len(sizes))


def _sample(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``x`` ``(1, C, *sp)`` at voxel positions ``(N, ndim)`` -> ``(C, N)`` (linear, border)."""
    sizes = tuple(x.shape[2:])
    out = F.grid_sample(
        x, _normalised(pos, sizes), mode="bilinear", padding_mode="border", align_corners=True
    )
    return out.reshape(x.shape[1], -1)


def _unravel(index: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """Flat C-order indices -> voxel positions ``(N, ndim)`` (float)."""
    out = []
    for n in reversed(sizes):
        out.append(index % n)
        index = index // n
    return torch.stack(out[::-1], dim=1).float()


def multilevel_adam(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    settings: MultilevelSettings | None = None,
    *,
    initial: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Mok et al.'s coarse-to-fine Adam on ``-cos`` of smoothed features; voxels, full grid.

    At each level the feature maps are block-averaged by the level's ``shrink`` and
    Gaussian-smoothed; Adam moves the displacements on a control grid (the level's grid,
    or ``control`` voxels if coarser; linear in between) to maximise the mean cosine
    similarity of the fixed features and the warped moving features (at every voxel, or
    at ``samples`` random ones per step) minus ``lambda_reg`` times the diffusion energy.

    Args:
        fixed: Fixed feature map ``(1, C, *sp)``.
        moving: Moving feature map on the same grid.
        settings: See :class:`MultilevelSettings`.
        initial: A starting field (voxels, full grid), e.g. from :func:`convex_adam`.
        progress: Called as ``progress(stage, done, total)``.
    """
    s = settings or MultilevelSettings()
    ndim = fixed.dim() - 2
    step = max(max(level.shrink, s.control) for level in s.levels)
    fixed_p, sizes = _pad_to(fixed.float(), step)
    moving_p, _ = _pad_to(moving.float(), step)
    full = tuple(fixed_p.shape[2:])
    u = torch.zeros(1, ndim, *full) if initial is None else _pad_to(initial.float(), step)[0]
    pool = _pool(ndim)
    generator = torch.Generator().manual_seed(int(s.seed))
    total = sum(level.iterations for level in s.levels)
    done = 0
    for level in s.levels:
        g = level.shrink
        ratio = max(1, s.control // g)  # control spacing in level voxels
        feat_f = _gaussian(pool(fixed_p, g, stride=g) if g > 1 else fixed_p, s.sigma)
        feat_m = _gaussian(pool(moving_p, g, stride=g) if g > 1 else moving_p, s.sigma)
        # Channels last: a sampled voxel's channels sit together, which makes grid_sample
        # (forward and backward) several times faster on a CPU.
        layout = torch.channels_last_3d if ndim == 3 else torch.channels_last
        feat_m = feat_m.contiguous(memory_format=layout)
        level_sizes = tuple(feat_f.shape[2:])
        # Normalised units (the image spans [-1, 1]) so that Mok et al.'s rates apply.
        sizes_t = torch.tensor(level_sizes, dtype=torch.float32)
        to_norm = (2.0 / (sizes_t - 1).clamp(min=1)).view(1, ndim, *([1] * ndim))
        start = _downsample(u, g * ratio) * ratio
        param = torch.nn.Parameter((start * to_norm).detach().clone())
        optimiser = torch.optim.Adam([param], lr=level.lr)
        n_voxels = math.prod(level_sizes)
        dense = s.samples == 0 or s.samples >= n_voxels
        all_pos = _identity(level_sizes, fixed.device).reshape(ndim, -1).T if dense else None
        flat_f = feat_f.reshape(feat_f.shape[1], -1)
        # Voxel-major copy for the sampled path: gathering rows beats gathering columns.
        rows_f = flat_f.T if dense else flat_f.T.contiguous()
        for _ in range(level.iterations):
            optimiser.zero_grad()
            if dense:
                assert all_pos is not None
                pos, target = all_pos, flat_f
            else:
                # Whole voxels: the fixed features are read, not interpolated.
                index = torch.randint(n_voxels, (s.samples,), generator=generator)
                pos = _unravel(index, level_sizes)
                target = rows_f[index].T
            # Control point q sits at the centre of its block: level voxel r*q + (r-1)/2.
            ctrl = param / to_norm
            disp = _sample(ctrl, (pos - (ratio - 1) / 2.0) / ratio).T if ratio > 1 else None
            if disp is None:
                disp = ctrl.reshape(ndim, -1).T if dense else _sample(ctrl, pos).T
            warped = _sample(feat_m, pos + disp)
            cos = F.cosine_similarity(warped, target, dim=0, eps=1e-6).mean()
            loss = -cos + level.lambda_reg * diffusion(ctrl) / ratio**2
            loss.backward()
            optimiser.step()
            done += 1
            if progress is not None:
                progress("adam", done, total)
        with torch.no_grad():
            # Control values are in level voxels; _upsample wants control-grid units.
            u = _upsample(param / to_norm / ratio, g * ratio, full)
    return _crop(u.detach(), sizes)
