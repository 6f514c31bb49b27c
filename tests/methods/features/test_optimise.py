"""The optimisers: warping conventions, the convex search and Adam recover known motion."""

from __future__ import annotations

import math

import pytest
import torch

from mmreg.methods.features.optimise import (
    AdamLevel,
    ConvexAdamSettings,
    MultilevelSettings,
    convex_adam,
    diffusion,
    multilevel_adam,
    smooth_field,
    warp,
)


def _blobs(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Smooth random structure, ``(1, 1, *shape)``: something every window can match."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, *shape, generator=g)
    for _ in range(3):
        x = smooth_field(x)
    return (x - x.mean()) / x.std()


def _shift(x: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
    """``x(p - offset)``: the image moved by ``+offset``, so ``u = offset`` realigns it."""
    return torch.roll(x, shifts=offset, dims=tuple(range(2, 2 + len(offset))))


def _inner(u: torch.Tensor, margin: int) -> torch.Tensor:
    return u[(slice(None), slice(None), *(slice(margin, -margin) for _ in u.shape[2:]))]


def test_warp_by_a_constant_field_shifts():
    x = _blobs((12, 13, 14))
    u = torch.zeros(1, 3, 12, 13, 14)
    u[:, 1] = 2.0
    out = warp(x, u)
    # out(p) = x(p + 2 e1): compare away from the border.
    assert torch.allclose(out[..., :, :-2, :], x[..., :, 2:, :], atol=1e-5)
    assert torch.allclose(warp(x, torch.zeros_like(u)), x, atol=1e-6)


def test_diffusion_by_hand():
    u = torch.zeros(1, 2, 4, 5)
    u[:, 0] = torch.arange(5.0)  # slope 1 along axis 1, flat along axis 0
    # axis 0 differences: 0; axis 1: component 0 has differences 1, component 1 has 0:
    # mean over (2 components x 4 x 4) = 16 / 32.
    assert float(diffusion(u)) == pytest.approx(0.5)
    assert float(diffusion(torch.ones(1, 3, 4, 4, 4))) == 0.0


@pytest.mark.parametrize("ic", [True, False])
def test_convex_search_finds_a_shift_3d(ic):
    fixed = _blobs((24, 24, 24))
    moving = _shift(fixed, (4, -4, 0))
    s = ConvexAdamSettings(grid=2, window=3, inverse_consistent=ic, adam_iterations=0)
    u = convex_adam(fixed, moving, s)
    assert u.shape == (1, 3, 24, 24, 24)
    inner = _inner(u, 6).mean(dim=(2, 3, 4))[0]
    assert inner.tolist() == pytest.approx([4.0, -4.0, 0.0], abs=0.5)


def test_convex_adam_refines_to_subvoxel_2d():
    fixed = _blobs((40, 44))
    moving = _shift(fixed, (3, 2))
    u = convex_adam(fixed, moving, ConvexAdamSettings(grid=2, window=3, adam_iterations=40))
    inner = _inner(u, 8)
    assert inner.mean(dim=(2, 3))[0].tolist() == pytest.approx([3.0, 2.0], abs=0.3)


@pytest.mark.parametrize("samples", [0, 300])
def test_multilevel_adam_follows_a_shift(samples):
    fixed = torch.cat([_blobs((32, 32, 32), s) for s in range(3)], dim=1)
    moving = _shift(fixed, (2, 0, -2))
    levels = (AdamLevel(4, 2e-2, 60, 0.1), AdamLevel(2, 1e-2, 60, 0.1))
    u = multilevel_adam(fixed, moving, MultilevelSettings(levels=levels, samples=samples))
    inner = _inner(u, 8).mean(dim=(2, 3, 4))[0]
    assert inner.tolist() == pytest.approx([2.0, 0.0, -2.0], abs=0.5)


def test_multilevel_adam_is_seeded():
    fixed = _blobs((16, 16, 16))
    moving = _shift(fixed, (1, 0, 0))
    levels = (AdamLevel(2, 1e-2, 10, 0.5),)
    runs = [
        multilevel_adam(fixed, moving, MultilevelSettings(levels=levels, samples=100, seed=s))
        for s in (3, 3, 4)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_control_grid_coarser_than_the_level():
    # Several channels: the cosine over a single channel is only its sign.
    fixed = torch.cat([_blobs((32, 32), s) for s in range(3)], dim=1)
    moving = _shift(fixed, (0, 3))
    levels = (AdamLevel(1, 2e-2, 80, 0.1),)
    u = multilevel_adam(fixed, moving, MultilevelSettings(levels=levels, control=4))
    assert _inner(u, 8).mean(dim=(2, 3))[0].tolist() == pytest.approx([0.0, 3.0], abs=0.5)


def test_initial_field_is_kept_when_there_is_nothing_to_do():
    fixed = _blobs((16, 16, 16))
    start = torch.zeros(1, 3, 16, 16, 16)
    start[:, 0] = 1.5
    levels = (AdamLevel(2, 1e-2, 0, 0.5),)
    u = multilevel_adam(fixed, fixed, MultilevelSettings(levels=levels), initial=start)
    assert torch.allclose(_inner(u, 2), _inner(start, 2), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [{"grid": 0}, {"window": 0}, {"adam_iterations": -1}, {"lambda_reg": math.nan}, {"lr": 0}],
)
def test_bad_convex_settings(kwargs):
    with pytest.raises(ValueError):
        ConvexAdamSettings(**kwargs)


def test_feature_maps_must_match():
    with pytest.raises(ValueError, match="differ"):
        convex_adam(torch.rand(1, 2, 8, 8, 8), torch.rand(1, 2, 8, 8, 9))
