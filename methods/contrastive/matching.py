"""Cross-modal subject matching: retrieval ranks, verification ROC, subject-swap detection.

Given the similarities of N DXA scans to N MR scans (``similarity[a, b]``, from
:func:`similarity_matrix` or any other scorer) and the subject of each scan, this
module answers three questions (Windsor et al. 2021, section 3.2):

* **Retrieval**: for each scan of one modality, at which rank does its own subject's
  scan of the other modality come? -> :func:`match_table` (one row per query) and
  :func:`summarize` (recall@1/5/10, mean rank).
* **Verification**: how well does one similarity separate true pairs from impostor
  pairs? -> ROC AUC, equal error rate, TPR at 1% FPR (:func:`verification`, :func:`roc_curve`).
* **Swap detection**: would a swapped pair (a DXA filed under the wrong subject) be
  caught? Calibrated within the cohort itself (:func:`impostor_threshold`): the N(N-1)
  pairs of different subjects are the null, what a swapped pair's score looks like; a
  claimed pair is flagged when its score does not rise above the top ``alpha`` of that
  null (a one-sided test at level ``alpha``, so about ``1 - alpha`` of swaps are
  caught whatever the scores' scale). Alternatives: the best-match rule (its best
  cross-modal match is another subject) and a threshold calibrated to 1% false alarms
  on the true pairs of a second cohort (:func:`calibrate_threshold`).
  :func:`swap_experiment` injects k swaps into a cohort and reports the caught fraction
  and the false-alarm rate; :func:`swap_curve` does so over a range of ``alpha``.

Everything here is NumPy/pandas; no model or engine is needed.

Example:
    >>> import numpy as np
    >>> s = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.7], [0.1, 0.6, 0.5]])
    >>> table = match_table(s, ["a", "b", "c"])
    >>> table[["query_subject", "query_modality", "partner_rank"]].values.tolist()[:3]
    [['a', 'dxa', 1], ['b', 'dxa', 1], ['c', 'dxa', 2]]
    >>> summarize(s, ["a", "b", "c"])["recall_at_1"].item()  # c's DXA and c's MR both miss
    0.6666666666666666
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "MATCH_COLUMNS",
    "SUMMARY_COLUMNS",
    "SWAP_ALPHA",
    "SwapResult",
    "calibrate_threshold",
    "csls",
    "equal_error_rate",
    "figure_png",
    "impostor_threshold",
    "match_table",
    "recall_curve",
    "roc_auc",
    "roc_curve",
    "summarize",
    "swap_curve",
    "swap_experiment",
    "swap_figure_png",
    "true_pair_scores",
    "verification",
]

#: Columns of ``matching.csv`` (one row per query scan).
MATCH_COLUMNS = (
    "query_subject",
    "query_modality",
    "partner_rank",
    "partner_similarity",
    "best_subject",
    "best_similarity",
    "swap_suspected",
)
#: Columns of the one-row summary.
SUMMARY_COLUMNS = (
    "n_subjects",
    "recall_at_1",
    "recall_at_5",
    "recall_at_10",
    "mean_rank",
    "roc_auc",
    "eer",
    "tpr_at_fpr_1pct",
)

#: Level of the within-cohort swap test: a claimed pair is flagged when its score is not
#: above the top ``SWAP_ALPHA`` of the cohort's different-subject pairs (so about
#: ``1 - SWAP_ALPHA`` of swaps are caught). On 60 unseen phantoms (CSLS scores) 0.04 flags
#: 96 % of injected swaps at 0.2 % false alarms (docs/contrastive.md).
SWAP_ALPHA = 0.04

#: Neighbours of the cross-domain similarity local scaling of the matching scores.
CSLS_K = 10
#: MR rotations (degrees) searched when scoring a pair: scans of one subject differ by a
#: few degrees in the coronal plane. On 60 unseen phantoms (CSLS) recall@1 0.825 -> 0.917,
#: TPR at 1 % FPR 0.867 -> 0.967 against the paper's shifts-only (0,) (docs/contrastive.md).
MATCH_ANGLES = (-4.0, -2.0, 0.0, 2.0, 4.0)

FloatArray = npt.NDArray[np.float64]


def _check(
    similarity: npt.ArrayLike,
    dxa_subjects: Sequence[str],
    mr_subjects: Sequence[str] | None,
) -> tuple[FloatArray, list[str], list[str]]:
    s = np.asarray(similarity, dtype=float)
    dxa = [str(x) for x in dxa_subjects]
    mr = dxa if mr_subjects is None else [str(x) for x in mr_subjects]
    if s.ndim != 2 or s.shape != (len(dxa), len(mr)):
        raise ValueError(
            f"similarity shape {s.shape} does not match {len(dxa)} DXA and {len(mr)} MR subjects"
        )
    if len(set(dxa)) != len(dxa) or len(set(mr)) != len(mr):
        raise ValueError("subject ids must be unique within each modality")
    if not np.all(np.isfinite(s)):
        raise ValueError("similarities must be finite")
    return s, dxa, mr


def true_pair_scores(
    similarity: npt.ArrayLike,
    dxa_subjects: Sequence[str],
    mr_subjects: Sequence[str] | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Similarities of true pairs (same subject) and of all impostor pairs.

    Example:
        >>> g, i = true_pair_scores([[0.9, 0.2], [0.3, 0.8]], ["a", "b"])
        >>> g.tolist(), sorted(i.tolist())
        ([0.9, 0.8], [0.2, 0.3])
    """
    s, dxa, mr = _check(similarity, dxa_subjects, mr_subjects)
    same = np.array([[a == b for b in mr] for a in dxa], dtype=bool)
    return s[same], s[~same]


def _ranks(row: FloatArray, partner: int) -> int:
    # Ties with the partner are counted against it: a constant scorer must not look perfect.
    return int(
        np.sum(row > row[partner])
        + np.sum(row[np.arange(row.size) != partner] == row[partner])
        + 1
    )


def match_table(
    similarity: npt.ArrayLike,
    dxa_subjects: Sequence[str],
    mr_subjects: Sequence[str] | None = None,
    *,
    threshold: float | None = None,
) -> pd.DataFrame:
    """One row per query scan (each DXA against all MRs, then each MR against all DXAs).

    Args:
        similarity: ``(A, B)`` similarities of DXA ``a`` and MR ``b``.
        dxa_subjects: Subject of each DXA (row).
        mr_subjects: Subject of each MR (column); default: the same as ``dxa_subjects``.
        threshold: Optional similarity below which a claimed pair is suspected (see
            :func:`impostor_threshold`, :func:`calibrate_threshold`); without it, the
            best-match rule.

    Returns:
        Columns :data:`MATCH_COLUMNS`: ``partner_rank`` is 1 when the query's own
        subject scores highest (ties count against it), ``best_subject`` is the
        top-scoring scan's subject, ``swap_suspected`` is true when the partner's
        similarity is below ``threshold`` or, without one, when the best is another
        subject. Queries
        whose subject has no scan in the other modality are skipped.
    """
    s, dxa, mr = _check(similarity, dxa_subjects, mr_subjects)
    rows = []
    for modality, scores, queries, targets in (("dxa", s, dxa, mr), ("mr", s.T, mr, dxa)):
        index = {subject: k for k, subject in enumerate(targets)}
        for q, subject in enumerate(queries):
            if subject not in index:
                continue
            row = scores[q]
            partner = index[subject]
            best = int(np.argmax(row))
            rank = _ranks(row, partner)
            # A calibrated threshold decides alone: the best-match rule would add every
            # correct subject whose own scan merely ranks second (a false alarm).
            suspected = rank != 1 if threshold is None else bool(row[partner] < threshold)
            rows.append(
                {
                    "query_subject": subject,
                    "query_modality": modality,
                    "partner_rank": rank,
                    "partner_similarity": float(row[partner]),
                    "best_subject": targets[best],
                    "best_similarity": float(row[best]),
                    "swap_suspected": bool(suspected),
                }
            )
    return pd.DataFrame(rows, columns=list(MATCH_COLUMNS))


def roc_curve(genuine: npt.ArrayLike, impostor: npt.ArrayLike) -> pd.DataFrame:
    """ROC operating points of "score >= threshold means same subject".

    Returns:
        Columns ``threshold, fpr, tpr``, from ``(+inf, 0, 0)`` down to the lowest score
        (``fpr = tpr = 1``), one row per distinct score.

    Example:
        >>> roc_curve([0.9, 0.4], [0.5]).values.tolist()
        [[inf, 0.0, 0.0], [0.9, 0.0, 0.5], [0.5, 1.0, 0.5], [0.4, 1.0, 1.0]]
    """
    from sklearn.metrics import roc_curve as sk_roc_curve

    g, i = _scores(genuine, impostor)
    truth = np.r_[np.ones(g.size), np.zeros(i.size)]
    # Every distinct score an operating point (scikit-learn's sort: O(n log n) for a
    # cohort's millions of impostor pairs).
    fpr, tpr, thresholds = sk_roc_curve(truth, np.r_[g, i], drop_intermediate=False)
    return pd.DataFrame({"threshold": thresholds, "fpr": fpr, "tpr": tpr})


def _scores(
    genuine: npt.ArrayLike, impostor: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    g = np.asarray(genuine, dtype=float).ravel()
    i = np.asarray(impostor, dtype=float).ravel()
    if g.size == 0 or i.size == 0:
        raise ValueError("need at least one genuine and one impostor score")
    return g, i


def roc_auc(genuine: npt.ArrayLike, impostor: npt.ArrayLike) -> float:
    """P(genuine score > impostor score) + 0.5 P(tie): the area under the ROC curve.

    Example:
        >>> round(roc_auc([0.9, 0.8, 0.4], [0.7, 0.5, 0.3, 0.1]), 12)  # 10 of 12 pairs ordered
        0.833333333333
    """
    from sklearn.metrics import roc_auc_score

    g, i = _scores(genuine, impostor)
    return float(roc_auc_score(np.r_[np.ones(g.size), np.zeros(i.size)], np.r_[g, i]))


def equal_error_rate(genuine: npt.ArrayLike, impostor: npt.ArrayLike) -> float:
    """The rate where false accepts equal false rejects, on the linearly interpolated ROC.

    Example:
        >>> round(equal_error_rate([0.9, 0.8, 0.4], [0.7, 0.5, 0.3, 0.1]), 6)
        0.333333
    """
    roc = roc_curve(genuine, impostor)
    fpr = roc["fpr"].to_numpy()
    fnr = 1.0 - roc["tpr"].to_numpy()
    diff = fnr - fpr  # starts at 1 (all rejected), ends at -1 (all accepted)
    for k in range(1, len(diff)):
        if diff[k] <= 0:
            # Crossing on the segment k-1 -> k: interpolate both rates linearly.
            w = diff[k - 1] / (diff[k - 1] - diff[k]) if diff[k - 1] != diff[k] else 0.0
            return float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))
    return float(fpr[-1])


def tpr_at_fpr(genuine: npt.ArrayLike, impostor: npt.ArrayLike, fpr: float = 0.01) -> float:
    """Largest true-positive rate among operating points whose FPR is at most ``fpr``."""
    roc = roc_curve(genuine, impostor)
    return float(roc.loc[roc["fpr"] <= fpr + 1e-12, "tpr"].max())


def verification(genuine: npt.ArrayLike, impostor: npt.ArrayLike) -> dict[str, float]:
    """``roc_auc``, ``eer`` and ``tpr_at_fpr_1pct`` of genuine vs impostor scores."""
    return {
        "roc_auc": roc_auc(genuine, impostor),
        "eer": equal_error_rate(genuine, impostor),
        "tpr_at_fpr_1pct": tpr_at_fpr(genuine, impostor, 0.01),
    }


def recall_curve(table: pd.DataFrame, max_k: int | None = None) -> pd.DataFrame:
    """Recall@K for K = 1..max_k (columns ``k``, ``recall``) from a :func:`match_table`."""
    ranks = table["partner_rank"].to_numpy()
    max_k = max_k or int(ranks.max(initial=1))
    ks = np.arange(1, max_k + 1)
    return pd.DataFrame({"k": ks, "recall": [float(np.mean(ranks <= k)) for k in ks]})


def summarize(
    similarity: npt.ArrayLike,
    dxa_subjects: Sequence[str],
    mr_subjects: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One-row summary: :data:`SUMMARY_COLUMNS` (recall over queries of both modalities).

    Example:
        >>> s = summarize([[0.9, 0.2], [0.3, 0.8]], ["a", "b"])
        >>> s[["recall_at_1", "mean_rank", "roc_auc", "eer"]].values.tolist()
        [[1.0, 1.0, 1.0, 0.0]]
    """
    table = match_table(similarity, dxa_subjects, mr_subjects)
    genuine, impostor = true_pair_scores(similarity, dxa_subjects, mr_subjects)
    ranks = table["partner_rank"].to_numpy()
    row = {
        "n_subjects": len(genuine),
        "recall_at_1": float(np.mean(ranks <= 1)),
        "recall_at_5": float(np.mean(ranks <= 5)),
        "recall_at_10": float(np.mean(ranks <= 10)),
        "mean_rank": float(np.mean(ranks)),
        **verification(genuine, impostor),
    }
    return pd.DataFrame([row], columns=list(SUMMARY_COLUMNS))


def csls(similarity: npt.ArrayLike, k: int = 10) -> FloatArray:
    """Cross-domain similarity local scaling (Conneau et al. 2018): ``2 s(a, b) - r_a - r_b``,
    ``r_a`` the mean similarity of DXA ``a`` to its ``k`` most similar MR scans (and
    ``r_b`` likewise for MR ``b``).

    A scan that resembles every scan of the other modality (a "hub": typical build,
    typical field of view) no longer wins every query; a cohort-level correction, so it
    needs the whole similarity matrix (``k`` is capped at its size).

    Example:
        >>> s = np.array([[0.9, 0.2, 0.1], [0.8, 0.7, 0.1], [0.85, 0.1, 0.75]])
        >>> [int(np.argmax(row)) for row in s]  # MR 0 is a hub: every DXA's raw best
        [0, 0, 0]
        >>> [int(np.argmax(row)) for row in csls(s, k=2)]
        [0, 1, 2]
    """
    s = np.asarray(similarity, dtype=np.float64)
    k = max(1, min(int(k), s.shape[0], s.shape[1]))
    r_dxa = np.sort(s, axis=1)[:, -k:].mean(axis=1)
    r_mr = np.sort(s, axis=0)[-k:, :].mean(axis=0)
    return 2.0 * s - r_dxa[:, None] - r_mr[None, :]


def calibrate_threshold(genuine: npt.ArrayLike, false_alarm_rate: float = 0.01) -> float:
    """The similarity below which at most ``false_alarm_rate`` of true pairs fall.

    The largest threshold ``t`` among the observed scores with
    ``mean(genuine < t) <= false_alarm_rate`` (so flagging ``score < t`` raises
    false alarms on at most that fraction of the calibration pairs).

    Example:
        >>> calibrate_threshold([0.5, 0.6, 0.7, 0.8], 0.25)  # flags 0.5 only
        0.6
        >>> calibrate_threshold([0.5, 0.6, 0.7, 0.8], 0.01)  # flags nothing
        0.5
    """
    g = np.sort(np.asarray(genuine, dtype=float))
    if g.size == 0:
        raise ValueError("need at least one true-pair score to calibrate")
    allowed = int(np.floor(false_alarm_rate * g.size + 1e-9))
    return float(g[min(allowed, g.size - 1)])


def impostor_threshold(
    similarity: npt.ArrayLike,
    dxa_subjects: Sequence[str] | None = None,
    mr_subjects: Sequence[str] | None = None,
    *,
    alpha: float = SWAP_ALPHA,
) -> float:
    """The within-cohort swap threshold: the ``1 - alpha`` quantile of different-subject scores.

    The cohort's own pairs of different subjects (N(N-1) of them for N subjects, with
    the true pairs on the diagonal) are exactly what a swapped pair scores like, so a
    claimed pair scoring below this threshold is not distinguishable from an unrelated
    pair at level ``alpha``. No second cohort is needed, and a few swapped subjects in
    the cohort barely move it (2 of N(N-1) null scores per swap).

    Args:
        similarity: ``(N, M)`` scores of the claimed pairs' DXA rows and MR columns.
        dxa_subjects: Row subjects (default: row ``k`` is subject ``k``).
        mr_subjects: Column subjects (default: the rows').
        alpha: Level of the test, the share of the null above the threshold.

    Example:
        >>> s = np.full((5, 5), 0.1) + np.eye(5) * 0.8 + np.arange(5) * 0.01
        >>> round(impostor_threshold(s, alpha=0.05), 3)  # the null: 0.10 .. 0.14
        0.14
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    s = np.asarray(similarity, dtype=float)
    dxa = list(dxa_subjects) if dxa_subjects is not None else [str(k) for k in range(len(s))]
    _, impostor = true_pair_scores(s, dxa, mr_subjects)
    if impostor.size == 0:
        raise ValueError("need at least two subjects for a within-cohort null")
    return float(np.quantile(impostor, 1.0 - alpha, method="higher"))


@dataclass(frozen=True)
class SwapResult:
    """Outcome of :func:`swap_experiment` (means over trials).

    Attributes:
        n_subjects: Cohort size.
        n_swaps: Swapped pairs per trial (each swap mislabels two subjects).
        trials: Random trials.
        threshold: Similarity threshold used (``None``: best-match rule only; with
            ``alpha``: the mean of the per-trial within-cohort thresholds).
        alpha: Level of the within-cohort threshold (``None``: a fixed ``threshold``).
        caught: Fraction of mislabelled subjects flagged.
        false_alarms: Fraction of correctly labelled subjects flagged.
        caught_best_match: ``caught`` with the best-match rule alone.
        false_alarms_best_match: ``false_alarms`` with the best-match rule alone.
        caught_threshold: ``caught`` with the threshold rule alone (``nan`` without one).
        false_alarms_threshold: ``false_alarms`` with the threshold rule alone.
    """

    n_subjects: int
    n_swaps: int
    trials: int
    threshold: float | None
    caught: float
    false_alarms: float
    caught_best_match: float
    false_alarms_best_match: float
    caught_threshold: float
    false_alarms_threshold: float
    alpha: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)


def swap_flags(
    similarity: FloatArray, claimed: npt.NDArray[np.int_], threshold: float | None
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Flags per claimed pair ``(a, claimed[a])``: best-match rule, threshold rule.

    Best-match rule: the DXA's best MR is not its claimed MR, or the claimed MR's best
    DXA is not this DXA. Threshold rule: the claimed pair's similarity is below
    ``threshold``.
    """
    n = len(claimed)
    rows = np.arange(n)
    pair_scores = similarity[rows, claimed]
    best_mr = np.argmax(similarity, axis=1)
    best_dxa = np.argmax(similarity, axis=0)
    best_match = (best_mr != claimed) | (best_dxa[claimed] != rows)
    by_threshold = pair_scores < threshold if threshold is not None else np.zeros(n, dtype=bool)
    return best_match, by_threshold


def _swapped(n: int, n_swaps: int, rng: np.random.Generator) -> npt.NDArray[np.int_]:
    """Claimed MR of each DXA after ``n_swaps`` disjoint pairs exchanged their MR scans."""
    chosen = rng.permutation(n)[: 2 * n_swaps]
    claimed = np.arange(n)
    claimed[chosen[0::2]], claimed[chosen[1::2]] = chosen[1::2], chosen[0::2]
    return claimed


def swap_experiment(
    similarity: npt.ArrayLike,
    subjects: Sequence[str],
    n_swaps: int,
    *,
    threshold: float | None = None,
    alpha: float | None = None,
    trials: int = 100,
    seed: int = 0,
) -> SwapResult:
    """Inject ``n_swaps`` subject swaps into a cohort and measure how many are caught.

    In each trial, ``n_swaps`` disjoint subject pairs ``(i, j)`` exchange their MR scans
    (the cohort now claims DXA ``i`` with MR ``j`` and DXA ``j`` with MR ``i``). Each
    claimed pair is flagged by the best-match rule and by the threshold rule (see
    :func:`swap_flags`); ``caught``/``false_alarms`` count a subject flagged by the
    threshold rule when there is one (the best-match rule alone otherwise).

    Args:
        similarity: ``(N, N)`` similarities with true pairs on the diagonal.
        subjects: The N subject ids (rows and columns).
        n_swaps: Swapped pairs per trial (``2 * n_swaps <= N``).
        threshold: A fixed threshold (e.g. :func:`calibrate_threshold` on true pairs of
            a calibration cohort).
        alpha: Instead of ``threshold``: recompute :func:`impostor_threshold` at this
            level on every trial's swapped cohort, as a study would on its own data.
        trials: Random trials to average over.
        seed: Seed of the trial generator.

    Example:
        >>> s = np.eye(4) * 0.5 + 0.4  # true pairs 0.9, impostors 0.4
        >>> r = swap_experiment(s, list("abcd"), 1, threshold=0.6, trials=5)
        >>> r.caught, r.false_alarms
        (1.0, 0.0)
    """
    s, dxa, _ = _check(similarity, subjects, None)
    n = len(dxa)
    if not 1 <= 2 * n_swaps <= n:
        raise ValueError(f"cannot make {n_swaps} disjoint swaps among {n} subjects")
    if threshold is not None and alpha is not None:
        raise ValueError("give threshold or alpha, not both")
    rng = np.random.default_rng(seed)
    totals = np.zeros((2, 2))  # rows: best match, threshold; cols: caught, false alarm
    thresholds = []
    for _ in range(trials):
        claimed = _swapped(n, n_swaps, rng)
        swapped = claimed != np.arange(n)
        t = threshold
        if alpha is not None:
            t = impostor_threshold(s[:, claimed], alpha=alpha)
            thresholds.append(t)
        best, low = swap_flags(s, claimed, t)
        for k, flags in enumerate((best, low)):
            totals[k] += (
                flags[swapped].mean(),
                flags[~swapped].mean() if (~swapped).any() else 0.0,
            )
    means = totals / trials
    has_threshold = threshold is not None or alpha is not None
    decision = means[1] if has_threshold else means[0]
    return SwapResult(
        n_subjects=n,
        n_swaps=n_swaps,
        trials=trials,
        threshold=float(np.mean(thresholds)) if thresholds else threshold,
        caught=float(decision[0]),
        false_alarms=float(decision[1]),
        caught_best_match=float(means[0, 0]),
        false_alarms_best_match=float(means[0, 1]),
        caught_threshold=float(means[1, 0]) if has_threshold else float("nan"),
        false_alarms_threshold=float(means[1, 1]) if has_threshold else float("nan"),
        alpha=alpha,
    )


def swap_curve(
    similarity: npt.ArrayLike,
    subjects: Sequence[str],
    n_swaps: int,
    *,
    alphas: Sequence[float] = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2),
    trials: int = 100,
    seed: int = 0,
) -> pd.DataFrame:
    """Caught against false alarms of the within-cohort rule over ``alphas`` (injected swaps).

    Returns:
        One row per ``alpha``: ``alpha, threshold, caught, false_alarms`` (means over
        ``trials``; the same trials for every ``alpha``).
    """
    rows = []
    for alpha in alphas:
        r = swap_experiment(similarity, subjects, n_swaps, alpha=alpha, trials=trials, seed=seed)
        rows.append(
            {
                "alpha": float(alpha),
                "threshold": r.threshold,
                "caught": r.caught,
                "false_alarms": r.false_alarms,
            }
        )
    return pd.DataFrame(rows, columns=["alpha", "threshold", "caught", "false_alarms"])


def swap_figure_png(curve: pd.DataFrame, *, alpha: float = SWAP_ALPHA, n_swaps: int = 0) -> bytes:
    """Caught against false alarms (:func:`swap_curve`), the chosen ``alpha`` marked; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(100 * curve["false_alarms"], 100 * curve["caught"], marker="o")
    for _, row in curve.iterrows():
        ax.annotate(
            f"{row['alpha']:g}",
            (100 * row["false_alarms"], 100 * row["caught"]),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=7,
        )
    chosen = curve.loc[np.isclose(curve["alpha"], alpha)]
    if len(chosen):
        ax.plot(
            100 * chosen["false_alarms"],
            100 * chosen["caught"],
            "r*",
            markersize=12,
            label=f"alpha = {alpha:g}",
        )
        ax.legend(loc="lower right")
    ax.axvline(1.0, color="0.7", linestyle=":")
    ax.set(
        xlabel="false alarms (% of correct subjects)",
        ylabel="swaps caught (%)",
        title=f"Injected swaps ({n_swaps} per trial)" if n_swaps else "Injected swaps",
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def figure_png(
    curves: dict[str, tuple[pd.DataFrame, pd.DataFrame]], *, title: str = "Subject matching"
) -> bytes:
    """ROC and recall@K curves side by side, as PNG bytes.

    Args:
        curves: Label -> ``(roc_curve(...), recall_curve(...))`` (one line per label).
        title: Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_roc, ax_rec) = plt.subplots(1, 2, figsize=(9, 4))
    for label, (roc, recall) in curves.items():
        ax_roc.plot(roc["fpr"], roc["tpr"], label=label)
        ax_rec.plot(recall["k"], recall["recall"], marker=".", label=label)
    ax_roc.plot([0, 1], [0, 1], color="0.7", linestyle=":")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax_rec.set(xlabel="K", ylabel="recall@K", title="Retrieval", ylim=(0, 1.02))
    ax_roc.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
