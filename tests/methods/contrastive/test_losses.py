"""Similarity and InfoNCE: hand-computed values and the conv2d reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmreg.methods.contrastive.losses import (
    centre_window,
    correlation,
    dense_similarity,
    global_similarity,
    info_nce,
)


def test_info_nce_two_by_two_by_hand() -> None:
    # Rows (DXA -> MR): -log softmax([1, 0])[0] = log(1 + e^-1);
    # -log softmax([2, 1])[1] = log(1 + e).
    # Columns (MR -> DXA): [1, 2] -> log(1 + e); [0, 1] -> log(1 + e^-1).
    s = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    rows = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    cols = (math.log(1 + math.e) + math.log(1 + math.exp(-1))) / 2
    assert info_nce(s, temperature=1.0).item() == pytest.approx((rows + cols) / 2, abs=1e-6)


def test_info_nce_asymmetric_rows_and_columns_by_hand() -> None:
    # S = [[0.5, 0.1], [0.3, 0.2]], tau = 0.1 -> logits [[5, 1], [3, 2]].
    # rows: log(1 + e^-4), log(1 + e^1); cols: [5, 3] -> log(1 + e^-2); [1, 2] -> log(1 + e^-1).
    s = torch.tensor([[0.5, 0.1], [0.3, 0.2]])
    expected = 0.25 * (
        math.log(1 + math.exp(-4))
        + math.log(1 + math.exp(1))
        + math.log(1 + math.exp(-2))
        + math.log(1 + math.exp(-1))
    )
    assert info_nce(s, temperature=0.1).item() == pytest.approx(expected, abs=1e-5)


def test_info_nce_default_temperature_is_sharp() -> None:
    # With tau = 0.01 a 0.1 margin on every negative already gives a loss near 0.
    s = torch.eye(3) * 0.1 + 0.5
    assert info_nce(s).item() == pytest.approx(math.log(1 + 2 * math.exp(-10)), rel=1e-3)


def test_info_nce_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="square"):
        info_nce(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.zeros(2, 2), temperature=0.0)


def test_correlation_matches_conv2d_full_mode() -> None:
    torch.manual_seed(0)
    dxa, mr = torch.randn(3, 5, 7, 9), torch.randn(2, 5, 4, 6)
    corr = correlation(dxa, mr)
    padded = F.pad(dxa, (5, 5, 3, 3))  # full correlation: pad by (h - 1, w - 1)
    reference = torch.stack([F.conv2d(padded, mr[b : b + 1])[:, 0] for b in range(2)], 1) / 24
    assert corr.values.shape == (3, 2, 10, 14)
    assert corr.offset == (3, 5)
    torch.testing.assert_close(corr.values, reference, atol=1e-5, rtol=1e-5)


def test_correlation_shift_convention_and_mask_normalisation() -> None:
    dxa = torch.zeros(1, 1, 6, 6)
    dxa[0, 0, 4, 1] = 1.0
    mr = torch.zeros(1, 1, 3, 3)
    mr[0, 0, 1, 0] = 1.0
    mask = torch.zeros(1, 1, 3, 3)
    mask[..., :2, :] = 1.0  # 6 valid MR cells
    corr = correlation(dxa, mr, mask)
    flat = int(corr.values[0, 0].argmax())
    index = divmod(flat, corr.values.shape[-1])
    assert corr.shift(index) == (3, 1)  # MR cell (1, 0) on DXA cell (4, 1)
    assert corr.values.max().item() == pytest.approx(1 / 6)


def test_masked_mr_cells_do_not_count() -> None:
    torch.manual_seed(1)
    dxa = torch.randn(1, 4, 6, 6)
    mr = torch.randn(1, 4, 3, 3)
    mask = torch.ones(1, 1, 3, 3)
    mask[..., 2, :] = 0
    garbage = mr.clone()
    garbage[..., 2, :] = 100.0
    torch.testing.assert_close(
        correlation(dxa, mr, mask).values, correlation(dxa, garbage, mask).values
    )


def test_dense_similarity_is_one_for_a_crop_of_unit_features() -> None:
    torch.manual_seed(2)
    f = F.normalize(torch.randn(3, 8, 6, 7), dim=1)
    sim = dense_similarity(f, f[:, :, 1:5, 2:6])
    torch.testing.assert_close(sim.diagonal(), torch.ones(3))
    assert (sim - torch.eye(3)).max() < 0.9  # random maps do not match each other


def test_partial_overlap_cannot_beat_its_overlap_fraction() -> None:
    # Identical constant unit maps: full overlap scores 1, and the MR is larger than the DXA
    # here, so the best it can do is the fraction of MR cells over the DXA.
    dxa = torch.zeros(1, 2, 2, 2)
    dxa[:, 0] = 1.0
    mr = torch.zeros(1, 2, 4, 2)
    mr[:, 0] = 1.0
    assert dense_similarity(dxa, mr).item() == pytest.approx(0.5)


def test_global_similarity_is_the_cosine_matrix() -> None:
    a = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=1)
    b = F.normalize(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), dim=1)
    expected = torch.tensor([[0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    torch.testing.assert_close(global_similarity(a, b), expected)


def test_centre_window_and_shift_prior() -> None:
    # DXA 7 cells, MR 3 cells: shift 2 puts the centres together, at index 2 + 2 = 4.
    assert centre_window((7, 7), (3, 3), 1) == (slice(3, 6), slice(3, 6))
    dxa = torch.zeros(1, 1, 7, 7)
    dxa[0, 0, 0, 0] = 1.0  # only matches far from the centre
    dxa[0, 0, 3, 3] = 0.5  # matches at the centre
    mr = torch.zeros(1, 1, 3, 3)
    mr[0, 0, 1, 1] = 1.0
    assert dense_similarity(dxa, mr).item() == pytest.approx(1 / 9)
    assert dense_similarity(dxa, mr, max_shift=1).item() == pytest.approx(0.5 / 9)


def test_soft_maximum_over_shifts() -> None:
    torch.manual_seed(3)
    dxa = F.normalize(torch.randn(2, 4, 6, 6), dim=1)
    mr = F.normalize(torch.randn(2, 4, 3, 3), dim=1)
    hard = dense_similarity(dxa, mr)
    values = correlation(dxa, mr).values.flatten(-2)
    t = 0.05
    expected = t * (torch.logsumexp(values / t, dim=-1) - math.log(values.shape[-1]))
    torch.testing.assert_close(dense_similarity(dxa, mr, softness=t), expected)
    assert (dense_similarity(dxa, mr, softness=t) <= hard + 1e-6).all()
    torch.testing.assert_close(dense_similarity(dxa, mr, softness=1e-4), hard, atol=2e-3, rtol=0)
