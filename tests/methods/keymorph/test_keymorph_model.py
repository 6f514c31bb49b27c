"""Keypoint detector: centre-of-mass layer on hand-made heatmaps, shapes, configs."""

from __future__ import annotations

import pytest
import torch

from mmreg.methods.keymorph.model import (
    CenterOfMass,
    DetectorConfig,
    KeypointDetector,
    build_detector,
)

torch.set_num_threads(1)


def test_center_of_mass_relu_on_a_hand_made_heatmap() -> None:
    h = torch.zeros(1, 2, 5, 6)
    # Keypoint 0: weights 1 at (1, 1) and 3 at (3, 5) -> (1*1 + 3*3)/4, (1*1 + 3*5)/4.
    h[0, 0, 1, 1], h[0, 0, 3, 5] = 1.0, 3.0
    # Keypoint 1: negative values are cut by the ReLU; one positive voxel at (4, 0).
    h[0, 1] = -1.0
    h[0, 1, 4, 0] = 0.5
    kp = CenterOfMass("relu")(h)
    assert kp.tolist() == [[[2.5, 4.0], [4.0, 0.0]]]


def test_center_of_mass_softmax_and_coarse_heatmap_scale() -> None:
    h = torch.full((1, 1, 4, 4, 4), -1e4)
    h[0, 0, 1, 2, 3] = 0.0
    # Heatmap at half resolution: voxel j covers input voxels 2j, 2j+1 -> centre 2j + 0.5.
    kp = CenterOfMass("softmax", scale=2.0)(h)
    assert torch.allclose(kp, torch.tensor([[[2.5, 4.5, 6.5]]]))
    # Equal logits at two voxels: their midpoint.
    h[0, 0, 3, 2, 3] = 0.0
    kp = CenterOfMass("softmax")(h)
    assert torch.allclose(kp, torch.tensor([[[2.0, 2.0, 3.0]]]))


def test_center_of_mass_all_negative_relu_is_the_grid_centre() -> None:
    kp = CenterOfMass("relu")(-torch.ones(1, 1, 3, 5))
    assert torch.allclose(kp, torch.tensor([[[1.0, 2.0]]]))


@pytest.mark.parametrize("ndim", [2, 3])
def test_detector_shapes(ndim: int) -> None:
    config = DetectorConfig(
        ndim=ndim, n_keypoints=5, input_size=16, channels=(2, 4, 4), heatmap_level=1
    )
    net = build_detector(config)
    x = torch.rand(3, 1, *([16] * ndim))
    assert net.heatmaps(x).shape == (3, 5, *([8] * ndim))
    kp = net(x)
    assert kp.shape == (3, 5, ndim)
    # Keypoints are convex combinations of voxel centres: inside the grid.
    assert (kp >= -0.5).all() and (kp <= 15.5).all()
    kp.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_detector_rejects_wrong_input_size() -> None:
    net = build_detector(DetectorConfig(ndim=2, n_keypoints=2, input_size=8, channels=(2, 2)))
    with pytest.raises(ValueError, match="expected input"):
        net(torch.rand(1, 1, 9, 8))


def test_config_round_trip_and_validation() -> None:
    config = DetectorConfig(ndim=3, n_keypoints=512, input_size=32, channels=(4, 8, 8, 8))
    assert DetectorConfig.from_dict(config.to_dict()) == config
    assert config.spacing == pytest.approx(256.0 / 32)
    assert isinstance(build_detector(config.to_dict()), KeypointDetector)
    with pytest.raises(ValueError, match="n_keypoints"):
        DetectorConfig(n_keypoints=513)
    with pytest.raises(ValueError, match="divisible"):
        DetectorConfig(input_size=50, channels=(4, 8, 8))
    with pytest.raises(ValueError, match="heatmap_level"):
        DetectorConfig(channels=(4, 8), heatmap_level=2)
    with pytest.raises(ValueError, match="activation"):
        DetectorConfig(activation="sigmoid")
