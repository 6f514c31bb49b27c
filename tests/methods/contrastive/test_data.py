"""Channel images, working grids and resampling."""

from __future__ import annotations

import numpy as np
import pytest

from mmreg.errors import InputError
from mmreg.imaging.image import Image, save_image
from mmreg.methods.contrastive.data import (
    ChannelImage,
    as_channels,
    covering_shape,
    inside_mask,
    load_channels,
    normalise_channels,
    sample,
    working_grid,
)


def test_as_channels_forms() -> None:
    affine = np.diag([2.0, 3.0, 1.0, 1.0])
    stacked = as_channels(Image(np.zeros((5, 6, 2), np.float32), affine))
    assert stacked.data.shape == (2, 5, 6)
    single = as_channels(Image(np.zeros((5, 6), np.float32), affine))
    assert single.channels == 1
    listed = as_channels([Image(np.ones((5, 6), np.float32), affine)] * 3)
    assert listed.data.shape == (3, 5, 6)
    with pytest.raises(InputError, match="3D volume"):
        as_channels(Image(np.zeros((5, 6, 7), np.float32), affine))
    with pytest.raises(InputError, match="one grid"):
        as_channels([Image(np.zeros((5, 6)), affine), Image(np.zeros((5, 6)), np.eye(4))])


def test_load_channels_from_files(tmp_path) -> None:
    affine = np.diag([2.0, 2.0, 1.0, 1.0])
    ramp = np.arange(80, dtype=np.float32).reshape(8, 10)
    a = save_image(Image(ramp, affine), tmp_path / "a.nii.gz")
    b = save_image(Image(2 * ramp + 1, affine), tmp_path / "b.nii.gz")
    img = load_channels([a, b])
    assert img.data[:, 0, 1].tolist() == [1.0, 3.0]
    np.testing.assert_allclose(img.affine, affine)


def test_geometry_of_a_channel_image() -> None:
    affine = np.diag([2.0, 2.0, 1.0, 1.0])
    affine[:2, 3] = [10.0, -4.0]
    img = ChannelImage(np.zeros((1, 5, 3)), affine)
    np.testing.assert_allclose(img.centre, [14.0, -2.0])
    np.testing.assert_allclose(img.corners().min(0), [9.0, -5.0])
    np.testing.assert_allclose(img.corners().max(0), [19.0, 1.0])
    assert covering_shape(img, 2.0) == (5, 3)
    assert covering_shape(img, 2.0, multiple=4) == (8, 4)
    # Rotated by 90 degrees the box swaps its sides.
    assert covering_shape(img, 2.0, angle_deg=90.0) == (3, 5)


def test_sample_on_the_image_grid_is_the_identity() -> None:
    rng = np.random.default_rng(0)
    affine = np.diag([2.5, 2.5, 1.0, 1.0])
    affine[:2, 3] = [-5.0, 7.0]
    img = ChannelImage(rng.random((2, 6, 9)), affine)
    grid = working_grid(img.centre, img.shape, 2.5)
    np.testing.assert_allclose(sample(img, grid, img.shape), img.data, atol=1e-6)
    assert inside_mask(img, grid, img.shape).all()


def test_sample_on_a_rotated_grid() -> None:
    # Grid axes turned 90 degrees counter-clockwise: grid (a, b) sits at world
    # centre + (-(b - 1), a - 1.5), i.e. image (2 - b, a): the image turned clockwise.
    img = ChannelImage(np.arange(12.0).reshape(1, 3, 4), np.eye(4))
    grid = working_grid(img.centre, (4, 3), 1.0, angle_deg=90.0)
    out = sample(img, grid, (4, 3))[0]
    np.testing.assert_allclose(out, np.rot90(img.data[0], -1), atol=1e-6)


def test_flipped_affine_is_handled() -> None:
    # Like the MR stored left-right flipped (LAS): negative x spacing.
    data = np.arange(6.0).reshape(1, 3, 2)
    affine = np.diag([-2.0, 2.0, 1.0, 1.0])
    affine[0, 3] = 4.0
    img = ChannelImage(data, affine)
    grid = working_grid(img.centre, (3, 2), 2.0)  # world-aligned: x increasing
    np.testing.assert_allclose(sample(img, grid, (3, 2))[0], data[0][::-1], atol=1e-9)


def test_normalise_channels() -> None:
    data = np.stack([np.linspace(0, 10, 101), np.linspace(0, 1, 101) ** 2])
    out = normalise_channels(data)
    assert out.shape == data.shape and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert normalise_channels(np.zeros((1, 4))).tolist() == [[0.0] * 4]
