"""Dual encoder: shapes, unit norm, centring, config round trip, augmentation."""

from __future__ import annotations

import pytest
import torch

from mmreg.methods.contrastive.augment import AugmentSettings, augment, shift
from mmreg.methods.contrastive.model import ContrastiveConfig, DualEncoder, build_model, cell_mask

TINY = {"widths": (4, 8, 8, 16), "embed_dim": 8}


def test_dense_embeddings_shape_and_norm() -> None:
    model = DualEncoder(ContrastiveConfig(**TINY)).eval()
    with torch.no_grad():
        f = model.embed(torch.rand(2, 2, 30, 45), "dxa")
    assert f.shape == (2, 8, 4, 6)  # ceil(30 / 8), ceil(45 / 8)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(2, 4, 6))
    assert model.config.stride == 8


def test_channels_are_configurable_and_checked() -> None:
    model = DualEncoder(ContrastiveConfig(dxa_channels=1, mr_channels=3, **TINY)).eval()
    with torch.no_grad():
        assert model.embed(torch.rand(1, 3, 16, 16), "mr").shape == (1, 8, 2, 2)
        with pytest.raises(ValueError, match="expects"):
            model.embed(torch.rand(1, 2, 16, 16), "dxa")


def test_global_pooling_baseline() -> None:
    model = DualEncoder(ContrastiveConfig(pooling="global", **TINY)).eval()
    with torch.no_grad():
        f = model.embed(torch.rand(3, 2, 24, 24), "mr")
    assert f.shape == (3, 8)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(3))


def test_centring_removes_the_mean_embedding_over_the_footprint() -> None:
    torch.manual_seed(0)
    model = DualEncoder(ContrastiveConfig(norm="none", **TINY)).eval()
    x = torch.rand(1, 2, 32, 32)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16, :] = 1.0
    with torch.no_grad():
        raw = model.heads["dxa"](model.encoders["dxa"](x))
        f = model.embed(x, "dxa", mask)
    inside = raw[..., :2, :] - raw[..., :2, :].mean(dim=(2, 3), keepdim=True)
    expected = torch.nn.functional.normalize(inside, dim=1)
    torch.testing.assert_close(f[..., :2, :], expected)


def test_config_roundtrip_and_validation() -> None:
    config = ContrastiveConfig(**TINY, spacing_mm=3.0)
    again = ContrastiveConfig.from_dict({**config.to_dict(), "unknown": 1})
    assert again == config
    assert isinstance(build_model(config.to_dict()), DualEncoder)
    with pytest.raises(ValueError, match="pooling"):
        ContrastiveConfig(pooling="max")
    with pytest.raises(ValueError, match="norm"):
        ContrastiveConfig(norm="layer")


def test_cell_mask() -> None:
    m = torch.zeros(1, 1, 4, 6)
    m[..., :, :3] = 1.0  # covers cells (., 0) fully and (., 1) half
    assert cell_mask(m, 2)[0, 0].tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]


def test_shift_with_zero_fill() -> None:
    x = torch.arange(9.0).reshape(1, 3, 3)
    assert shift(x, 1, -1)[0].tolist() == [[0, 0, 0], [1, 2, 0], [4, 5, 0]]
    assert shift(x, 5, 0).abs().sum() == 0


def test_augment_ranges_and_reproducibility() -> None:
    x = torch.rand(4, 2, 20, 20)
    mask = torch.ones(4, 1, 20, 20)
    settings = AugmentSettings(max_shift_px=0, brightness=0.2, contrast=0.0)
    y, _ = augment(x, mask, settings, torch.Generator().manual_seed(0))
    gain = y.sum(dim=(2, 3)) / x.sum(dim=(2, 3))  # pure gain: ratio of sums
    assert ((gain >= 0.8 - 1e-5) & (gain <= 1.2 + 1e-5)).all()
    z, _ = augment(x, mask, settings, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, z)
    # Shifts move image and footprint together; outside the footprint stays 0.
    settings = AugmentSettings(max_shift_px=3)
    mask = torch.zeros(4, 1, 20, 20)
    mask[..., 5:15, 5:15] = 1.0
    y, m = augment(x, mask, settings, torch.Generator().manual_seed(1))
    assert (y * (1 - m)).abs().max() == 0
    assert torch.equal(m.sum(dim=(2, 3)), mask.sum(dim=(2, 3)))


def test_shared_levels_tie_convolutions_but_not_normalisation() -> None:
    model = DualEncoder(ContrastiveConfig(shared_levels=2, **TINY))
    dxa, mr = model.encoders["dxa"].levels, model.encoders["mr"].levels
    assert dxa[3][1].weight is mr[3][1].weight and dxa[2][1].weight is mr[2][1].weight
    assert dxa[1][1].weight is not mr[1][1].weight
    assert dxa[3][2].weight is not mr[3][2].weight  # batch norm stays per modality
    # Shared weights count once, and survive a state-dict round trip tied.
    separate = DualEncoder(ContrastiveConfig(**TINY))
    n_shared = sum(p.numel() for p in model.parameters())
    assert n_shared < sum(p.numel() for p in separate.parameters())
    again = DualEncoder(ContrastiveConfig(shared_levels=2, **TINY))
    again.load_state_dict(model.state_dict())
    assert again.encoders["mr"].levels[3][1].weight is again.encoders["dxa"].levels[3][1].weight
    torch.testing.assert_close(again.encoders["mr"].levels[3][1].weight, dxa[3][1].weight)
    with pytest.raises(ValueError, match="shared_levels"):
        ContrastiveConfig(shared_levels=4, **TINY)
