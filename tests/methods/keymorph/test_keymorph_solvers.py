"""Closed-form solvers against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from mmreg.methods.keymorph.solvers import (
    apply_matrix,
    fit_affine,
    fit_rigid,
    fit_tps,
    irls,
    robust_weights,
    tps_kernel,
)

torch.set_num_threads(1)


def _points(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(2, n, d, generator=gen, dtype=torch.float64) * 2 - 1


def _rotation_z(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor(
        [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )


def test_affine_on_a_unit_square_by_hand() -> None:
    # x' = 2x + y + 3, y' = -x + 0.5y - 1 on the corners of the unit square.
    src = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    dst = torch.tensor([[[3.0, -1.0], [5.0, -2.0], [4.0, -0.5], [6.0, -1.5]]], dtype=torch.float64)
    m = fit_affine(src, dst)[0]
    expected = torch.tensor([[2.0, 1.0, 3.0], [-1.0, 0.5, -1.0], [0.0, 0.0, 1.0]], dtype=m.dtype)
    assert torch.allclose(m, expected, atol=1e-12)


@pytest.mark.parametrize("d", [2, 3])
def test_affine_exact_recovery_batched(d: int) -> None:
    src = _points(20, d)
    gen = torch.Generator().manual_seed(1)
    true = torch.eye(d + 1, dtype=torch.float64).repeat(2, 1, 1)
    true[:, :d, :] += torch.rand(2, d, d + 1, generator=gen, dtype=torch.float64) - 0.5
    dst = apply_matrix(true, src)
    assert torch.allclose(fit_affine(src, dst), true, atol=1e-10)


def test_affine_ignores_zero_weight_outlier() -> None:
    src = _points(12, 3)[:1]
    true = torch.eye(4, dtype=torch.float64)[None].clone()
    true[0, :3, 3] = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    dst = apply_matrix(true, src)
    dst[0, 0] += 50.0
    weights = torch.ones(1, 12, dtype=torch.float64)
    weights[0, 0] = 0.0
    assert torch.allclose(fit_affine(src, dst, weights), true, atol=1e-10)
    assert not torch.allclose(fit_affine(src, dst), true, atol=1e-3)


def test_affine_ridge_pulls_degenerate_fit_to_identity_linear_part() -> None:
    # All points on a line: plain least squares is singular, the ridge keeps it defined.
    t = torch.linspace(-1, 1, 8, dtype=torch.float64)
    src = torch.stack([t, 0 * t, 0 * t], -1)[None]
    m = fit_affine(src, src + 1.0, ridge=1e-3)[0]
    assert torch.isfinite(m).all()
    assert torch.allclose(m[:3, :3], torch.eye(3, dtype=m.dtype), atol=1e-6)
    assert torch.allclose(apply_matrix(m[None], src), src + 1.0, atol=1e-6)


def test_rigid_recovers_rotation_and_shift() -> None:
    src = _points(15, 3)
    true = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    true[0, :3, :3] = _rotation_z(170.0)
    true[1, :3, :3] = _rotation_z(-35.0)
    true[:, :3, 3] = torch.tensor([[4.0, 0.0, -1.0], [0.0, 2.0, 3.0]], dtype=torch.float64)
    m = fit_rigid(src, apply_matrix(true, src))
    assert torch.allclose(m, true, atol=1e-10)


def test_rigid_never_returns_a_reflection() -> None:
    src = _points(10, 3)[:1]
    mirrored = src * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    m = fit_rigid(src, mirrored)[0]
    assert torch.linalg.det(m[:3, :3]) == pytest.approx(1.0, abs=1e-10)
    assert torch.allclose(m[:3, :3] @ m[:3, :3].T, torch.eye(3, dtype=m.dtype), atol=1e-10)


def test_similarity_recovers_scale() -> None:
    src = _points(10, 2)[:1]
    rot = _rotation_z(30.0)[:2, :2]
    dst = 1.5 * src @ rot.T + torch.tensor([1.0, 2.0], dtype=torch.float64)
    m = fit_rigid(src, dst, scaling=True)[0]
    assert torch.allclose(m[:2, :2], 1.5 * rot, atol=1e-10)


def test_tps_kernel_values() -> None:
    r2 = torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)
    assert torch.allclose(tps_kernel(r2, 3), torch.tensor([2.0, 1.0, 0.0], dtype=r2.dtype))
    # r^2 log r: 4 log 2, 0, 0
    assert torch.allclose(
        tps_kernel(r2, 2), torch.tensor([4 * math.log(2.0), 0.0, 0.0], dtype=r2.dtype)
    )


@pytest.mark.parametrize("d", [2, 3])
def test_tps_interpolates_at_lambda_zero(d: int) -> None:
    src = _points(16, d)
    dst = src + 0.2 * torch.sin(3 * src)
    spline = fit_tps(src, dst, 0.0)
    assert torch.allclose(spline(src), dst, atol=1e-8)
    # And not at a large lambda: the bending is smoothed away.
    assert not torch.allclose(fit_tps(src, dst, 10.0)(src), dst, atol=1e-3)


def test_tps_approaches_the_affine_fit_as_lambda_grows() -> None:
    src = _points(16, 3)
    dst = src + 0.2 * torch.sin(3 * src)
    affine = apply_matrix(fit_affine(src, dst), src)
    gaps = [float((fit_tps(src, dst, lam)(src) - affine).abs().max()) for lam in (0.1, 10, 1e4)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-3


def test_tps_of_affine_data_is_that_affine_map_for_any_lambda() -> None:
    src = _points(12, 3)[:1]
    true = torch.eye(4, dtype=torch.float64)[None].clone()
    true[0, :3, :3] = _rotation_z(60.0) * 1.1
    true[0, :3, 3] = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    dst = apply_matrix(true, src)
    query = _points(5, 3, seed=3)[:1]
    for lam in (0.0, 1.0, torch.tensor([5.0])):
        spline = fit_tps(src, dst, lam)
        assert torch.allclose(spline(query), apply_matrix(true, query), atol=1e-8)
        assert torch.allclose(spline.affine_matrix(), true, atol=1e-8)


def test_tps_lambda_per_batch_item_and_gradients() -> None:
    src = _points(10, 2).requires_grad_(True)
    dst = src.detach() * 1.1
    spline = fit_tps(src, dst, torch.tensor([0.0, 1.0]))
    spline(src).sum().backward()
    assert src.grad is not None and torch.isfinite(src.grad).all()
    with pytest.raises(ValueError, match="lam"):
        fit_tps(src.detach(), dst, torch.tensor([1.0, 2.0, 3.0]))


def test_solvers_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="src and dst"):
        fit_affine(torch.zeros(1, 5, 3), torch.zeros(1, 5, 2))
    with pytest.raises(ValueError, match="weights"):
        fit_rigid(torch.zeros(1, 5, 3), torch.zeros(1, 5, 3), torch.ones(1, 4))


def test_robust_weights_by_hand() -> None:
    residuals = torch.tensor([[1.0, 1.0, 1.0, 1.0, 100.0]])
    w = robust_weights(residuals, c=3.0)
    # median 1 -> cutoff 3 * 1.4826; (1 - (1/4.4478)^2)^2 for the inliers, 0 for the outlier.
    inlier = (1 - (1 / (3 * 1.4826)) ** 2) ** 2
    assert torch.allclose(w, torch.tensor([[inlier] * 4 + [0.0]]), atol=1e-6)


def test_irls_rejects_gross_outliers() -> None:
    src = _points(30, 3)[:1]
    true = torch.eye(4, dtype=torch.float64)[None].clone()
    true[0, :3, :3] = _rotation_z(120.0)
    true[0, :3, 3] = torch.tensor([10.0, -5.0, 2.0], dtype=torch.float64)
    dst = apply_matrix(true, src)
    dst[0, :4] += torch.tensor([30.0, -20.0, 25.0], dtype=torch.float64)
    plain = fit_affine(src, dst)
    matrix, weights = irls(fit_affine, src, dst)
    assert torch.allclose(matrix, true, atol=1e-6)
    assert not torch.allclose(plain, true, atol=1e-2)
    assert (weights[0, :4] == 0).all() and (weights[0, 4:] > 0.5).all()
