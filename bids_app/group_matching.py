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
  that is another subject;
- ``group/matching_summary.csv``: one row, recall@1/5/10, mean rank, ROC AUC, equal
  error rate and TPR at 1% FPR of true pairs against impostor pairs
  (:data:`~mmreg.methods.contrastive.matching.SUMMARY_COLUMNS`);
- a report section with the ROC and recall@K curves and the suspected swaps.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pandas as pd

from mmreg.atomic import atomic_path

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
    "write_matching",
]

LOGGER = logging.getLogger("mmreg.group")

#: The model family whose weights score the pairs.
FAMILY = "contrastive"
#: Neighbours of the cross-domain similarity local scaling of the matching scores.
CSLS_K = 10

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


# --- which scans --------------------------------------------------------------------------------


def _spatial_ndim(path: Path) -> int | None:
    """2 or 3 from the NIfTI header (trailing singleton axes dropped); ``None`` if unreadable."""
    try:
        shape = list(nib.load(str(path)).header.get_data_shape())
    except Exception:  # any unreadable header: the caller tries the next row
        return None
    while len(shape) > 2 and shape[-1] == 1:
        shape.pop()
    return len(shape) if len(shape) in (2, 3) else None


def _source(row: pd.Series, role: str, bids_dir: Path | None) -> Path | None:
    from mmreg.bids_app.report import find_source_image

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


def _load_scan(
    scan: ScanPair, dxa_channels: int, mr_channels: int
) -> tuple[ChannelImage, ChannelImage]:
    """The scan's prepared DXA and MR-slice channel images, as the participant level loads
    them (:func:`mmreg.pipeline.load_pair`: the MR's mid-coronal slice, channel siblings).

    Raises:
        InputError: For an unreadable image, or channels the encoder does not read.
    """
    from mmreg.errors import InputError
    from mmreg.methods.contrastive.data import as_channels
    from mmreg.methods.contrastive.features import prepare
    from mmreg.pipeline import load_pair

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
    return prepare(dxa), prepare(mr)


# --- matching -----------------------------------------------------------------------------------


def summarise_matching(
    similarity: np.ndarray, subjects: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per-query table, one-row summary, ROC and recall@K of a similarity matrix.

    Args:
        similarity: ``(N, N)`` similarities of DXA ``a`` (rows) and MR ``b`` (columns),
            subject ``k`` at row and column ``k``; ``N >= 2``.
        subjects: The N keys.

    Returns:
        ``(table, summary, roc, recall)``; recall@K for K up to ``min(N, 10)``.
    """
    from mmreg.methods.contrastive import matching as mt

    table = mt.match_table(similarity, subjects)
    summary = mt.summarize(similarity, subjects)
    genuine, impostor = mt.true_pair_scores(similarity, subjects)
    roc = mt.roc_curve(genuine, impostor)
    recall = mt.recall_curve(table, min(len(subjects), 10))
    return table, summary, roc, recall


def run_matching(
    df: pd.DataFrame,
    *,
    bids_dir: Path | None = None,
    model: str | Path | None = None,
    device: str = "cpu",
) -> MatchingResult | None:
    """Match the run's 2D and 3D scans across subjects with the contrastive encoder.

    Args:
        df: Evaluation rows (:func:`mmreg.bids_app.group.aggregate`).
        bids_dir: Input dataset, for rows without image paths.
        model: ``contrastive`` weights; ``None``: the shipped ones.
        device: ``auto``, ``cpu`` or ``cuda``.

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
    for key, reason in found.missing.items():
        LOGGER.warning("subject matching: sub-%s left out: %s", key, reason)
    for scan in scans:
        try:
            with warnings.catch_warnings():
                # A slice without a spine is still a slice; the participant level said so.
                warnings.simplefilter("ignore")
                d, m = _load_scan(scan, encoder.config.dxa_channels, encoder.config.mr_channels)
        except Exception as exc:  # one subject's bad data must not stop the group level
            reason = " ".join(str(exc).split()) or type(exc).__name__
            LOGGER.warning("subject matching: sub-%s left out: %s", scan.key, reason)
            left_out[scan.key] = reason
            continue
        keys.append(scan.key)
        dxa.append(d)
        mr.append(m)
    if len(keys) < 2:
        LOGGER.warning(
            "subject matching skipped: needs at least 2 subjects, %d readable", len(keys)
        )
        return None
    raw = similarity_matrix(encoder, dxa, mr, device=device)
    # Scores are hubness-corrected over the cohort (a scan resembling everyone stops
    # winning every query): recall@1 0.87 -> 0.92 on 60 phantom subjects.
    similarity = csls(raw, k=CSLS_K)
    table, summary, roc, recall = summarise_matching(similarity, keys)
    n_swaps = int(table["swap_suspected"].sum())
    LOGGER.info(
        "subject matching: %d subjects, recall@1 %.3f, ROC AUC %.3f, %d suspected swap(s) "
        "(%.1f s)",
        len(keys),
        float(summary["recall_at_1"].iloc[0]),
        float(summary["roc_auc"].iloc[0]),
        n_swaps,
        time.perf_counter() - start,
    )
    return MatchingResult(
        dxa_label, mr_label, keys, similarity, table, summary, roc, recall, left_out, str(path)
    )


def write_matching(result: MatchingResult, group_dir: Path) -> dict[str, Path]:
    """Write ``matching.csv`` and ``matching_summary.csv`` atomically; return their paths."""
    paths = {
        "matching": Path(group_dir) / "matching.csv",
        "matching_summary": Path(group_dir) / "matching_summary.csv",
    }
    for frame, path in (
        (result.table, paths["matching"]),
        (result.summary, paths["matching_summary"]),
    ):
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
    from mmreg.bids_app.report import data_uri
    from mmreg.methods.contrastive.matching import figure_png

    esc = html.escape
    n = len(result.subjects)
    parts = [
        f'<p class="meta">Every subject\'s {esc(result.dxa_label)} scored against every '
        f"subject's {esc(result.mr_label)} (its mid-coronal slice) by the contrastive encoder "
        f"(<code>{esc(Path(result.model).name)}</code>), {n} subjects; scores are the "
        f"dense similarities after cross-domain similarity local scaling over the cohort "
        f"({CSLS_K} neighbours), which stops a scan that resembles everyone from winning "
        "every query. A query's rank is the "
        "place of its own subject's scan of the other modality among all subjects' scans "
        "(1: best); ROC: true pairs against all impostor pairs. A swap is suspected when "
        "a scan's best match is another subject. Per query: "
        "<code>group/matching.csv</code>.</p>",
        result.summary.rename(columns=_SUMMARY_HEADERS).to_html(
            index=False, escape=True, border=0, float_format=lambda v: f"{v:.3f}"
        ),
    ]
    try:
        png = figure_png({"contrastive": (result.roc, result.recall)})
        caption = "ROC of true against impostor pairs, and recall@K"
        parts.append(
            f'<div class="figs"><figure><img src="{data_uri(png)}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure></div>"
        )
    except Exception as exc:  # a plot is never worth losing the report
        LOGGER.warning("matching figure failed: %s", exc)
    swaps = result.table[result.table["swap_suspected"].astype(bool)]
    parts.append(f"<h3>Suspected swaps ({len(swaps)})</h3>")
    if swaps.empty:
        parts.append("<p>Every scan's best match is its own subject.</p>")
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
