"""Mid-coronal slice synthesis: the spine path on phantoms, fallback, sizes, frames."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

from mmreg.errors import InputError
from mmreg.imaging.image import Image
from mmreg.imaging.phantoms.wholebody import (
    WholeBodySettings,
    WholeBodySubject,
    generate_wholebody_subject,
)
from mmreg.imaging.slice_synthesis import (
    CoronalSlice,
    SliceSettings,
    SpineNotFoundWarning,
    crop_or_pad,
    detect_spine,
    output_grid,
    synthesize_coronal_slice,
)

SMALL = WholeBodySettings(
    mr_spacing_mm=4.4, mr_size=(112, 251), dxa_spacing_mm=4.4, dxa_size=(150, 400)
)
SMALL_SLICE = SliceSettings(size=(112, 251), spacing_mm=4.4)


def _path_errors(subject: WholeBodySubject, out: CoronalSlice) -> tuple[np.ndarray, float]:
    """AP error (mm) of the path on the detected rows of the vertebral column, and the
    share of the column (inside the field of view) that the detection covers.

    The ends are left out: 20 mm above S1, where the column meets the sacrum (bone
    behind it, which pulls the smoothed path back for a vertebra or so), and 10 mm
    at the top, where the field of view may cut the neck.
    """
    true = subject.spine_path_mr
    order = np.argsort(true[:, 2])
    z, y = out.path.z, out.path.y
    lo, hi = true[:, 2].min() + 20.0, min(true[:, 2].max(), z.max()) - 10.0
    rows = out.path.on_spine & (z >= lo) & (z <= hi)
    err = y[rows] - np.interp(z[rows], true[order, 2], true[order, 1])
    covered = (z[rows].max() - z[rows].min()) / (hi - lo)
    return err, float(covered)


@pytest.fixture(scope="module")
def subject() -> WholeBodySubject:
    return generate_wholebody_subject(9, settings=SMALL)  # a strongly curved spine


@pytest.fixture(scope="module")
def synthesized(subject: WholeBodySubject) -> CoronalSlice:
    return synthesize_coronal_slice([subject.mr_fat, subject.mr_water], settings=SMALL_SLICE)


def test_recovers_the_curved_spine(subject: WholeBodySubject, synthesized: CoronalSlice) -> None:
    assert synthesized.path.found
    err, covered = _path_errors(subject, synthesized)
    assert covered > 0.8
    assert np.mean(np.abs(err)) < 1.5 and np.max(np.abs(err)) < 6.0
    # The spine really curves: a flat plane through its mean misses it by far more.
    true_y = subject.spine_path_mr[:, 1]
    assert np.mean(np.abs(true_y - true_y.mean())) > 5 * np.mean(np.abs(err))


@pytest.mark.parametrize("seed", [0, 7])
def test_recovers_the_spine_at_full_resolution(seed: int) -> None:
    subject = generate_wholebody_subject(seed)
    out = synthesize_coronal_slice([subject.mr_fat, subject.mr_water])
    err, covered = _path_errors(subject, out)
    assert out.images[0].shape == (224, 501) and covered > 0.85
    assert np.mean(np.abs(err)) < 1.0 and np.max(np.abs(err)) < 5.0


def test_straight_spine() -> None:
    straight = replace(SMALL, spine_curvature=0.0, coronal_curvature=0.0)
    subject = generate_wholebody_subject(4, settings=straight)
    out = synthesize_coronal_slice([subject.mr_fat, subject.mr_water], settings=SMALL_SLICE)
    err, covered = _path_errors(subject, out)
    assert out.path.found and covered > 0.8
    assert np.mean(np.abs(err)) < 1.5 and np.ptp(err) < 6.0  # flat, up to detection noise


def test_no_spine_falls_back_to_the_body_centre_plane() -> None:
    subject = generate_wholebody_subject(2, settings=replace(SMALL, spine=False))
    with pytest.warns(SpineNotFoundWarning, match="no spine found"):
        out = synthesize_coronal_slice([subject.mr_fat, subject.mr_water], settings=SMALL_SLICE)
    assert not out.path.found and not out.path.on_spine.any()
    assert np.ptp(out.path.y) == 0.0
    # The plane passes through the body, so the slice shows it.
    body = subject.mr_tissues.data > 0
    ys = subject.mr_tissues.grid.voxel_to_world(np.argwhere(body))[:, 1]
    assert ys.min() < out.path.y[0] < ys.max()
    assert out.images[0].data.max() > 0
    assert out.images[0].shape == SMALL_SLICE.size


def test_without_fat_and_water_no_spine_is_looked_for(subject: WholeBodySubject) -> None:
    with pytest.warns(SpineNotFoundWarning, match="no fat and water"):
        out = synthesize_coronal_slice(subject.mr_water, settings=SMALL_SLICE)
    assert len(out.images) == 1 and not out.path.found
    with pytest.warns(SpineNotFoundWarning):
        three = synthesize_coronal_slice([subject.mr_fat] * 3, settings=SMALL_SLICE)
    assert len(three.images) == 3


def test_output_frame_matches_the_volume(
    subject: WholeBodySubject, synthesized: CoronalSlice
) -> None:
    # 2D world (x, y, 0) with y = the volume's z; pixel values are the volume's values at
    # (x, path(z), z).
    img = synthesized.images[1]
    assert img.shape == SMALL_SLICE.size and img.spacing == pytest.approx((4.4, 4.4))
    grid = img.grid
    rng = np.random.default_rng(0)
    ik = np.stack([rng.integers(10, 100, 50), rng.integers(20, 230, 50)], 1)
    xyz2 = grid.voxel_to_world(ik)
    np.testing.assert_allclose(xyz2[:, 2], 0.0)
    world = np.stack([xyz2[:, 0], synthesized.path.y[ik[:, 1]], xyz2[:, 1]], 1)
    from scipy import ndimage

    vox = subject.mr_water.grid.world_to_voxel(world).T
    expected = ndimage.map_coordinates(subject.mr_water.data, vox, order=1)
    np.testing.assert_allclose(img.data[ik[:, 0], ik[:, 1]], expected, rtol=1e-4, atol=1e-3)
    # Centred on the field of view: same world centre as the volume (x and z).
    centre3 = subject.mr_water.grid.voxel_to_world([(np.array(subject.mr_water.shape) - 1) / 2])
    centre2 = grid.voxel_to_world([(np.array(grid.shape) - 1) / 2])
    np.testing.assert_allclose(centre2[0, :2], centre3[0, [0, 2]], atol=1e-6)


def test_crop_pad_and_resample_sizes(subject: WholeBodySubject) -> None:
    vols = [subject.mr_fat, subject.mr_water]
    small = synthesize_coronal_slice(vols, settings=replace(SMALL_SLICE, size=(60, 100)))
    big = synthesize_coronal_slice(vols, settings=replace(SMALL_SLICE, size=(140, 300)))
    assert small.images[0].shape == (60, 100) and big.images[0].shape == (140, 300)
    # Cropping keeps the centre; padding adds zeros round the field of view.
    np.testing.assert_allclose(small.images[0].data, big.images[0].data[40:100, 100:200])
    assert np.all(big.images[0].data[:10] == 0) and np.all(big.images[0].data[:, :20] == 0)
    fine = synthesize_coronal_slice(
        vols, settings=replace(SMALL_SLICE, size=(224, 501), spacing_mm=2.2)
    )
    assert fine.images[0].shape == (224, 501) and fine.images[0].spacing == pytest.approx(
        (2.2, 2.2)
    )
    # DXA: centre crop/pad to the paper's 300 x 800 (LR x SI) at 2.2 mm.
    dxa = crop_or_pad(subject.dxa_bone, (300, 800), spacing=2.2)
    assert dxa.shape == (300, 800) and dxa.spacing == pytest.approx((2.2, 2.2))
    c_in = subject.dxa_bone.grid.voxel_to_world([(np.array(subject.dxa_bone.shape) - 1) / 2])
    c_out = dxa.grid.voxel_to_world([(np.array(dxa.shape) - 1) / 2])
    np.testing.assert_allclose(c_in, c_out, atol=1e-9)
    assert dxa.data.sum() * 2.2**2 == pytest.approx(subject.dxa_bone.data.sum() * 4.4**2, rel=0.02)


def test_slab_averaging_and_label_sampling(
    subject: WholeBodySubject, synthesized: CoronalSlice
) -> None:
    slab = synthesize_coronal_slice(
        [subject.mr_fat, subject.mr_water], settings=replace(SMALL_SLICE, slab_mm=13.2)
    )
    np.testing.assert_allclose(slab.path.y, synthesized.path.y)
    # Averaging over a slab smooths the image along AP, so it differs, but gently.
    a, b = synthesized.images[0].data, slab.images[0].data
    assert not np.allclose(a, b)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8
    labels = synthesized.sample(subject.mr_labels)
    assert labels.data.dtype == np.int32 and labels.shape == SMALL_SLICE.size
    assert {1, 2, 3} <= set(np.unique(labels.data))


def test_flipped_storage_gives_the_same_slice(
    subject: WholeBodySubject, synthesized: CoronalSlice
) -> None:
    # The phantom is stored LAS; the same data stored RAS must give the same slice.
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = subject.mr_fat.shape[0] - 1
    ras = [
        Image(np.ascontiguousarray(v.data[::-1]), v.affine @ flip)
        for v in (subject.mr_fat, subject.mr_water)
    ]
    assert ras[0].affine[0, 0] > 0
    out = synthesize_coronal_slice(ras, settings=SMALL_SLICE)
    np.testing.assert_allclose(out.path.y, synthesized.path.y, atol=1e-6)
    np.testing.assert_allclose(out.images[0].data, synthesized.images[0].data, atol=1e-3)


def test_deterministic_and_validated(subject: WholeBodySubject, synthesized: CoronalSlice) -> None:
    again = synthesize_coronal_slice([subject.mr_fat, subject.mr_water], settings=SMALL_SLICE)
    np.testing.assert_array_equal(again.images[0].data, synthesized.images[0].data)
    np.testing.assert_array_equal(again.path.y, synthesized.path.y)
    shifted = Image(subject.mr_water.data, subject.mr_water.affine + np.eye(4) * 0)
    shifted.affine[0, 3] += 5.0
    with pytest.raises(InputError, match="share one grid"):
        synthesize_coronal_slice([subject.mr_fat, shifted])
    with pytest.raises(InputError, match="3D"):
        synthesize_coronal_slice([subject.dxa_bone])
    with pytest.raises(ValueError):
        SliceSettings(size=(0, 10))


def test_detection_rejects_noise() -> None:
    rng = np.random.default_rng(1)
    noise = Image(rng.random((40, 30, 60)).astype(np.float32), np.diag([4.4, 4.4, 4.4, 1.0]))
    det = detect_spine(noise, Image(rng.random((40, 30, 60)).astype(np.float32), noise.affine))
    assert not det.found and det.z_range is None and "cover" in det.reason


def test_output_grid_is_centred() -> None:
    from mmreg.imaging.image import Grid

    grid = output_grid(Grid((11, 5, 21), np.diag([2.0, 3.0, 2.0, 1.0])), size=(5, 7), spacing=4.0)
    centre = grid.voxel_to_world([[2, 3]])[0]
    np.testing.assert_allclose(centre, [10.0, 20.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid call warns about nothing
        assert grid.shape == (5, 7)
