"""Evaluation of a transform against labels and landmarks, with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmreg.imaging.evaluation import (
    evaluate_transform,
    folding_pct,
    landmark_columns,
    landmark_error_columns,
)
from mmreg.imaging.groundtruth import GroundTruth
from mmreg.imaging.image import Grid, Image
from mmreg.imaging.transform import Transform


def _box_labels(offset: int) -> Image:
    data = np.zeros((20, 20, 20), np.int32)
    data[5 + offset : 13 + offset, 5:13, 5:13] = 1  # an 8^3 box of label 1
    return Image(data, np.eye(4))


def test_shifted_box_dice_and_tre():
    # The moving box sits 2 voxels (= 2 mm) further along x than the fixed box.
    fixed, moving = _box_labels(0), _box_labels(2)
    gt = GroundTruth(
        fixed_labels=fixed,
        moving_labels=moving,
        fixed_landmarks={"a": np.array([5.0, 5, 5])},
        moving_landmarks={"a": np.array([7.0, 5, 5])},
        label_names={1: "box"},
    )
    before = evaluate_transform(Transform.identity(), gt, prefix="initial_")
    # overlap 6*8*8 = 384 of 512 + 512 voxels: Dice = 2*384/1024 = 0.75
    assert before["initial_dice_box"] == pytest.approx(0.75)
    assert before["initial_tre_mean_mm"] == pytest.approx(2.0)
    # The true fixed->moving map is +2 mm along x.
    shift = np.eye(4)
    shift[0, 3] = 2.0
    after = evaluate_transform(Transform.from_affine(shift), gt)
    assert after["dice_mean"] == pytest.approx(1.0)
    assert after["hd95_mean_mm"] == pytest.approx(0.0)
    assert after["tre_mean_mm"] == pytest.approx(0.0)
    assert after["n_landmarks"] == 1


def test_without_ground_truth_everything_is_nan():
    row = evaluate_transform(Transform.identity(), GroundTruth())
    assert math.isnan(row["dice_mean"]) and math.isnan(row["tre_mean_mm"])


def test_folding_pct_of_affines():
    grid = Grid((4, 4, 4), np.eye(4))
    assert folding_pct(Transform.identity(), grid) == 0.0
    assert folding_pct(Transform.from_affine(np.diag([-1.0, 1, 1, 1])), grid) == 100.0


def test_per_landmark_errors_next_to_the_mean():
    # Landmarks "a" (2 mm off along x) and "b" (exact); the true map is +2 mm along x for
    # "a" only, so identity errs 2 and 0 mm, the shift 0 and 2 mm.
    gt = GroundTruth(
        fixed_landmarks={"a": np.array([5.0, 5, 5]), "b": np.array([0.0, 0, 0])},
        moving_landmarks={"a": np.array([7.0, 5, 5]), "b": np.array([0.0, 0, 0])},
    )
    before = evaluate_transform(Transform.identity(), gt, prefix="initial_", with_hd95=False)
    assert before["initial_tre_a_mm"] == pytest.approx(2.0)
    assert before["initial_tre_b_mm"] == pytest.approx(0.0)
    assert before["initial_tre_mean_mm"] == pytest.approx(1.0)
    shift = np.eye(4)
    shift[0, 3] = 2.0
    after = evaluate_transform(Transform.from_affine(shift), gt)
    assert (after["tre_a_mm"], after["tre_b_mm"]) == pytest.approx((0.0, 2.0))
    assert after["tre_max_mm"] == pytest.approx(2.0)


def test_landmark_columns_never_take_a_statistic_column():
    names = ["mean", "max", "Femoral head (L)", "a-b", "a b"]
    columns = landmark_columns(names)
    assert columns == [
        "tre_landmark_mean_mm",
        "tre_landmark_max_mm",
        "tre_Femoral_head_L_mm",
        "tre_a_b_mm",
        "tre_a_b_2_mm",
    ]
    gt = GroundTruth(
        fixed_landmarks={n: np.zeros(3) for n in names},
        moving_landmarks={n: np.ones(3) for n in names},
    )
    row = evaluate_transform(Transform.identity(), gt, with_hd95=False)
    # The statistics keep their meaning: mean and max over all five points.
    assert row["tre_mean_mm"] == pytest.approx(np.sqrt(3.0))
    assert set(landmark_error_columns(row)) == {
        "landmark_mean",
        "landmark_max",
        "Femoral_head_L",
        "a_b",
        "a_b_2",
    }


def test_best_rigid_fit_recovers_a_rigid_map_and_never_reflects() -> None:
    from mmreg.imaging.evaluation import apply_points, best_rigid_fit

    rng = np.random.default_rng(0)
    src = np.c_[rng.normal(size=(6, 2)) * 50, np.zeros(6)]
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    dst = src @ rot.T + [4.0, -7.0, 0.0]
    np.testing.assert_allclose(apply_points(best_rigid_fit(src, dst), src), dst, atol=1e-9)
    # A mirror image cannot be fitted by a rotation: the residual stays, in the plane.
    mirrored = src * [1.0, -1.0, 1.0]
    fit = best_rigid_fit(src, mirrored)
    assert np.linalg.det(fit[:3, :3]) == pytest.approx(1.0)
    assert np.abs(apply_points(fit, src)[:, 2]).max() < 1e-12
    assert np.linalg.norm(apply_points(fit, src) - mirrored, axis=1).mean() > 1.0
