"""Input grids, resampling, and random views: keypoints must follow the warp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from mmreg.imaging.image import Image
from mmreg.imaging.transform import Transform
from mmreg.methods.keymorph.augment import (
    AugmentSettings,
    View,
    intensity_augment,
    random_lut,
    random_rotation,
    random_view,
    sample_view,
)
from mmreg.methods.keymorph.sampling import input_grid, normalize_input, sample_image

torch.set_num_threads(1)


def _dot_volume(shape: tuple[int, ...], at: tuple[int, ...]) -> np.ndarray:
    vol = np.zeros(shape, np.float32)
    vol[at] = 1.0
    return ndimage.gaussian_filter(vol, 1.5).astype(np.float32)


def test_input_grid_is_centred_and_axis_aligned() -> None:
    grid = input_grid([10.0, -5.0, 2.0], size=8, side_mm=16.0)
    assert grid.spacing == (2.0, 2.0, 2.0)
    corners = grid.voxel_to_world([[0, 0, 0], [7, 7, 7]])
    assert np.allclose(corners.mean(0), [10.0, -5.0, 2.0])
    assert np.allclose(corners[1] - corners[0], [14.0, 14.0, 14.0])


def test_input_grid_2d_lies_in_the_image_plane() -> None:
    affine = np.array([[2.0, 0, 0, 0], [0, 0, 1.0, 7.0], [0, 2.0, 0, 0], [0, 0, 0, 1.0]])
    image = Image(np.zeros((4, 4), np.float32), affine)  # a coronal slice at y = 7
    grid = input_grid([0.0, 7.0, 0.0], size=4, side_mm=8.0, ndim=2, like=image)
    world = grid.voxel_to_world([[0, 0], [3, 3]])
    assert np.allclose(world[:, 1], 7.0)
    assert np.allclose(world[1] - world[0], [6.0, 0.0, 6.0])


def test_sample_image_linear_and_deformable_paths_agree() -> None:
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -20.0
    image = Image(ndimage.gaussian_filter(rng.random((21, 21, 21)), 2).astype(np.float32), affine)
    grid = input_grid([0.0, 0.0, 0.0], size=8, side_mm=24.0)
    shift = np.eye(4)
    shift[:3, 3] = [1.5, -2.0, 0.5]
    linear = sample_image(image, grid, Transform.from_affine(shift), smooth=False)
    # The same map as a zero field followed by the affine takes the point-wise path.
    zero = Transform.from_field(grid, np.zeros((*grid.shape, 3)))
    deformable = sample_image(image, grid, zero.then(Transform.from_affine(shift)), smooth=False)
    assert torch.allclose(linear, deformable, atol=1e-5)
    # And both equal a direct pull with the Transform machinery.
    direct = Transform.from_affine(shift).apply(image, grid).data
    assert np.allclose(linear.numpy(), direct, atol=1e-5)


def test_normalize_input_maps_the_object_to_unit_range() -> None:
    x = torch.zeros(10, 10)
    x[2:8, 2:8] = torch.linspace(0.5, 5.0, 36).reshape(6, 6)
    out = normalize_input(x)
    assert float(out.max()) == 1.0 and float(out.min()) == 0.0
    assert float(out[2, 2]) == pytest.approx(0.5 / float(torch.quantile(x[x > 0.5], 0.99)))
    assert torch.equal(normalize_input(torch.zeros(4, 4)), torch.zeros(4, 4))


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_rotations_are_proper(ndim: int) -> None:
    rng = np.random.default_rng(1)
    for max_deg in (None, 15.0):
        r = random_rotation(rng, ndim, max_deg)
        assert np.allclose(r @ r.T, np.eye(ndim), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
    small = random_rotation(rng, 3, 10.0)
    assert np.degrees(np.arccos((np.trace(small) - 1) / 2)) <= 10.0 + 1e-9


@pytest.mark.parametrize("warp", [False, True])
def test_keypoints_follow_the_view_warp(warp: bool) -> None:
    """A bright dot at world p shows up in the view at a voxel that maps back to p."""
    shape = (40, 40, 40)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -40.0
    vol = torch.from_numpy(_dot_volume(shape, (25, 14, 20)))
    p = affine[:3, :3] @ np.array([25, 14, 20]) + affine[:3, 3]
    rng = np.random.default_rng(3)
    settings = AugmentSettings(warp_prob=1.0 if warp else 0.0, warp_mm=5.0, far_shift_prob=0.0)
    for _ in range(3):
        view = random_view(
            rng, [0.0, 0.0, 0.0], size=32, spacing=2.5, settings=settings, rotation="full"
        )
        out = sample_view(vol[None], affine, view)[0]
        w = out.clamp_min(0) ** 4  # sharpen: the centre of mass of the dot
        idx = torch.stack(torch.meshgrid(*[torch.arange(32.0)] * 3, indexing="ij"), -1).reshape(
            -1, 3
        )
        com = (w.reshape(-1, 1) * idx).sum(0) / w.sum()
        back = view.to_world(com[None])[0].numpy()
        assert np.linalg.norm(back - p) < 1.5  # well under a view voxel (2.5 mm)


def test_view_to_world_is_differentiable_through_the_warp() -> None:
    view = View(np.zeros(2), np.eye(2), size=8, spacing=1.0, warp=torch.ones(1, 2, 5, 5) * 0.5)
    kp = torch.tensor([[3.0, 4.0]], requires_grad=True)
    out = view.to_world(kp)
    assert torch.allclose(out, torch.tensor([[3.0 - 3.5 + 0.5, 4.0 - 3.5 + 0.5]]))
    out.sum().backward()
    assert torch.allclose(kp.grad, torch.ones(1, 2))


def test_random_lut_keeps_background_dark_and_is_seeded() -> None:
    settings = AugmentSettings()
    a = random_lut(np.random.default_rng(5), settings)
    b = random_lut(np.random.default_rng(5), settings)
    assert np.array_equal(a[1], b[1])
    for seed in range(20):
        xs, ys = random_lut(np.random.default_rng(seed), settings)
        assert ys[0] == 0.0 and ys.max() == pytest.approx(1.0) and len(xs) == len(ys)


def test_intensity_augment_is_seeded_and_normalised() -> None:
    x = torch.rand(16, 16, 16)
    settings = AugmentSettings(lut_prob=1.0, blur_prob=1.0, crop_prob=1.0)
    a = intensity_augment(x, np.random.default_rng(7), settings)
    b = intensity_augment(x, np.random.default_rng(7), settings)
    c = intensity_augment(x, np.random.default_rng(8), settings)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) == pytest.approx(1.0)
