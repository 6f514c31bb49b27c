"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmreg.imaging.metrics import dice, hausdorff95, landmark_errors, nonpositive_jacobian_pct

# --------------------------------------------------------------------------- dice


def test_dice_of_two_overlapping_boxes():
    a = np.zeros((10, 10, 10), np.int32)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = 1  # 4*4*4 = 64 voxels
    b[4:8, 2:6, 2:6] = 1  # 64 voxels; overlap [4:6, 2:6, 2:6] = 2*4*4 = 32
    # 2 * 32 / (64 + 64) = 0.5
    assert dice(a, b) == {1: 0.5}


def test_dice_2d_rectangles_and_label_rules():
    a = np.zeros((6, 6), np.int16)
    b = np.zeros_like(a)
    a[0:4, 0:5] = 1  # 20 voxels
    b[1:4, 0:3] = 1  # 9 voxels, all inside a -> overlap 9
    a[5, 5] = 2  # label 2 only in a
    scores = dice(a, b)
    assert scores[1] == pytest.approx(2 * 9 / (20 + 9))
    assert scores[2] == 0.0
    # Requested label 7 is absent from both maps: skipped, not scored.
    assert set(dice(a, b, labels=[1, 7])) == {1}


def test_dice_identical_maps_and_shape_mismatch():
    a = np.array([[0, 1], [2, 2]])
    assert dice(a, a) == {1: 1.0, 2: 1.0}
    with pytest.raises(ValueError, match="shape"):
        dice(a, np.zeros((3, 3), int))


# --------------------------------------------------------------------------- hausdorff95


def _box(shift: tuple[int, int, int]) -> np.ndarray:
    lab = np.zeros((24, 24, 24), np.int32)
    lo = np.array([6, 6, 6]) + np.array(shift)
    lab[lo[0] : lo[0] + 10, lo[1] : lo[1] + 10, lo[2] : lo[2] + 10] = 3
    return lab


@pytest.mark.parametrize(
    ("shift", "expected"),
    [
        # k = 2 voxels along axis 1 of 2.5 mm -> 5.0 mm
        ((0, 2, 0), 5.0),
        # k = 3 voxels along axis 0 of 0.8 mm -> 2.4 mm
        ((3, 0, 0), 2.4),
    ],
)
def test_hd95_of_shifted_box_is_shift_times_spacing(shift, expected):
    # A 10^3 box has 10^3 - 8^3 = 488 surface voxels. Translation maps surface to surface,
    # so no surface distance exceeds the shift; the two faces across the shift
    # (2 maps x 100 voxels = 41% of the 976 pooled distances) are exactly the shift away,
    # hence the 95th percentile equals it.
    spacing = (0.8, 2.5, 1.2)
    a, b = _box((0, 0, 0)), _box(shift)
    assert hausdorff95(a, b, [3], spacing)[3] == pytest.approx(expected)
    assert hausdorff95(b, a, None, spacing)[3] == pytest.approx(expected)


def test_hd95_identical_missing_and_spacing_checks():
    a = _box((0, 0, 0))
    assert hausdorff95(a, a, [3], (1.0, 1.0, 1.0)) == {3: 0.0}
    result = hausdorff95(a, np.zeros_like(a), [3], (1.0, 1.0, 1.0))
    assert math.isnan(result[3])
    with pytest.raises(ValueError, match="spacing"):
        hausdorff95(a, a, [3], (1.0, 1.0))


def test_hd95_touching_image_edge():
    # A label on the array border has a surface there (the border counts as outside).
    a = np.zeros((8, 8), np.int32)
    a[:, 0:3] = 1
    b = np.zeros_like(a)
    b[:, 0:4] = 1
    # Surface of a: columns 0 and 2, plus (0, 1), (7, 1): 18 voxels.
    # Surface of b: columns 0 and 3, plus (0, 1), (0, 2), (7, 1), (7, 2): 20 voxels.
    # a -> b: column 2 rows 1..6 are 1 voxel from column 3, the other 12 are on b's surface.
    # b -> a: column 3 (8 voxels) is 1 voxel from column 2, the other 12 are on a's surface.
    # Pooled: 14 ones among 38 distances (37%) -> 95th percentile = 1 voxel = 1.5 mm.
    assert hausdorff95(a, b, [1], (1.5, 1.5))[1] == pytest.approx(1.5)


# --------------------------------------------------------------------------- TRE


def test_landmark_errors_known_points():
    mapped = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    moving = np.array([[3.0, 4.0, 0.0], [1.0, 2.0, 3.0], [2.0, 3.0, 3.0]])
    # |(3,4,0)| = 5; 0; |(1,2,2)| = sqrt(1 + 4 + 4) = 3
    np.testing.assert_allclose(landmark_errors(mapped, moving), [5.0, 0.0, 3.0])
    assert landmark_errors(np.zeros((0, 3)), np.zeros((0, 3))).shape == (0,)
    with pytest.raises(ValueError, match="shape"):
        landmark_errors(mapped, moving[:2])


# --------------------------------------------------------------------------- Jacobian


def test_nonpositive_jacobian_pct_known_array():
    detj = np.ones((4, 5))
    detj[0, 0] = 0.0  # zero counts as folding
    detj[1, 2] = -0.5
    detj[3, 4] = np.nan  # undefined counts as folding
    # 3 of 20 voxels -> 15 %
    assert nonpositive_jacobian_pct(detj) == pytest.approx(15.0)
    mask = np.zeros((4, 5), bool)
    mask[0:2, :] = True  # 10 voxels, 2 of them fold -> 20 %
    assert nonpositive_jacobian_pct(detj, mask) == pytest.approx(20.0)
    assert nonpositive_jacobian_pct(np.full((3, 3, 3), 0.9)) == 0.0
    assert math.isnan(nonpositive_jacobian_pct(detj, np.zeros((4, 5), bool)))
