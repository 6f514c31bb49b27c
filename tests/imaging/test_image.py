"""Reading and validating images: every kind of bad input gets a one-line reason."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from mmreg.errors import InputError
from mmreg.imaging.image import Grid, Image, load_image, load_labels, save_image


def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return path


def _singular(path, data):
    img = nib.Nifti1Image(data, np.eye(4))
    img.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    img.set_qform(None, code=0)
    nib.save(img, path)


def test_round_trip_keeps_data_and_affine(tmp_path, rng):
    affine = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -4], [0, 0, 3, 2], [0, 0, 0, 1]])
    img = Image(rng.random((9, 10, 11)).astype(np.float32), affine)
    back = load_image(save_image(img, tmp_path / "x.nii.gz"))
    np.testing.assert_array_equal(back.data, img.data)
    np.testing.assert_allclose(back.affine, affine)
    assert back.spacing == pytest.approx((1.5, 2.0, 3.0))


def test_grid_world_voxel_round_trip():
    grid = Grid((4, 5, 6), np.array([[2, 0, 0, 1], [0, 3, 0, 2], [0, 0, 4, 3], [0, 0, 0, 1.0]]))
    # voxel (1, 1, 1) -> (2+1, 3+2, 4+3) by hand
    np.testing.assert_allclose(grid.voxel_to_world([[1, 1, 1]]), [[3, 5, 7]])
    np.testing.assert_allclose(grid.world_to_voxel([[3, 5, 7]]), [[1, 1, 1]])
    assert grid.world_coordinates().shape == (4, 5, 6, 3)


def test_single_slice_volume_reads_as_2d(tmp_path, rng):
    path = _nifti(tmp_path / "s.nii.gz", rng.random((12, 14, 1)).astype(np.float32))
    assert load_image(path).ndim == 2
    with pytest.raises(InputError, match="too small"):
        load_image(tmp_path / "s.nii.gz", ndim=3)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p, d: p.write_bytes(b""), "empty file"),
        (lambda p, d: p.write_bytes(gzip.compress(b"hello") * 3), "not a NIfTI|corrupt"),
        (lambda p, d: _nifti(p, np.where(d > 0.5, np.nan, d)), "NaN/Inf"),
        (lambda p, d: _nifti(p, np.where(d > 0.5, np.inf, d)), "NaN/Inf"),
        (lambda p, d: _nifti(p, np.zeros_like(d)), "constant"),
        (lambda p, d: _nifti(p, np.stack([d, d], -1)), "4D image"),
        (lambda p, d: _nifti(p, d[:4, :4, :4]), "too small"),
        (lambda p, d: _singular(p, d), "singular"),
    ],
    ids=["empty", "garbage", "nan", "inf", "zero", "4d", "small", "singular"],
)
def test_bad_images_give_one_line_reasons(tmp_path, rng, make, message):
    path = tmp_path / "bad.nii.gz"
    make(path, rng.random((16, 16, 16)).astype(np.float32))
    with pytest.raises(InputError, match=message) as info:
        load_image(path)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("bad.nii.gz: ")


def test_truncated_file(tmp_path, rng):
    good = _nifti(tmp_path / "good.nii.gz", rng.random((20, 20, 20)).astype(np.float32))
    bad = tmp_path / "bad.nii.gz"
    for n_bytes in (500, len(good.read_bytes()) // 2):
        bad.write_bytes(good.read_bytes()[:n_bytes])
        with pytest.raises(InputError, match="corrupt or truncated"):
            load_image(bad)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_image(tmp_path / "nope.nii.gz")


def test_labels_are_integers_and_may_be_empty(tmp_path):
    path = _nifti(tmp_path / "l.nii.gz", np.zeros((10, 10, 10), np.int16))
    labels = load_labels(path)
    assert labels.data.dtype == np.int32
    assert labels.data.sum() == 0


def test_save_is_atomic_no_temporaries_left(tmp_path, rng):
    save_image(Image(rng.random((8, 8, 8)).astype(np.float32)), tmp_path / "a.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]


def test_channels_round_trip_through_a_file(tmp_path) -> None:
    from mmreg.imaging.image import load_channels_into, save_channels

    rng = np.random.default_rng(0)
    channels = rng.random((9, 7, 2)).astype(np.float32)
    image = Image(channels.mean(-1), np.diag([2.0, 2.0, 1.0, 1.0]), channels=channels)
    path = save_channels(image, tmp_path / "ch.nii.gz")
    back = load_channels_into(Image(image.data, image.affine), path)
    np.testing.assert_array_equal(back.channels, channels)
    assert save_channels(Image(image.data, image.affine), tmp_path / "none.nii.gz") is None
    with pytest.raises(InputError, match="do not fit"):
        load_channels_into(Image(np.zeros((5, 5), np.float32)), path)
    with pytest.raises(ValueError, match="channels"):
        Image(np.zeros((9, 7), np.float32), channels=np.zeros((9, 6, 2)))


def test_broken_symlink_names_its_target(tmp_path):
    link = tmp_path / "annexed.nii.gz"
    link.symlink_to(tmp_path / "not-fetched.nii.gz")
    with pytest.raises(InputError, match=r"broken symbolic link .*not-fetched\.nii\.gz"):
        load_image(link)


def test_read_grid_is_the_grid_load_image_gives(tmp_path, rng):
    from mmreg.imaging.image import read_grid

    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    path = _nifti(tmp_path / "s.nii.gz", rng.random((12, 14, 1)).astype(np.float32), affine)
    grid, image = read_grid(path), load_image(path)
    assert grid.shape == image.shape == (12, 14)
    np.testing.assert_array_equal(grid.affine, image.affine)


def test_same_grid_tolerates_rounding_but_not_a_voxel_shift():
    from mmreg.imaging.image import check_same_grid

    grid = Grid((10, 10, 10), np.diag([2.0, 2.0, 2.0, 1.0]))
    rounded = Grid((10, 10, 10), grid.affine + 1e-5)
    check_same_grid(rounded, grid, name="l.nii.gz", reference_name="i.nii.gz")
    shifted = grid.affine.copy()
    shifted[0, 3] = 2.0
    with pytest.raises(InputError, match=r"^l\.nii\.gz: label map grid .* i\.nii\.gz"):
        check_same_grid(
            Grid((10, 10, 10), shifted), grid, name="l.nii.gz", reference_name="i.nii.gz"
        )


def test_rotated_sform_against_qform_is_reported(tmp_path, rng, caplog):
    import logging

    img = nib.Nifti1Image(rng.random((10, 10, 10)).astype(np.float32), np.eye(4))
    c, s = np.cos(np.radians(5)), np.sin(np.radians(5))
    rotated = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    img.set_sform(rotated, code=2)
    img.set_qform(np.eye(4), code=1)
    nib.save(img, tmp_path / "rot.nii.gz")
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        load_image(tmp_path / "rot.nii.gz")
    assert any("and 5 degrees); using the sform" in r.getMessage() for r in caplog.records)
