"""RAS <-> LPS conversions and Image <-> SimpleITK/antspyx geometry."""

from __future__ import annotations

import ants
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from mmreg.imaging import itk_space
from mmreg.imaging.image import Grid, Image


def oblique_affine(spacing=(1.2, 0.8, 2.0), flip=(1, -1, 1), angles=(20, -15, 35)) -> np.ndarray:
    """Voxel->world RAS: rotated, one axis flipped, anisotropic, off-origin."""
    aff = np.eye(4)
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    aff[:3, :3] = rot @ np.diag(np.multiply(spacing, flip))
    aff[:3, 3] = [-30.0, 12.5, -7.0]
    return aff


def test_points_round_trip_and_sign(rng):
    pts = rng.normal(size=(10, 3)) * 50
    lps = itk_space.ras_to_lps_points(pts)
    assert np.allclose(lps[:, :2], -pts[:, :2])
    assert np.allclose(lps[:, 2], pts[:, 2])
    assert np.allclose(itk_space.lps_to_ras_points(lps), pts)


def test_affine_round_trip_and_hand_values(rng):
    m = np.eye(4)
    m[:3, :3] = rng.normal(size=(3, 3))
    m[:3, 3] = [1.0, 2.0, 3.0]
    lps = itk_space.ras_to_lps_affine(m)
    assert np.allclose(itk_space.lps_to_ras_affine(lps), m)
    assert lps[:3, 3].tolist() == [-1.0, -2.0, 3.0]
    # Entry (i, j) changes sign when exactly one of i, j is x or y and the other is z.
    assert lps[0, 2] == -m[0, 2] and lps[2, 1] == -m[2, 1] and lps[0, 1] == m[0, 1]
    # The LPS matrix maps LPS points as the RAS matrix maps RAS points.
    p = rng.normal(size=(5, 3))
    mapped = p @ m[:3, :3].T + m[:3, 3]
    p_lps = itk_space.ras_to_lps_points(p)
    assert np.allclose(p_lps @ lps[:3, :3].T + lps[:3, 3], itk_space.ras_to_lps_points(mapped))


def test_image_to_sitk_and_ants_oblique_flipped_anisotropic(rng):
    aff = oblique_affine()
    img = Image(rng.random((7, 9, 5)).astype(np.float32), aff)
    s_img = itk_space.image_to_sitk(img)
    a_img = itk_space.image_to_ants(img)
    assert s_img.GetSize() == (7, 9, 5)
    assert np.allclose(s_img.GetSpacing(), [1.2, 0.8, 2.0])
    for ijk in [(0, 0, 0), (1, 2, 3), (6, 8, 4), (3, 0, 2)]:
        ras = img.grid.voxel_to_world([ijk])[0]
        expected = ras * [-1.0, -1.0, 1.0]
        assert np.allclose(s_img.TransformIndexToPhysicalPoint(ijk), expected)
        assert np.allclose(ants.transform_index_to_physical_point(a_img, ijk), expected, atol=1e-4)
        assert s_img[ijk] == pytest.approx(float(img.data[ijk]))
    assert np.array_equal(a_img.numpy(), img.data)

    back = itk_space.sitk_to_image(s_img)
    assert np.array_equal(back.data, img.data)
    assert np.allclose(back.affine, aff)
    back_a = itk_space.ants_to_image(a_img)
    assert np.array_equal(back_a.data, img.data)
    assert np.allclose(back_a.affine, aff, atol=1e-5)


def test_integer_images(rng):
    labels = rng.integers(0, 5, size=(6, 6, 6)).astype(np.int32)
    img = Image(labels, np.eye(4))
    assert np.array_equal(itk_space.sitk_to_image(itk_space.image_to_sitk(img)).data, labels)
    assert np.array_equal(itk_space.ants_to_image(itk_space.image_to_ants(img)).data, labels)


def test_2d_images_drop_and_restore_z(rng):
    aff = np.eye(4)
    rot = Rotation.from_euler("z", 25, degrees=True).as_matrix()
    aff[:3, :3] = rot @ np.diag([0.7, -1.3, 1.0])
    aff[:3, 3] = [4.0, -9.0, 2.5]  # z offset survives only via z_from
    img = Image(rng.random((10, 12)).astype(np.float32), aff)
    s_img = itk_space.image_to_sitk(img)
    assert s_img.GetDimension() == 2
    a_img = itk_space.image_to_ants(img)
    assert a_img.dimension == 2
    for ij in [(0, 0), (3, 7), (9, 11)]:
        ras = img.grid.voxel_to_world([ij])[0]
        assert np.allclose(s_img.TransformIndexToPhysicalPoint(ij), -ras[:2])
        assert np.allclose(ants.transform_index_to_physical_point(a_img, ij), -ras[:2], atol=1e-4)
    back = itk_space.sitk_to_image(s_img, z_from=aff)
    assert np.array_equal(back.data, img.data)
    assert np.allclose(back.affine, aff)
    back_a = itk_space.ants_to_image(a_img, z_from=aff)
    assert np.allclose(back_a.affine, aff, atol=1e-5)
    # Without a template, z = 0 and the z axis is the unit vector.
    plain = itk_space.sitk_to_image(s_img).affine
    assert np.allclose(plain[:2, :2], aff[:2, :2]) and np.allclose(
        plain[:, 2:3].ravel(), [0, 0, 1, 0]
    )


def test_2d_image_outside_xy_plane_is_rejected():
    aff = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])  # coronal
    with pytest.raises(ValueError, match="xy plane"):
        itk_space.image_to_sitk(Image(np.zeros((8, 8), np.float32), aff))


@pytest.mark.parametrize("ndim", [2, 3])
def test_vectors_round_trip_in_lps(rng, ndim):
    shape = (5, 6, 4)[:ndim]
    aff = oblique_affine() if ndim == 3 else np.diag([1.5, -2.0, 1.0, 1.0])
    grid = Grid(shape, aff)
    vec = rng.normal(size=(*shape, 3))
    if ndim == 2:
        vec[..., 2] = 0.0
    s_img = itk_space.vectors_to_sitk(vec, grid)
    assert s_img.GetNumberOfComponentsPerPixel() == ndim
    idx = (1, 2, 3)[:ndim]
    assert np.allclose(s_img[idx], (vec[idx] * [-1.0, -1.0, 1.0])[:ndim])
    back, back_grid = itk_space.sitk_to_vectors(s_img, z_from=aff)
    assert np.allclose(back, vec)
    assert back_grid.shape == shape and np.allclose(back_grid.affine, aff)


def test_sitk_to_image_rejects_vector_image(rng):
    s_img = sitk.GetImageFromArray(rng.random((4, 4, 4, 3)), isVector=True)
    with pytest.raises(ValueError):
        itk_space.sitk_to_image(s_img)
