"""Rigid fits, RANSAC, LMedS and sub-pixel peaks."""

from __future__ import annotations

import numpy as np
import pytest

from mmreg.methods.contrastive.geometry import (
    angle_of,
    apply,
    fit_rigid,
    lmeds_rigid,
    parabola_offset,
    ransac_rigid,
    rigid,
    subpixel_peak,
)


def test_rigid_and_angle_roundtrip() -> None:
    m = rigid(12.5, (3.0, -4.0))
    assert angle_of(m) == pytest.approx(12.5)
    np.testing.assert_allclose(apply(m, [[0.0, 0.0]]), [[3.0, -4.0]])
    # 90 degrees counter-clockwise: x axis -> y axis.
    np.testing.assert_allclose(apply(rigid(90.0), [[1.0, 0.0]]), [[0.0, 1.0]], atol=1e-12)


def test_fit_rigid_exact_and_weighted() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(-100, 100, (20, 2))
    truth = rigid(-7.0, (15.0, 2.5))
    np.testing.assert_allclose(fit_rigid(src, apply(truth, src)), truth, atol=1e-9)
    # A zero-weight outlier does not move the fit.
    dst = apply(truth, src)
    dst[0] += 500.0
    weights = np.ones(20)
    weights[0] = 0.0
    np.testing.assert_allclose(fit_rigid(src, dst, weights), truth, atol=1e-9)


def test_fit_rigid_never_reflects() -> None:
    src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    mirrored = src * [-1.0, 1.0]
    m = fit_rigid(src, mirrored)
    assert np.linalg.det(m[:2, :2]) == pytest.approx(1.0)


def test_ransac_and_lmeds_reject_outliers() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(-200, 200, (30, 2))
    truth = rigid(4.0, (-20.0, 35.0))
    dst = apply(truth, src) + rng.normal(0, 0.5, (30, 2))
    outliers = rng.choice(30, 9, replace=False)
    dst[outliers] += rng.uniform(60, 150, (9, 2))
    model, inliers = ransac_rigid(src, dst, threshold=3.0, rng=np.random.default_rng(0))
    assert set(np.flatnonzero(~inliers)) == set(outliers)
    assert angle_of(model) == pytest.approx(4.0, abs=0.2)
    refit, keep = lmeds_rigid(src[inliers], dst[inliers], rng=np.random.default_rng(0))
    assert keep.sum() >= 19
    errors = np.linalg.norm(apply(refit, src) - apply(truth, src), axis=1)
    assert errors.max() < 1.0


def test_ransac_is_reproducible_with_a_seed() -> None:
    rng = np.random.default_rng(2)
    src = rng.uniform(-50, 50, (60, 2))
    dst = apply(rigid(2.0, (1.0, 1.0)), src)
    dst[:20] = rng.uniform(-50, 50, (20, 2))
    a = ransac_rigid(src, dst, threshold=1.0, iterations=50, rng=np.random.default_rng(5))
    b = ransac_rigid(src, dst, threshold=1.0, iterations=50, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_ransac_needs_two_matches() -> None:
    with pytest.raises(ValueError):
        ransac_rigid(np.zeros((1, 2)), np.zeros((1, 2)), threshold=1.0)


def test_parabola_offset_by_hand() -> None:
    # y = -(x - 0.3)^2 + 1 at -1, 0, 1: values -0.69, 0.91, 0.51; vertex at 0.3.
    assert parabola_offset(-0.69, 0.91, 0.51) == pytest.approx(0.3)
    assert parabola_offset(1.0, 0.0, 1.0) == 0.0  # a minimum: no move
    assert parabola_offset(0.0, 1.0, 1.9) == 0.5  # vertex at 9.5: clipped


def test_subpixel_peak_of_a_sampled_gaussian() -> None:
    # A Gaussian peak at (3.25, 5.6): the parabola on log-values would be exact; on the values
    # themselves it is within a few hundredths of a cell.
    r, c = np.mgrid[0:8, 0:10]
    values = np.exp(-((r - 3.25) ** 2 + (c - 5.6) ** 2) / 4.0)
    row, col, value = subpixel_peak(values)
    assert row == pytest.approx(3.25, abs=0.05)
    assert col == pytest.approx(5.6, abs=0.05)
    assert value == values.max()


def test_a_prior_keeps_ransac_off_an_implausible_consensus() -> None:
    # 12 matches agree on a 40-degree turn, 8 on the true 2-degree one: RANSAC alone takes
    # the larger set; with a +-12-degree prior it takes the plausible one.
    rng = np.random.default_rng(3)
    src = rng.uniform(-200, 200, (20, 2))
    dst = np.empty_like(src)
    dst[:12] = apply(rigid(40.0, (5.0, 0.0)), src[:12])
    dst[12:] = apply(rigid(2.0, (-10.0, 4.0)), src[12:])
    model, inliers = ransac_rigid(src, dst, threshold=2.0, rng=np.random.default_rng(0))
    assert angle_of(model) == pytest.approx(40.0, abs=0.1) and inliers.sum() == 12

    def accept(m: np.ndarray) -> bool:
        return abs(angle_of(m)) <= 12.0

    model, inliers = ransac_rigid(
        src, dst, threshold=2.0, rng=np.random.default_rng(0), accept=accept
    )
    assert angle_of(model) == pytest.approx(2.0, abs=0.1)
    assert np.flatnonzero(inliers).tolist() == list(range(12, 20))
    refit, _ = lmeds_rigid(src[inliers], dst[inliers], rng=np.random.default_rng(0), accept=accept)
    assert angle_of(refit) == pytest.approx(2.0, abs=0.1)
    # Nothing plausible at all: no inliers, so the caller falls back.
    _, none = ransac_rigid(src, dst, threshold=2.0, accept=lambda m: False)
    assert not none.any()
