"""Retrieval ranks, ROC/EER on hand-computed score sets, swap detection."""

from __future__ import annotations

import numpy as np
import pytest

from mmreg.methods.contrastive.matching import (
    MATCH_COLUMNS,
    SUMMARY_COLUMNS,
    calibrate_threshold,
    equal_error_rate,
    figure_png,
    impostor_threshold,
    match_table,
    recall_curve,
    roc_auc,
    roc_curve,
    summarize,
    swap_curve,
    swap_experiment,
    swap_figure_png,
    tpr_at_fpr,
    true_pair_scores,
)

GENUINE = [0.9, 0.8, 0.4]
IMPOSTOR = [0.7, 0.5, 0.3, 0.1]


def test_roc_auc_by_hand() -> None:
    # Impostors below each genuine score: 0.9 -> 4, 0.8 -> 4, 0.4 -> 2; 10 of 12 pairs.
    assert roc_auc(GENUINE, IMPOSTOR) == pytest.approx(10 / 12)
    assert roc_auc([0.5], [0.5]) == 0.5  # a tie counts half


def test_roc_curve_points_by_hand() -> None:
    roc = roc_curve(GENUINE, IMPOSTOR)
    expected = [
        (0.0, 0.0),
        (0.0, 1 / 3),  # >= 0.9
        (0.0, 2 / 3),  # >= 0.8
        (0.25, 2 / 3),  # >= 0.7
        (0.5, 2 / 3),  # >= 0.5
        (0.5, 1.0),  # >= 0.4
        (0.75, 1.0),  # >= 0.3
        (1.0, 1.0),  # >= 0.1
    ]
    np.testing.assert_allclose(roc[["fpr", "tpr"]].to_numpy(), expected)


def test_equal_error_rate_by_hand() -> None:
    # FNR stays 1/3 while FPR goes 0.25 -> 0.5: the rates cross at FPR = FNR = 1/3.
    assert equal_error_rate(GENUINE, IMPOSTOR) == pytest.approx(1 / 3)
    # Perfect separation: 0; reversed scores: 1.
    assert equal_error_rate([0.9, 0.8], [0.1, 0.2]) == pytest.approx(0.0)
    assert equal_error_rate([0.1, 0.2], [0.9, 0.8]) == pytest.approx(1.0)


def test_tpr_at_fpr_by_hand() -> None:
    assert tpr_at_fpr(GENUINE, IMPOSTOR, 0.01) == pytest.approx(2 / 3)
    assert tpr_at_fpr(GENUINE, IMPOSTOR, 0.5) == pytest.approx(1.0)


def test_match_table_ranks_and_swaps() -> None:
    # c's DXA prefers b's MR (0.6 > 0.5); c's MR prefers b's DXA (0.7 > 0.5).
    s = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.7], [0.1, 0.6, 0.5]])
    table = match_table(s, ["a", "b", "c"])
    assert list(table.columns) == list(MATCH_COLUMNS)
    assert table["partner_rank"].tolist() == [1, 1, 2, 1, 1, 2]
    assert table["query_modality"].tolist() == ["dxa"] * 3 + ["mr"] * 3
    row = table.iloc[2]
    assert (row.best_subject, row.best_similarity, row.partner_similarity) == ("b", 0.6, 0.5)
    assert table["swap_suspected"].tolist() == [False, False, True, False, False, True]
    # A threshold also flags a's pair? No (0.9); b's pair at 0.85? Yes (0.8 < 0.85).
    flagged = match_table(s, ["a", "b", "c"], threshold=0.85)["swap_suspected"].tolist()
    assert flagged == [False, True, True, False, True, True]


def test_ties_count_against_the_partner() -> None:
    table = match_table(np.full((3, 3), 0.5), ["a", "b", "c"])
    assert table["partner_rank"].tolist() == [3] * 6


def test_match_table_with_different_subject_lists() -> None:
    s = np.array([[0.2, 0.9], [0.8, 0.1]])
    table = match_table(s, ["a", "b"], ["b", "a"])
    assert table["partner_rank"].tolist() == [1, 1, 1, 1]
    genuine, impostor = true_pair_scores(s, ["a", "b"], ["b", "a"])
    assert sorted(genuine.tolist()) == [0.8, 0.9]
    assert sorted(impostor.tolist()) == [0.1, 0.2]


def test_summary_by_hand() -> None:
    s = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.7], [0.1, 0.6, 0.5]])
    summary = summarize(s, ["a", "b", "c"]).iloc[0]
    assert list(summarize(s, ["a", "b", "c"]).columns) == list(SUMMARY_COLUMNS)
    assert summary.recall_at_1 == pytest.approx(4 / 6)
    assert summary.recall_at_5 == 1.0
    assert summary.mean_rank == pytest.approx(8 / 6)
    # Genuine 0.9, 0.8, 0.5 vs impostors 0.2, 0.1, 0.3, 0.7, 0.1, 0.6: 16 of 18 ordered.
    assert summary.roc_auc == pytest.approx(16 / 18)


def test_recall_curve() -> None:
    s = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.7], [0.1, 0.6, 0.5]])
    curve = recall_curve(match_table(s, ["a", "b", "c"]), 3)
    assert curve["recall"].tolist() == pytest.approx([4 / 6, 1.0, 1.0])


def test_calibrate_threshold() -> None:
    scores = np.linspace(0.5, 0.99, 100)  # 100 true pairs
    t = calibrate_threshold(scores, 0.01)
    assert np.mean(scores < t) == pytest.approx(0.01)
    assert calibrate_threshold([0.5, 0.6, 0.7, 0.8], 0.25) == 0.6
    with pytest.raises(ValueError):
        calibrate_threshold([], 0.01)


def test_swap_experiment_separated_cohort() -> None:
    s = np.eye(10) * 0.5 + 0.3  # true pairs 0.8, impostors 0.3
    result = swap_experiment(s, [f"s{i}" for i in range(10)], 2, threshold=0.5, trials=20)
    assert (result.caught, result.false_alarms) == (1.0, 0.0)
    assert (result.caught_threshold, result.caught_best_match) == (1.0, 1.0)


def test_swap_experiment_threshold_versus_best_match() -> None:
    # Subject 0's true pair is weak (0.4) but still its best match; impostors 0.2.
    s = np.full((4, 4), 0.2)
    np.fill_diagonal(s, [0.4, 0.9, 0.9, 0.9])
    subjects = list("abcd")
    # Swapping all four: everybody is mislabelled, so nothing can be a false alarm.
    result = swap_experiment(s, subjects, 2, threshold=0.5, trials=3)
    assert result.caught == 1.0 and result.false_alarms == 0.0
    # One swap of two: when subject 0 stays correctly labelled, the threshold rule
    # flags it (0.4 < 0.5) but the best-match rule does not.
    result = swap_experiment(s, subjects, 1, threshold=0.5, trials=200, seed=1)
    assert result.false_alarms_best_match == 0.0
    # Subject 0 is unswapped in half the trials and then 1 of 2 unswapped subjects.
    assert result.false_alarms_threshold == pytest.approx(0.25, abs=0.06)
    assert result.caught == 1.0


def test_impostor_threshold_by_hand() -> None:
    # 4 subjects: 12 different-subject scores 0.01 .. 0.12, true pairs 0.9.
    s = np.full((4, 4), 0.9)
    off = ~np.eye(4, dtype=bool)
    s[off] = np.arange(1, 13) / 100
    # Top 25 % of the null: 3 of 12 scores (0.10, 0.11, 0.12) lie above 0.09... the
    # threshold is the 0.75 quantile ("higher"): the 9th smallest of 12 = 0.10.
    assert impostor_threshold(s, alpha=0.25) == pytest.approx(0.10)
    assert impostor_threshold(s, alpha=0.01) == pytest.approx(0.12)
    # Subject labels decide which pairs are the null, not the diagonal.
    names = list("abcd")
    assert impostor_threshold(s, names, names, alpha=0.25) == pytest.approx(0.10)
    with pytest.raises(ValueError, match="alpha"):
        impostor_threshold(s, alpha=0.0)
    with pytest.raises(ValueError, match="two subjects"):
        impostor_threshold(np.ones((1, 1)))


def test_within_cohort_swap_rule_catches_1_minus_alpha() -> None:
    # Null scores ~ N(0, 1), true pairs ~ N(6, 1): the within-cohort threshold at level
    # alpha catches about 1 - alpha of the swaps and, with this separation, never flags
    # a correct subject.
    rng = np.random.default_rng(0)
    n = 80
    s = rng.normal(0.0, 1.0, (n, n))
    s[np.diag_indices(n)] = rng.normal(6.0, 1.0, n)
    subjects = [f"s{i}" for i in range(n)]
    result = swap_experiment(s, subjects, 5, alpha=0.05, trials=300, seed=0)
    assert result.caught == pytest.approx(0.95, abs=0.02)
    assert result.false_alarms == 0.0
    assert result.alpha == 0.05 and result.threshold == pytest.approx(1.645, abs=0.15)
    curve = swap_curve(s, subjects, 5, alphas=(0.01, 0.05, 0.2), trials=100)
    assert curve["caught"].is_monotonic_decreasing  # a larger alpha lowers the threshold
    assert curve["threshold"].is_monotonic_decreasing
    with pytest.raises(ValueError, match="not both"):
        swap_experiment(s, subjects, 5, alpha=0.05, threshold=1.0)
    assert swap_figure_png(curve, alpha=0.05, n_swaps=5)[:4] == b"\x89PNG"


def test_swap_experiment_checks_sizes() -> None:
    with pytest.raises(ValueError, match="disjoint"):
        swap_experiment(np.eye(3), list("abc"), 2)


def test_figure_png() -> None:
    s = np.array([[0.9, 0.2], [0.3, 0.8]])
    curves = {
        "dense": (
            roc_curve(*true_pair_scores(s, ["a", "b"])),
            recall_curve(match_table(s, ["a", "b"])),
        )
    }
    png = figure_png(curves)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
