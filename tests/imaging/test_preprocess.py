"""Preprocessing: world coordinates survive every step; pre-alignment recovers known maps."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from mmreg.errors import UsageError
from mmreg.imaging.image import Grid, Image
from mmreg.imaging.preprocess import (
    AUTO_MARGIN,
    AUTO_MIN_OVERLAP,
    DEFAULT_PREALIGN,
    PREALIGN_MODES,
    PrealignCandidate,
    PreprocessOptions,
    choose_prealign,
    foreground_mask,
    normalize_intensity,
    prealign,
    prealign_candidates,
    preprocess,
    reorient_canonical,
    resample_isotropic,
)

from factories import (
    crop_image,
    remap_image,
    shift_image,
    smooth_head,
    spine_phantom,
)

# --------------------------------------------------------------------------- helpers


def _affine(columns: np.ndarray, origin: tuple[float, ...]) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = columns
    aff[:3, 3] = origin
    return aff


def _centred_grid(shape: tuple[int, ...], spacing: float, centre: np.ndarray) -> Grid:
    """An axis-aligned grid of ``shape`` whose centre voxel lies at world ``centre``."""
    nd = len(shape)
    aff = np.diag([spacing] * 3 + [1.0])
    aff[:3, 3] = centre
    aff[:nd, 3] -= spacing * (np.asarray(shape) - 1) / 2
    return Grid(shape, aff)


def _blob(points: np.ndarray) -> np.ndarray:
    """Smooth asymmetric object at the origin: ellipsoid plus an off-centre lobe.

    Semi-axes 11, 7, 4.5 mm give well separated principal variances; the lobe at
    (10, 4, 2) mm sticks out of the ellipsoid, so the shape (hence the foreground
    mask) is skewed along every principal axis and their signs are defined.
    """

    def soft_ellipsoid(centre, axes, sharpness):
        r = np.sqrt((((points - centre) / axes) ** 2).sum(axis=-1))
        return 1.0 / (1.0 + np.exp((r - 1.0) * sharpness))

    main = soft_ellipsoid(np.zeros(3), np.array([11.0, 7.0, 4.5]), 6.0)
    lobe = soft_ellipsoid(np.array([10.0, 4.0, 2.0]), np.array([5.0, 4.0, 3.0]), 5.0)
    return np.maximum(main, lobe)


def _render(grid: Grid, to_object: np.ndarray) -> Image:
    """Image on ``grid`` of the blob seen through ``to_object`` (world -> object frame)."""
    pts = grid.world_coordinates().reshape(-1, 3)
    obj = pts @ to_object[:3, :3].T + to_object[:3, 3]
    return Image(_blob(obj).reshape(grid.shape).astype(np.float32), grid.affine)


def _com_world(img: Image) -> np.ndarray:
    w = img.data.astype(np.float64).ravel()
    pts = img.grid.world_coordinates().reshape(-1, 3)
    return (w @ pts) / w.sum()


def _angle_deg(r_est: np.ndarray, r_true: np.ndarray) -> float:
    cos = (np.trace(r_est.T @ r_true) - 1) / 2
    return math.degrees(math.acos(np.clip(cos, -1.0, 1.0)))


def _assert_same_world_values(original: Image, other: Image) -> None:
    """Every voxel of ``other`` holds the value the original has at the same world point."""
    idx = np.rint(original.grid.world_to_voxel(other.grid.world_coordinates().reshape(-1, 3)))
    fractional = original.grid.world_to_voxel(other.grid.world_coordinates().reshape(-1, 3))
    np.testing.assert_allclose(fractional, idx, atol=1e-6)
    values = original.data[tuple(idx.astype(int).T)]
    np.testing.assert_array_equal(values, other.data.ravel())


# --------------------------------------------------------------------------- orientation


def test_reorient_canonical_3d_permuted_flipped_oblique():
    # Array axes point along -A, +S, -R (spacings 2, 3, 1.5), tilted by 10 degrees.
    tilt = Rotation.from_euler("z", 10, degrees=True).as_matrix()
    cols = tilt @ np.array([[0.0, 0.0, -1.5], [-2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    img = Image(np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7), _affine(cols, (4, 5, 6)))
    canon = reorient_canonical(img)

    assert canon.shape == (7, 5, 6)
    np.testing.assert_array_equal(nib.orientations.io_orientation(canon.affine)[:, 1], 1)
    np.testing.assert_array_equal(nib.orientations.io_orientation(canon.affine)[:, 0], [0, 1, 2])
    _assert_same_world_values(img, canon)
    reference = nib.as_closest_canonical(nib.Nifti1Image(img.data, img.affine))
    np.testing.assert_allclose(canon.affine, reference.affine)
    np.testing.assert_array_equal(canon.data, np.asarray(reference.dataobj))


def test_reorient_canonical_keeps_canonical_image():
    img = Image(np.zeros((3, 4, 5), np.float32), np.diag([1.0, 2.0, 3.0, 1.0]))
    assert reorient_canonical(img) is img


def test_reorient_canonical_2d_swapped_and_flipped():
    # Axis 0 runs along +A, axis 1 along -R: canonical is (R, A) with axis 1 flipped first.
    cols = np.array([[0.0, -1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    img = Image(np.arange(12.0).reshape(3, 4), _affine(cols, (10, -5, 0)))
    canon = reorient_canonical(img)

    assert canon.shape == (4, 3)
    np.testing.assert_allclose(canon.affine[:3, :2], [[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    _assert_same_world_values(img, canon)


# --------------------------------------------------------------------------- resampling


def test_resample_isotropic_preserves_dot_location_and_fov():
    tilt = Rotation.from_euler("xyz", [8, -5, 12], degrees=True).as_matrix()
    aff = _affine(tilt @ np.diag([1.0, 1.5, 3.0]), (-20.0, -25.0, -30.0))
    grid = Grid((40, 32, 20), aff)
    dot = np.array([-2.0, 1.5, -1.0])
    pts = grid.world_coordinates()
    # A smooth dot (sigma 3 mm) so that its centre of mass is well defined on both grids.
    data = np.exp(-(((pts - dot) ** 2).sum(-1)) / (2 * 3.0**2)).astype(np.float32)
    img = Image(data, aff)
    out = resample_isotropic(img, 2.0)

    assert out.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert out.shape == (20, 24, 30)  # round(40*1/2, 32*1.5/2, 20*3/2)
    assert np.linalg.norm(_com_world(out) - dot) < 0.2
    peak = out.grid.voxel_to_world(np.unravel_index(np.argmax(out.data), out.shape))[0]
    assert np.linalg.norm(peak - dot) < 2.0  # within one new voxel

    # Same axis directions and centre; extent changes by less than one new voxel.
    np.testing.assert_allclose(out.affine[:3, :3] / 2.0, tilt, atol=1e-12)
    centre = grid.voxel_to_world((np.array(grid.shape) - 1) / 2)
    np.testing.assert_allclose(out.grid.voxel_to_world((np.array(out.shape) - 1) / 2), centre)
    old_extent = np.array(grid.shape) * np.array(grid.spacing)
    new_extent = np.array(out.shape) * 2.0
    assert np.all(np.abs(new_extent - old_extent) <= 1.0 + 1e-9)


def test_resample_isotropic_antialiases_when_downsampling():
    # A checkerboard at the 1 mm Nyquist frequency has mean 0; sampled at 3 mm without a
    # low-pass filter it would alias to +-1.
    idx = np.indices((30, 30, 30)).sum(axis=0)
    img = Image(np.where(idx % 2 == 0, 1.0, -1.0).astype(np.float32))
    out = resample_isotropic(img, 3.0)
    assert out.shape == (10, 10, 10)
    assert np.abs(out.data).max() < 0.1


def test_resample_isotropic_nearest_keeps_labels_and_dtype():
    labels = np.zeros((20, 10, 12), np.int32)
    labels[5:15, 2:8, 3:9] = 4
    labels[0:3, 0:3, 0:3] = 7
    out = resample_isotropic(Image(labels, np.diag([1.0, 2.0, 1.5, 1.0])), 1.0, order=0)
    assert out.data.dtype == np.int32
    assert set(np.unique(out.data)) == {0, 4, 7}
    assert out.shape == (20, 20, 18)


def test_resample_isotropic_2d_and_identity_grid():
    data = np.zeros((16, 8), np.float32)
    data[6, 3] = 1.0
    img = Image(data, np.diag([1.0, 2.0, 1.0, 1.0]))
    out = resample_isotropic(img, 1.0)
    assert out.shape == (16, 16)
    # Old y centres 0, 2, .., 14 (FOV -1..15); new centres -0.5, 0.5, .., 14.5. The dot at
    # old index 3 (y = 6 mm) is read at old indices 2.25, 2.75, 3.25, 3.75 by new 5..8.
    np.testing.assert_allclose(out.data[6, 4:10], [0, 0.25, 0.75, 0.75, 0.25, 0])
    np.testing.assert_allclose(_com_world(out), [6.0, 6.0, 0.0], atol=1e-6)

    same = resample_isotropic(Image(data, np.eye(4)), 1.0)
    np.testing.assert_array_equal(same.data, data)
    np.testing.assert_array_equal(same.affine, np.eye(4))
    with pytest.raises(ValueError, match="spacing"):
        resample_isotropic(img, 0.0)


# --------------------------------------------------------------------------- intensity


def test_normalize_intensity_hand_values():
    data = np.array([[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]])
    img = Image(data)
    full = normalize_intensity(img, lower=0, upper=100, mask=np.ones_like(data, bool))
    np.testing.assert_allclose(full.data, data / 10.0, rtol=1e-6)
    assert full.data.dtype == np.float32
    # Percentiles inside the mask {4, 6}: 4 -> 0, 6 -> 1, everything else clipped.
    mask = np.zeros_like(data, bool)
    mask[0, 2] = mask[1, 0] = True
    part = normalize_intensity(img, lower=0, upper=100, mask=mask)
    np.testing.assert_allclose(part.data, [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


def test_normalize_intensity_robust_to_outliers(rng):
    data = rng.normal(100.0, 10.0, size=(12, 12, 12))
    data[0, 0, 0] = 1e6  # one hot voxel must not squash the rest towards 0
    out = normalize_intensity(Image(data)).data
    assert out.min() == 0.0 and out.max() == 1.0
    assert 0.3 < float(np.median(out)) < 0.7
    constant = normalize_intensity(Image(np.full((4, 4), 3.0)))
    np.testing.assert_array_equal(constant.data, 0.0)


# --------------------------------------------------------------------------- mask


def test_foreground_mask_sphere_on_noise(rng):
    shape = (32, 32, 32)
    r = np.sqrt(((np.indices(shape) - 15.5) ** 2).sum(axis=0))
    sphere = r < 9
    data = 0.1 * rng.standard_normal(shape) + sphere.astype(float)
    data[r < 3] = 0.0  # a dark cavity inside: must be filled
    data[1:4, 1:4, 1:4] = 1.0  # a separate bright speck: not the largest component
    mask = foreground_mask(Image(data.astype(np.float32)))

    assert mask.dtype == bool
    assert mask[sphere].all()
    assert not mask[1:4, 1:4, 1:4].any()
    assert ndimage.label(mask)[1] == 1
    # At most the sphere grown by ~2 voxels (smoothing + one-voxel dilation).
    assert not mask[r > 12].any()


def test_foreground_mask_constant_image_is_all_true():
    assert foreground_mask(Image(np.ones((8, 8), np.float32))).all()


# --------------------------------------------------------------------------- prealign


def test_prealign_none_and_bad_mode():
    img = _render(_centred_grid((16, 16, 16), 2.0, np.zeros(3)), np.eye(4))
    np.testing.assert_array_equal(prealign(img, img, "none"), np.eye(4))
    with pytest.raises(UsageError, match="pre-alignment"):
        prealign(img, img, "affine")


def test_prealign_com_recovers_translation():
    shift = np.array([4.3, -3.1, 2.6])
    fixed = _render(_centred_grid((32, 32, 32), 1.0, np.zeros(3)), np.eye(4))
    # The moving image is sampled on a different (coarser, shifted) grid.
    to_object = np.eye(4)
    to_object[:3, 3] = -shift
    moving = _render(_centred_grid((26, 26, 26), 1.25, shift + 1.0), to_object)
    matrix = prealign(fixed, moving, "com")

    np.testing.assert_array_equal(matrix[:3, :3], np.eye(3))
    assert np.linalg.norm(matrix[:3, 3] - shift) < 0.5


def test_prealign_com_ignores_grid_layout():
    fixed = _render(_centred_grid((24, 24, 24), 1.5, np.zeros(3)), np.eye(4))
    flipped = Image(fixed.data[::-1, :, ::-1].copy(), fixed.affine @ _flip_affine(fixed.shape))
    np.testing.assert_allclose(prealign(fixed, flipped, "com"), np.eye(4), atol=1e-9)


def _flip_affine(shape: tuple[int, ...]) -> np.ndarray:
    """Index map of reversing axes 0 and 2 (new index -> old index)."""
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[0, 3], flip[2, 3] = shape[0] - 1, shape[2] - 1
    return flip


@pytest.mark.parametrize(
    ("axis", "degrees"),
    [((0.0, 0.0, 1.0), 30.0), ((1.0, 2.0, 0.5), 120.0), ((1, -1, 1), 75.0), ((0, 1, 0), 170.0)],
)
def test_prealign_moments_recovers_rotation(axis, degrees):
    rot = Rotation.from_rotvec(np.radians(degrees) * np.asarray(axis) / np.linalg.norm(axis))
    true = np.eye(4)
    true[:3, :3] = rot.as_matrix()
    true[:3, 3] = [3.0, -2.0, 1.5]  # fixed -> moving: p -> R p + t
    fixed = _render(_centred_grid((40, 40, 40), 1.0, np.zeros(3)), np.eye(4))
    # A coarser moving grid, so the two masks are not voxel-for-voxel rotations of each other.
    moving = _render(_centred_grid((34, 34, 34), 1.2, true[:3, 3]), np.linalg.inv(true))
    matrix = prealign(fixed, moving, "moments")

    assert np.linalg.det(matrix[:3, :3]) == pytest.approx(1.0)
    assert _angle_deg(matrix[:3, :3], true[:3, :3]) < 4.0
    # Points across the object land within a voxel of where the true map sends them.
    probe = np.array([[0, 0, 0], [10, 0, 0], [0, 6, 0], [0, 0, 4], [10, 4, 2.0]])
    hom = np.c_[probe, np.ones(len(probe))]
    err = np.linalg.norm((hom @ matrix.T - hom @ true.T)[:, :3], axis=1)
    assert err.max() < 1.0


def test_prealign_moments_2d_in_plane_rotation():
    rot = np.eye(4)
    rot[:3, :3] = Rotation.from_euler("z", 120, degrees=True).as_matrix()
    rot[:3, 3] = [2.0, -1.0, 0.0]
    grid = _centred_grid((40, 40), 1.0, np.zeros(3))
    fixed = _render(grid, np.eye(4))
    moving = _render(grid, np.linalg.inv(rot))
    matrix = prealign(fixed, moving, "moments")

    assert _angle_deg(matrix[:3, :3], rot[:3, :3]) < 4.0
    np.testing.assert_allclose(matrix[2], [0.0, 0.0, 1.0, 0.0], atol=1e-9)
    assert np.linalg.norm(matrix[:2, 3] - rot[:2, 3]) < 1.0


def test_prealign_moments_symmetric_object_falls_back_to_com():
    # A sphere has no principal axes: the rotation must stay the identity.
    grid = _centred_grid((24, 24, 24), 1.0, np.zeros(3))
    r = np.linalg.norm(grid.world_coordinates(), axis=-1)
    sphere = Image((r < 7).astype(np.float32), grid.affine)
    shifted = Image(sphere.data, grid.affine + np.c_[np.zeros((4, 3)), [2.0, 0, 0, 0]])
    matrix = prealign(sphere, shifted, "moments")
    np.testing.assert_allclose(matrix[:3, :3], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(matrix[:3, 3], [2.0, 0.0, 0.0], atol=1e-9)


# --------------------------------------------------------------------------- prealign "auto"


def test_default_prealign_is_auto():
    assert DEFAULT_PREALIGN == "auto"
    assert "auto" in PREALIGN_MODES
    assert PreprocessOptions().prealign == "auto"


@pytest.mark.parametrize(
    ("fixed_z", "moving_z", "overlap"),
    [
        (slice(None), slice(50, None), 1.0),  # moving covers the upper half
        (slice(None), slice(None, 30), 1.0),  # moving covers the lowest 30%
        (slice(50, None), slice(None), 1.0),  # fixed covers the upper half
        (slice(None, 60), slice(40, None), 1 / 3),  # 20 of each one's 60 slices in common
    ],
)
def test_prealign_auto_keeps_header_when_fields_of_view_differ(fixed_z, moving_z, overlap):
    # Same anatomy, same world space, different z coverage: the header is right, the
    # foregrounds' centres are not comparable.
    spine = spine_phantom()
    all_ = slice(None)
    fixed = preprocess(crop_image(spine, all_, all_, fixed_z))
    moving = preprocess(crop_image(remap_image(spine), all_, all_, moving_z))

    com = prealign(fixed, moving, "com")
    assert np.linalg.norm(com[:3, 3]) > 25.0  # the centres differ by a quarter of a FOV or more
    np.testing.assert_array_equal(prealign(fixed, moving, "auto"), np.eye(4))
    scores = {c.mode: c for c in prealign_candidates(fixed, moving)}
    assert scores["none"].overlap == pytest.approx(overlap, abs=0.03)
    assert scores["none"].nmi > scores["com"].nmi + 0.1


def test_prealign_auto_needs_a_common_field_of_view():
    # 5 of each image's 50 slices in common: below AUTO_MIN_OVERLAP the header is not
    # trusted, the identity is not even scored.
    spine = spine_phantom()
    fixed = preprocess(crop_image(spine, slice(None), slice(None), slice(None, 50)))
    moving = preprocess(crop_image(remap_image(spine), slice(None), slice(None), slice(45, None)))
    none, com = prealign_candidates(fixed, moving)[:2]
    assert none.overlap == pytest.approx(0.1, abs=0.03)
    assert none.overlap < AUTO_MIN_OVERLAP and not none.eligible
    assert com.eligible and choose_prealign([none, com]) is com


def test_prealign_auto_keeps_header_of_cropped_2d_slice():
    spine = spine_phantom()
    coronal = Image(spine.data[:, 12, :].copy(), spine.affine[:, [0, 2, 1, 3]])
    fixed = preprocess(coronal)
    moving = preprocess(crop_image(remap_image(coronal), slice(None), slice(55, None)))
    assert np.linalg.norm(prealign(fixed, moving, "com")[:3, 3]) > 25.0
    np.testing.assert_array_equal(prealign(fixed, moving, "auto"), np.eye(4))


@pytest.mark.parametrize("ndim", [3, 2])
def test_prealign_auto_uses_com_when_header_is_off(ndim):
    shape = (40, 44, 36) if ndim == 3 else (60, 70)
    head = Image(smooth_head(shape, seed=3), np.diag([2.0, 2.0, 2.0, 1.0]))
    shift = np.array([24.0, -32.0, 0.0])  # 40 mm; fixed -> moving is p -> p + shift
    fixed = preprocess(head)
    moving = preprocess(shift_image(remap_image(head), shift))

    matrix = prealign(fixed, moving, "auto")
    np.testing.assert_array_equal(matrix, prealign(fixed, moving, "com"))
    np.testing.assert_array_equal(matrix[:3, :3], np.eye(3))
    assert np.linalg.norm(matrix[:3, 3] - shift) < 1.0
    scores = {c.mode: c for c in prealign_candidates(fixed, moving)}
    assert scores["com"].nmi > scores["none"].nmi + 0.2


def test_prealign_auto_without_common_field_of_view_uses_com():
    head = Image(smooth_head((32, 36, 30), seed=1), np.diag([2.0, 2.0, 2.0, 1.0]))
    shift = np.array([0.0, 0.0, 300.0])  # the two grids do not meet at all
    fixed, moving = preprocess(head), preprocess(shift_image(remap_image(head), shift))
    none = prealign_candidates(fixed, moving)[0]
    assert none.mode == "none" and none.overlap == 0.0 and not none.eligible
    assert np.linalg.norm(prealign(fixed, moving, "auto")[:3, 3] - shift) < 1.0


def test_prealign_auto_same_image_deterministic_and_intensity_invariant():
    head = Image(smooth_head((32, 36, 30), seed=2), np.diag([2.0, 2.0, 2.0, 1.0]))
    np.testing.assert_array_equal(prealign(head, head, "auto"), np.eye(4))
    fixed, moving = preprocess(head), shift_image(remap_image(head), np.array([0.0, 20.0, 0.0]))
    first = prealign_candidates(fixed, moving)
    again = prealign_candidates(fixed, moving)
    assert [(c.mode, c.overlap, c.nmi) for c in first] == [
        (c.mode, c.overlap, c.nmi) for c in again
    ]
    # Raw scanner units: each image is binned on its own robust range.
    scaled = prealign_candidates(fixed, Image(moving.data * 1000.0 + 50.0, moving.affine))
    for a, b in zip(first, scaled, strict=True):
        assert a.mode == b.mode
        assert a.nmi == pytest.approx(b.nmi, abs=0.01)
    assert choose_prealign(first).mode == "com"


def _candidate(mode: str, nmi: float) -> PrealignCandidate:
    matrix = np.eye(4)
    matrix[0, 3] = {"none": 0.0, "com": 1.0, "moments": 2.0}[mode]
    return PrealignCandidate(mode, matrix, 1.0 if np.isfinite(nmi) else 0.1, nmi)


@pytest.mark.parametrize(
    ("none", "com", "moments", "chosen"),
    [
        (1.20, 1.20 + AUTO_MARGIN / 2, 1.20 + AUTO_MARGIN / 2, "none"),  # within the margin
        (1.20, 1.20 + 2 * AUTO_MARGIN, math.nan, "com"),
        (1.20, 1.20 + 2 * AUTO_MARGIN, 1.20 + 2.5 * AUTO_MARGIN, "com"),  # moments: not enough
        (1.20, 1.20 + 2 * AUTO_MARGIN, 1.20 + 4 * AUTO_MARGIN, "moments"),
        (1.20, 1.10, 1.20 + 2 * AUTO_MARGIN, "moments"),
        (math.nan, 1.10, 1.10 + AUTO_MARGIN / 2, "com"),  # header not eligible
        (math.nan, math.nan, math.nan, "com"),  # nothing eligible
    ],
)
def test_choose_prealign_rule(none, com, moments, chosen):
    candidates = [_candidate("none", none), _candidate("com", com)]
    candidates.append(_candidate("moments", moments))
    assert choose_prealign(candidates).mode == chosen


# --------------------------------------------------------------------------- pipeline


def test_preprocess_pipeline_canonical_isotropic_normalised():
    cols = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 1.5, 0.0]])
    grid = Grid((30, 16, 20), _affine(cols, (15.0, -15.0, -15.0)))
    img = _render(grid, np.eye(4))
    img = Image(img.data + 0.2, img.affine)  # non-zero background
    out = preprocess(img, PreprocessOptions(spacing=2.0))

    assert out.data.dtype == np.float32
    assert out.spacing == pytest.approx((2.0, 2.0, 2.0))
    np.testing.assert_allclose(out.affine[:3, :3], np.diag([2.0, 2.0, 2.0]), atol=1e-12)
    assert out.data.min() == 0.0 and out.data.max() == 1.0
    # World location of the object is unchanged by the whole pipeline.
    assert np.linalg.norm(_com_world(out) - _com_world(Image(img.data - 0.2, img.affine))) < 1.0

    masked = preprocess(img, PreprocessOptions(spacing=2.0, mask=True))
    mask = foreground_mask(resample_isotropic(reorient_canonical(img), 2.0))
    assert (masked.data[~mask] == 0).all()
    assert masked.data[mask].max() == 1.0


def test_preprocess_options_validation():
    with pytest.raises(UsageError, match="spacing"):
        PreprocessOptions(spacing=-1.0)
    with pytest.raises(UsageError, match="pre-alignment"):
        PreprocessOptions(prealign="rigid")
