"""Group level: cross-modal subject matching and swap detection (whole-body DXA <-> MR).

Cohort studies need to catch mislabelled scans: a DXA filed under the wrong subject
registers to somebody else's MR without any error. For runs whose pairs join a 2D
image (a whole-body DXA) with a 3D one (a Dixon MR, registered through its
mid-coronal slice, ``--coronal-slice``), the contrastive dual encoder
(:mod:`mmreg.methods.contrastive`) scores every subject's DXA against every subject's
MR slice (Windsor et al. 2021, section 3.2), and
:mod:`mmreg.methods.contrastive.matching` turns the matrix into:

- ``group/matching.csv``: one row per query scan (each DXA against all MR slices, then
  each MR slice against all DXAs; columns
  :data:`~mmreg.methods.contrastive.matching.MATCH_COLUMNS`): the rank of the true
  partner and its similarity, the best-matching subject, and ``swap_suspected`` when
  the claimed pair is not more similar than unrelated subjects' scans: its score is
  below the top ``alpha`` (:data:`~mmreg.methods.contrastive.matching.SWAP_ALPHA`) of
  the cohort's own N(N-1) different-subject scores (calibrated within the cohort, no
  second cohort needed; with fewer than ``1 / alpha`` such scores, when its best match
  is another subject);
- ``group/swap_detection.csv``: caught against false alarms of that rule over a range
  of ``alpha``, from swaps injected into the cohort (assuming its labels are right);
- ``group/matching_summary.csv``: one row, recall@1/5/10, mean rank, ROC AUC, equal
  error rate and TPR at 1% FPR of true pairs against impostor pairs
  (:data:`~mmreg.methods.contrastive.matching.SUMMARY_COLUMNS`);
- a report section with the ROC and recall@K curves, the swap-detection curve and the
  suspected swaps.

The scans are exactly the participant level's pairs: the ``fixed_image`` and
``moving_image`` paths of the evaluation rows (found in ``BIDS_DIR`` by their labels
when a row lacks them), one per subject and session. The MR slice is made as the
participant level loads it (:func:`mmreg.pipeline.load_pair`), with the channel
siblings the encoders read (``rec-bone`` + ``rec-tissue``, ``rec-fat`` + ``rec-water``,
own channel first). Weights: ``--model contrastive=PATH``, else the shipped
``contrastive.pt``; without either, matching is skipped with one log line. Matching
never fails the group level: a scan that cannot be read is left out with a warning.
"""

from __future__ import annotations

import html
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmreg.atomic import atomic_path
from mmreg.methods.contrastive.matching import CSLS_K, MATCH_ANGLES

if TYPE_CHECKING:
    from mmreg.methods.contrastive.data import ChannelImage

__all__ = [
    "MatchingResult",
    "ScanPair",
    "ScanSet",
    "find_scan_pairs",
    "matching_section",
    "run_matching",
    "summarise_matching",
    "swap_detection_curve",
    "write_matching",
]

LOGGER = logging.getLogger("mmreg.group")

#: The model family whose weights score the pairs.
FAMILY = "contrastive"

#: Columns the group level adds to the matching summary (the swap rule and its outcome).
SWAP_SUMMARY_COLUMNS = ("swap_alpha", "swap_threshold", "n_swaps_suspected")

#: Number format of the CSVs (as the other group tables).
FLOAT_FORMAT = "%.6g"


@dataclass(frozen=True)
class ScanPair:
    """One subject's (and session's) 2D and 3D scan of the matched pair type.

    Attributes:
        key: The subject label, with ``_ses-<label>`` when the row has a session.
        planar: The 2D image (the DXA).
        volume: The 3D image (the MR; its mid-coronal slice is compared).
        planar_is_fixed: Whether the 2D image is the pair's fixed image.
    """

    key: str
    planar: Path
    volume: Path
    planar_is_fixed: bool = True


@dataclass(frozen=True)
class MatchingResult:
    """Everything the group level writes about matching.

    Attributes:
        dxa_label: Modality label of the 2D scans (``DXA``), the rows.
        mr_label: Modality label of the 3D scans (``T1w``), the columns.
        subjects: Keys of the scans in the matrix (rows: DXA, columns: MR).
        similarity: ``(N, N)`` similarities, true pairs on the diagonal.
        table: One row per query (``matching.csv``).
        summary: One row (``matching_summary.csv``).
        roc: ROC operating points (``threshold, fpr, tpr``).
        recall: Recall@K (``k, recall``).
        left_out: Key -> why that subject is not in the matrix.
        model: The weights file.
        swap_threshold: The within-cohort threshold (``None``: too few subjects; the
            best-match rule decided).
        swap_curve: Caught against false alarms over ``alpha`` (injected swaps).
    """

    dxa_label: str
    mr_label: str
    subjects: list[str]
    similarity: np.ndarray
    table: pd.DataFrame
    summary: pd.DataFrame
    roc: pd.DataFrame
    recall: pd.DataFrame
    left_out: dict[str, str] = field(default_factory=dict)
    model: str = ""
    swap_threshold: float | None = None
    swap_curve: pd.DataFrame | None = None


# --- which scans --------------------------------------------------------------------------------


def _spatial_ndim(path: Path) -> int | None:
    """2 or 3 from the NIfTI header (trailing singleton axes dropped); ``None`` if unreadable."""
    from mmreg.imaging.image import load_spatial

    try:
        shape = list(load_spatial(path).shape)  # from the header: no voxel is read
    except Exception:  # any unreadable header: the caller tries the next row
        return None
    while len(shape) > 2 and shape[-1] == 1:
        shape.pop()
    return len(shape) if len(shape) in (2, 3) else None


def _source(row: pd.Series, role: str, bids_dir: Path | None) -> Path | None:
    from mmreg.reports.html_report import find_source_image

    return find_source_image(row, role, bids_dir)


@dataclass(frozen=True)
class ScanSet:
    """The pair type that is matched, and its scans.

    Attributes:
        fixed: Fixed modality label of the pairs (``DXA``).
        moving: Moving modality label (``T1w``).
        scans: One per subject and session, sorted by key.
        missing: Key -> reason, for subjects whose images were not found.
    """

    fixed: str
    moving: str
    scans: list[ScanPair]
    missing: dict[str, str] = field(default_factory=dict)


def find_scan_pairs(df: pd.DataFrame, bids_dir: Path | None = None) -> ScanSet | None:
    """The pair type to match (a 2D image with a 3D one) and its scans, one per subject.

    Pair types are the rows' ``(fixed, moving)`` labels. A type qualifies when the first
    row whose two images can be read has one 2D and one 3D image; with several, the one
    with the most subjects is matched (the others are named in a log line).

    Returns:
        The scans, or ``None`` when no pair type joins a 2D with a 3D image.
    """
    needed = {"subject", "fixed", "moving"}
    if df.empty or not needed <= set(df.columns):
        return None
    session = df["session"].astype(str) if "session" in df else pd.Series("", index=df.index)
    frame = df.assign(_session=session.where(session != "nan", ""))
    found: list[ScanSet] = []
    for (fixed, moving), rows in frame.groupby(["fixed", "moving"], sort=True):
        rows = rows.drop_duplicates(["subject", "_session"])
        located = []
        orientation: bool | None = None
        # Lazily: a brain cohort's 3D/3D type is ruled out by its first readable row.
        for _, row in rows.iterrows():
            key = str(row["subject"]) + (f"_ses-{row['_session']}" if row["_session"] else "")
            f_path, m_path = _source(row, "fixed", bids_dir), _source(row, "moving", bids_dir)
            located.append((key, f_path, m_path))
            if orientation is None and f_path and m_path:
                dims = (_spatial_ndim(f_path), _spatial_ndim(m_path))
                if None in dims:
                    continue
                if dims not in ((2, 3), (3, 2)):
                    break
                orientation = dims == (2, 3)
        if orientation is None:
            continue
        scans, missing = [], {}
        for key, f_path, m_path in located:
            if f_path is None or m_path is None:
                missing[key] = f"{fixed if f_path is None else moving} image not found"
                continue
            planar, volume = (f_path, m_path) if orientation else (m_path, f_path)
            scans.append(ScanPair(key, planar, volume, orientation))
        found.append(ScanSet(str(fixed), str(moving), sorted(scans, key=lambda s: s.key), missing))
    if not found:
        return None
    found.sort(key=lambda f: -len(f.scans))  # stable: ties keep label order
    if len(found) > 1:
        LOGGER.info(
            "subject matching: %s -> %s matched; not matched: %s",
            found[0].moving,
            found[0].fixed,
            ", ".join(f"{f.moving} -> {f.fixed}" for f in found[1:]),
        )
    return found[0]


def derived_slices(scan: ScanPair, output_dir: Path | None) -> list[Path] | None:
    """The participant level's mid-coronal slice files of the scan's 3D image (one per
    Dixon channel, own channel first), or ``None`` when any is missing."""
    from mmreg.bids_app.naming import midcoronal_name, subject_dir
    from mmreg.imaging.planar import dixon_channels

    if output_dir is None:
        return None
    subject, _, session = scan.key.partition("_ses-")
    folder = Path(output_dir) / subject_dir(subject, session or None)
    sources, _ = dixon_channels(scan.volume)
    files = [folder / midcoronal_name(source.name) for source in sources]
    return files if all(f.is_file() for f in files) else None


def _load_scan(
    scan: ScanPair, dxa_channels: int, mr_channels: int, output_dir: Path | None = None
) -> tuple[ChannelImage, ChannelImage, bool]:
    """The scan's prepared DXA and MR-slice channel images, as the participant level loads
    them (:func:`mmreg.pipeline.load_pair`: the MR's mid-coronal slice, channel siblings).

    The slice the participant level wrote (``*_desc-midcoronal_*``, see
    :func:`derived_slices`) is read rather than synthesised again; the last value says
    whether it was.

    Raises:
        InputError: For an unreadable image, or channels the encoder does not read.
    """
    from mmreg.errors import InputError
    from mmreg.imaging.image import load_image
    from mmreg.imaging.planar import load_planar
    from mmreg.methods.contrastive.data import as_channels
    from mmreg.methods.contrastive.features import prepare
    from mmreg.pipeline import load_pair

    files = derived_slices(scan, output_dir)
    if files is not None:
        dxa = as_channels(load_planar(scan.planar))
        mr = as_channels([load_image(f) for f in files])
    else:
        paths = (scan.planar, scan.volume) if scan.planar_is_fixed else (scan.volume, scan.planar)
        pair = load_pair(str(paths[0]), str(paths[1]), coronal_slice=True)
        fixed, moving = as_channels(pair.fixed), as_channels(pair.moving)
        dxa, mr = (fixed, moving) if scan.planar_is_fixed else (moving, fixed)
    for name, image, expected in (("DXA", dxa, dxa_channels), ("MR", mr, mr_channels)):
        if image.channels != expected:
            raise InputError(
                f"the contrastive {name} encoder reads {expected} channel(s); the scan has "
                f"{image.channels} (channel siblings: rec-bone/rec-tissue, rec-fat/rec-water)"
            )
    return prepare(dxa), prepare(mr), files is not None


# --- matching -----------------------------------------------------------------------------------


def summarise_matching(
    similarity: np.ndarray, subjects: Sequence[str], *, alpha: float | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, float | None]:
    """Per-query table, one-row summary, ROC, recall@K and swap threshold of a matrix.

    Args:
        similarity: ``(N, N)`` similarities of DXA ``a`` (rows) and MR ``b`` (columns),
            subject ``k`` at row and column ``k``; ``N >= 2``.
        subjects: The N keys.
        alpha: Level of the within-cohort swap test (default
            :data:`~mmreg.methods.contrastive.matching.SWAP_ALPHA`).

    Returns:
        ``(table, summary, roc, recall, threshold)``; recall@K for K up to
        ``min(N, 10)``; ``threshold`` is ``None`` when the cohort has fewer than
        ``1 / alpha`` different-subject pairs (then the best-match rule flags swaps).
        The summary gains ``swap_alpha``, ``swap_threshold`` and ``n_swaps_suspected``.
    """
    from mmreg.methods.contrastive import matching as mt

    alpha = mt.SWAP_ALPHA if alpha is None else alpha
    n = len(subjects)
    threshold = None
    if n * (n - 1) * alpha >= 1.0:
        threshold = mt.impostor_threshold(similarity, subjects, alpha=alpha)
    table = mt.match_table(similarity, subjects, threshold=threshold)
    summary = mt.summarize(similarity, subjects)
    summary[SWAP_SUMMARY_COLUMNS[0]] = alpha if threshold is not None else np.nan
    summary[SWAP_SUMMARY_COLUMNS[1]] = threshold if threshold is not None else np.nan
    # Subjects with either scan flagged.
    flagged = table.loc[table["swap_suspected"].astype(bool), "query_subject"]
    summary[SWAP_SUMMARY_COLUMNS[2]] = int(flagged.nunique())
    genuine, impostor = mt.true_pair_scores(similarity, subjects)
    roc = mt.roc_curve(genuine, impostor)
    recall = mt.recall_curve(table, min(len(subjects), 10))
    return table, summary, roc, recall, threshold


def swap_detection_curve(similarity: np.ndarray, subjects: Sequence[str]) -> pd.DataFrame:
    """Caught against false alarms of the within-cohort rule over ``alpha``, from swaps
    injected into this cohort (1 swapped pair per 12 subjects, at most 5; 100 trials)."""
    from mmreg.methods.contrastive.matching import swap_curve

    n_inject = max(1, min(len(subjects) // 12, 5))
    curve = swap_curve(similarity, subjects, n_inject, trials=100, seed=0)
    curve.insert(0, "swaps_per_trial", n_inject)
    return curve


def run_matching(
    df: pd.DataFrame,
    *,
    bids_dir: Path | None = None,
    model: str | Path | None = None,
    device: str = "cpu",
    output_dir: Path | None = None,
) -> MatchingResult | None:
    """Match the run's 2D and 3D scans across subjects with the contrastive encoder.

    Args:
        df: Evaluation rows (:func:`mmreg.reports.group.aggregate`).
        bids_dir: Input dataset, for rows without image paths.
        model: ``contrastive`` weights; ``None``: the shipped ones.
        device: ``auto``, ``cpu`` or ``cuda``.
        output_dir: The derivatives dataset, whose mid-coronal slices are read instead of
            synthesised again.

    Returns:
        The result, or ``None`` (with a log line saying why) when there is nothing to
        match, no weights, or fewer than two subjects left.
    """
    from mmreg.models import default_model_path

    found = find_scan_pairs(df, bids_dir)
    if found is None:
        LOGGER.debug("subject matching: no pairs of a 2D and a 3D image")
        return None
    scans = found.scans
    planar_is_fixed = scans[0].planar_is_fixed if scans else True
    dxa_label, mr_label = (
        (found.fixed, found.moving) if planar_is_fixed else (found.moving, found.fixed)
    )
    path = Path(model) if model else default_model_path(FAMILY)
    if not path.is_file():
        LOGGER.info(
            "subject matching skipped: no %s weights (%s); give --model %s=PATH",
            FAMILY,
            path,
            FAMILY,
        )
        return None
    start = time.perf_counter()
    from mmreg.methods.contrastive.features import load_model, similarity_matrix
    from mmreg.methods.contrastive.matching import csls
    from mmreg.runtime import resolve_device

    try:
        device = resolve_device(device)
        encoder, _ = load_model(path, family=FAMILY, device=device)
    except Exception as exc:  # InputError, UsageError: matching is an extra, never a failure
        LOGGER.warning("subject matching skipped: %s", " ".join(str(exc).split()))
        return None
    keys, dxa, mr, left_out = [], [], [], dict(found.missing)
    reused = 0
    for key, reason in found.missing.items():
        LOGGER.warning("subject matching: sub-%s left out: %s", key, reason)
    for scan in scans:
        try:
            with warnings.catch_warnings():
                # A slice without a spine is still a slice; the participant level said so.
                warnings.simplefilter("ignore")
                d, m, derived = _load_scan(
                    scan, encoder.config.dxa_channels, encoder.config.mr_channels, output_dir
                )
        except Exception as exc:  # one subject's bad data must not stop the group level
            reason = " ".join(str(exc).split()) or type(exc).__name__
            LOGGER.warning("subject matching: sub-%s left out: %s", scan.key, reason)
            left_out[scan.key] = reason
            continue
        keys.append(scan.key)
        dxa.append(d)
        mr.append(m)
        reused += derived
    if len(keys) < 2:
        LOGGER.warning(
            "subject matching skipped: needs at least 2 subjects, %d readable", len(keys)
        )
        return None
    raw = similarity_matrix(encoder, dxa, mr, device=device, angles=MATCH_ANGLES)
    # Scores are hubness-corrected over the cohort (a scan resembling everyone stops
    # winning every query): recall@1 0.87 -> 0.92 on 60 phantom subjects.
    similarity = csls(raw, k=CSLS_K)
    table, summary, roc, recall, threshold = summarise_matching(similarity, keys)
    n_swaps = int(summary["n_swaps_suspected"].iloc[0])
    curve = swap_detection_curve(similarity, keys) if threshold is not None else None
    LOGGER.info(
        "subject matching: %d subjects (%d slices read from the participant level), "
        "recall@1 %.3f, ROC AUC %.3f, %d suspected swap(s) (%.1f s)",
        len(keys),
        reused,
        float(summary["recall_at_1"].iloc[0]),
        float(summary["roc_auc"].iloc[0]),
        n_swaps,
        time.perf_counter() - start,
    )
    return MatchingResult(
        dxa_label,
        mr_label,
        keys,
        similarity,
        table,
        summary,
        roc,
        recall,
        left_out,
        str(path),
        swap_threshold=threshold,
        swap_curve=curve,
    )


def write_matching(result: MatchingResult, group_dir: Path) -> dict[str, Path]:
    """Write ``matching.csv``, ``matching_summary.csv`` and ``swap_detection.csv`` (when
    there is a curve) atomically; return their paths."""
    paths = {
        "matching": Path(group_dir) / "matching.csv",
        "matching_summary": Path(group_dir) / "matching_summary.csv",
    }
    frames = [(result.table, paths["matching"]), (result.summary, paths["matching_summary"])]
    if result.swap_curve is not None:
        paths["swap_detection"] = Path(group_dir) / "swap_detection.csv"
        frames.append((result.swap_curve, paths["swap_detection"]))
    for frame, path in frames:
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, float_format=FLOAT_FORMAT)
    return paths


# --- report -------------------------------------------------------------------------------------

_SUMMARY_HEADERS = {
    "n_subjects": "subjects",
    "recall_at_1": "recall@1",
    "recall_at_5": "recall@5",
    "recall_at_10": "recall@10",
    "mean_rank": "mean rank",
    "roc_auc": "ROC AUC",
    "eer": "EER",
    "tpr_at_fpr_1pct": "TPR at 1% FPR",
    "swap_alpha": "swap test level",
    "swap_threshold": "swap threshold",
    "n_swaps_suspected": "suspected swaps",
}

_SWAP_HEADERS = {
    "query_subject": "subject",
    "query_modality": "query",
    "partner_rank": "rank of own scan",
    "partner_similarity": "own similarity",
    "best_subject": "best match",
    "best_similarity": "best similarity",
}


def matching_section(result: MatchingResult) -> str:
    """The report section: summary table, ROC and recall@K figure, suspected swaps."""
    from mmreg.methods.contrastive.matching import figure_png

    esc = html.escape
    n = len(result.subjects)
    parts = [
        f'<p class="meta">Every subject\'s {esc(result.dxa_label)} scored against every '
        f"subject's {esc(result.mr_label)} (its mid-coronal slice) by the contrastive encoder "
        f"(<code>{esc(Path(result.model).name)}</code>), {n} subjects; scores are the "
        f"dense similarities (best over MR rotations of {_angles_text()} degrees) after "
        "cross-domain similarity local scaling over the cohort "
        f"({CSLS_K} neighbours), which stops a scan that resembles everyone from winning "
        "every query. A query's rank is the "
        "place of its own subject's scan of the other modality among all subjects' scans "
        "(1: best); ROC: true pairs against all impostor pairs. "
        + (
            "A swap is suspected when a subject's own pair scores below the top "
            f"{100 * float(result.summary['swap_alpha'].iloc[0]):g} % of this cohort's "
            f"{n * (n - 1)} pairs of different subjects (threshold "
            f"{result.swap_threshold:.4f}): such a pair is no more alike than unrelated "
            "subjects' scans. "
            if result.swap_threshold is not None
            else "Too few subjects for a within-cohort threshold: a swap is suspected when "
            "a scan's best match is another subject. "
        )
        + "Per query: <code>group/matching.csv</code>.</p>",
        result.summary.rename(columns=_SUMMARY_HEADERS).to_html(
            index=False, escape=True, border=0, float_format=lambda v: f"{v:.3f}"
        ),
    ]
    parts.append(
        _figure(
            lambda: figure_png({"contrastive": (result.roc, result.recall)}),
            "ROC of true against impostor pairs, and recall@K",
        )
    )
    if result.swap_curve is not None:
        parts.append(_swap_curve_html(result))
    swaps = result.table[result.table["swap_suspected"].astype(bool)]
    parts.append(f"<h3>Suspected swaps ({len(swaps)})</h3>")
    if swaps.empty:
        parts.append("<p>No subject's pair looks like a swap.</p>")
    else:
        shown = swaps[list(_SWAP_HEADERS)].copy()
        shown["query_modality"] = np.where(
            shown["query_modality"] == "dxa", result.dxa_label, result.mr_label
        )
        parts.append(
            shown.rename(columns=_SWAP_HEADERS).to_html(
                index=False, escape=True, border=0, float_format=lambda v: f"{v:.3f}"
            )
        )
    if result.left_out:
        items = "".join(
            f"<li>sub-{esc(k)}: {esc(v)}</li>" for k, v in sorted(result.left_out.items())
        )
        parts.append(f"<p>Left out of the matrix:</p><ul>{items}</ul>")
    return "\n".join(parts)


def _angles_text() -> str:
    return ", ".join(f"{a:g}" for a in MATCH_ANGLES)


def _swap_curve_html(result: MatchingResult) -> str:
    """Caught against false alarms from swaps injected into this cohort (text + figure)."""
    from mmreg.methods.contrastive.matching import swap_figure_png

    curve = result.swap_curve
    assert curve is not None
    alpha = float(result.summary["swap_alpha"].iloc[0])
    k = int(curve["swaps_per_trial"].iloc[0])
    parts = [
        f'<p class="meta">How well this rule would catch swaps here: {k} pair(s) of subjects '
        "exchange their scans at random (100 trials) and the threshold is recomputed on the "
        "swapped cohort; caught: swapped subjects flagged; false alarms: correctly "
        "labelled subjects flagged (assumes the cohort's own labels are right). "
        "<code>group/swap_detection.csv</code>.</p>"
    ]
    parts.append(
        _figure(
            lambda: swap_figure_png(curve, alpha=alpha, n_swaps=k),
            "Injected swaps: caught against false alarms over the test level alpha",
        )
    )
    return "\n".join(parts)


def _figure(make_png: Callable[[], bytes], caption: str) -> str:
    """A report figure; empty (with a log line) when drawing fails: a plot is never worth
    losing the report."""
    from mmreg.reports.html_report import data_uri

    try:
        png = make_png()
    except Exception as exc:
        LOGGER.warning("figure %r failed: %s", caption, exc)
        return ""
    esc = html.escape
    return (
        f'<div class="figs"><figure><img src="{data_uri(png)}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure></div>"
    )
