"""Training losses against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from mmreg.methods.keymorph.losses import (
    keypoint_distance,
    mse_loss,
    one_hot,
    soft_dice_loss,
    warp_volume,
)

torch.set_num_threads(1)


def test_keypoint_distance_by_hand() -> None:
    a = torch.zeros(1, 2, 3)
    b = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 12.0]]])
    assert float(keypoint_distance(a, b, eps=0.0)) == pytest.approx((5.0 + 12.0) / 2)
    # Charbonnier: sqrt(25 + 1) - 1 and sqrt(144 + 1) - 1.
    expected = ((26**0.5 - 1) + (145**0.5 - 1)) / 2
    assert float(keypoint_distance(a, b)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="shapes differ"):
        keypoint_distance(a, b[:, :1])


def test_keypoint_distance_has_a_gradient_at_zero() -> None:
    a = torch.zeros(1, 1, 2, requires_grad=True)
    keypoint_distance(a, torch.zeros(1, 1, 2)).backward()
    assert torch.equal(a.grad, torch.zeros(1, 1, 2))


def test_soft_dice_by_hand() -> None:
    target = one_hot(torch.tensor([[0, 1, 1, 2]]), 3)
    pred = one_hot(torch.tensor([[0, 1, 2, 2]]), 3)
    # class 1: 2*1/(1+2) = 2/3; class 2: 2*1/(2+1) = 2/3 -> loss 1/3 (background excluded).
    assert float(soft_dice_loss(pred, target)) == pytest.approx(1 / 3, abs=1e-4)
    # With background: class 0 is perfect -> mean(1, 2/3, 2/3) -> loss 2/9.
    loss = soft_dice_loss(pred, target, include_background=True)
    assert float(loss) == pytest.approx(2 / 9, abs=1e-4)
    assert float(soft_dice_loss(target, target)) == pytest.approx(0.0, abs=1e-6)


def test_soft_dice_skips_classes_absent_from_both() -> None:
    target = one_hot(torch.tensor([[0, 1, 1, 0]]), 4)  # classes 2, 3 absent everywhere
    assert float(soft_dice_loss(target, target)) == pytest.approx(0.0, abs=1e-6)


def test_mse_with_and_without_mask() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([1.0, 0.0, 3.0, 0.0])
    assert float(mse_loss(a, b)) == pytest.approx((4 + 16) / 4)
    mask = torch.tensor([True, True, False, False])
    assert float(mse_loss(a, b, mask)) == pytest.approx(4 / 2)


def test_warp_volume_identity_and_shift() -> None:
    vol = torch.arange(24.0).reshape(1, 1, 2, 3, 4)
    idx = torch.stack(
        torch.meshgrid(torch.arange(2.0), torch.arange(3.0), torch.arange(4.0), indexing="ij"), -1
    )[None]
    assert torch.allclose(warp_volume(vol, idx), vol)
    # Half a voxel along the last axis: the mean of neighbours; beyond the edge: zero fill.
    shifted = warp_volume(vol, idx + torch.tensor([0.0, 0.0, 0.5]))
    assert float(shifted[0, 0, 0, 0, 0]) == pytest.approx(0.5)
    assert float(shifted[0, 0, 0, 0, 3]) == pytest.approx(1.5)  # half of 3, half of outside 0


def test_warp_volume_passes_gradients_to_coordinates() -> None:
    vol = torch.linspace(0, 1, 10).reshape(1, 1, 10)[..., None].expand(1, 1, 10, 4).contiguous()
    coords = torch.full((1, 4, 4, 2), 3.3, requires_grad=True)
    warp_volume(vol, coords).sum().backward()
    assert coords.grad is not None and float(coords.grad[..., 0].abs().sum()) > 0
