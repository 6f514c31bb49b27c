"""Group level: gather every participant's evaluation rows, summarise, report.

Reads ``sub-*/sub-*_evaluation.csv`` under the derivatives folder and writes
``group/evaluation.csv`` (all rows), ``group/summary.csv`` (one row per
fixed/moving pair and method) and ``group/report.html``, each atomically. Where the
rows carry per-landmark errors, also ``group/table1.csv`` (keypoint transfer error
per landmark group, :mod:`~mmreg.reports.table1`); for 2D/3D pairs (whole-body DXA
and MR) with contrastive weights at hand, ``group/matching.csv`` and
``group/matching_summary.csv`` (subject matching and swap detection,
:mod:`~mmreg.reports.matching`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mmreg.atomic import atomic_path
from mmreg.bids_app import naming
from mmreg.bids_app.columns import write_data_dictionary
from mmreg.bids_app.derivatives import (
    CONTRACT_COLUMNS,
    PATH_COLUMNS,
    ROW_COLUMNS,
    order_columns,
)
from mmreg.bids_app.query import is_bids_label
from mmreg.errors import InputError
from mmreg.reports.table1 import keypoint_errors, table1, table1_section

LOGGER = logging.getLogger("mmreg.group")

#: Row order of ``group/evaluation.csv``.
SORT_KEYS = ("subject", "session", "fixed", "moving", "method")

#: Columns read as text, so that labels such as ``01`` keep their leading zeros.
TEXT_COLUMNS = (*ROW_COLUMNS, "warnings", *PATH_COLUMNS)

#: Grouping of ``group/summary.csv``.
SUMMARY_KEYS = ("fixed", "moving", "method")

#: Number format of the CSVs: stable across platforms and pandas versions.
FLOAT_FORMAT = "%.6g"

#: Subjects that get per-subject figures in the report, by default.
DEFAULT_MAX_SUBJECTS = 20

#: Columns without which a ``sub-*_evaluation.csv`` is not one of ours.
REQUIRED_COLUMNS = ("subject", "method", "status")

#: Contract columns that hold numbers; a stray word in them never makes them text.
NUMERIC_COLUMNS = tuple(c for c in CONTRACT_COLUMNS if c not in TEXT_COLUMNS)

#: Names listed in one warning line before it says "...".
_SHOWN = 10


class NoResultsError(InputError):
    """The group level found no participant results to aggregate.

    Exit code 66 (an input is missing): the group level's input is the participant
    level's output, as BIDS_DIR is the participant level's input.
    """

    exit_code = 66


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")


def find_subject_csvs(output_dir: Path) -> list[Path]:
    """Per-participant evaluation CSVs under ``output_dir``, sorted by path."""
    return sorted(p for p in Path(output_dir).glob(naming.EVALUATION_CSV_GLOB) if p.is_file())


def _complete_rows(text: str) -> tuple[str, int]:
    """``text`` without rows that a cut file left incomplete, and how many were dropped.

    A row is incomplete when its number of fields differs from the header's (pandas
    would fill the missing ones with NaN, or give up on the whole file for extra ones),
    or when it is the last row and the file does not end with a newline: every CSV mmreg
    writes does, so the file was cut inside that row (perhaps inside a number: "0.85"
    cut to "0.8" still parses).
    """
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    if not rows:
        return text, 0
    header, body = rows[0], rows[1:]
    keep = [row for row in body if len(row) == len(header)]
    if body and keep and keep[-1] is body[-1] and not text.endswith(("\n", "\r")):
        keep.pop()
    dropped = len(body) - len(keep)
    if not dropped:
        return text, 0
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows([header, *keep])
    return out.getvalue(), dropped


def _read_csv(path: Path) -> pd.DataFrame | None:
    """One participant's rows, or ``None`` (with a one-line warning) for an unusable file.

    Unreadable and foreign files (without the ``subject``, ``method`` and ``status``
    columns) are skipped; rows that a truncation left incomplete are dropped.
    """
    name = "/".join(path.parts[-2:])
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet may add a BOM
        text, dropped = _complete_rows(text)
        header = pd.read_csv(io.StringIO(text), nrows=0).columns
        frame = pd.read_csv(io.StringIO(text), dtype={c: str for c in TEXT_COLUMNS if c in header})
    except (OSError, ValueError, csv.Error, pd.errors.ParserError) as exc:
        # pandas' EmptyDataError is a ValueError: a 0-byte file from a killed run.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        LOGGER.warning("skipping unreadable %s: %s", name, reason)
        return None
    lacking = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if lacking:
        LOGGER.warning(
            "skipping %s: not an mmreg evaluation table (lacks column(s) %s)",
            name,
            ", ".join(lacking),
        )
        return None
    if dropped:
        LOGGER.warning(
            "%s: dropped %d truncated row(s) (fewer fields than the header, or cut mid-row)",
            name,
            dropped,
        )
    return frame


def _numeric(df: pd.DataFrame, col: str) -> pd.Series | None:
    """``df[col]`` as numbers when it is a numeric column, else ``None``.

    A contract metric column, or one whose non-empty values are mostly numbers, is
    numeric; its other values become NaN with a warning, so that one stray word (a
    hand edit, a foreign row) does not turn the column into text and drop it from the
    summary.
    """
    values = df[col]
    numeric = pd.to_numeric(values, errors="coerce")
    text = values.astype(str).str.strip()
    bad = values.notna() & numeric.isna() & (text != "")
    if not bad.any():
        return numeric
    if col not in NUMERIC_COLUMNS and numeric.notna().sum() <= bad.sum():
        return None
    subjects = sorted({f"sub-{s}" for s in df.loc[bad, "subject"]}) if "subject" in df else []
    LOGGER.warning(
        "column %s: %d value(s) that are not numbers ignored (e.g. %r in %s)",
        col,
        int(bad.sum()),
        str(values[bad].iloc[0])[:40],
        _shown(subjects),
    )
    return numeric


def aggregate(output_dir: Path, subjects: Sequence[str] | None = None) -> pd.DataFrame:
    """All participants' evaluation rows in one table (``subjects``: only theirs).

    Rows are sorted by subject, session, fixed, moving and method (stable,
    so rows equal in all five keep their per-subject order); columns follow
    the contract order, with any contract column a subject lacks added empty.
    Text columns are strings with ``""`` for missing values.

    Args:
        output_dir: The derivatives folder (``OUTPUT_DIR``).

    Raises:
        NoResultsError: If no usable ``sub-*/sub-*_evaluation.csv`` exists (exit code 66).
    """
    output_dir = Path(output_dir)
    csvs = find_subject_csvs(output_dir)
    if subjects is not None:
        wanted = {f"sub-{s}" for s in subjects}
        csvs = [p for p in csvs if p.parent.name in wanted]
    frames = [f for f in (_read_csv(p) for p in csvs) if f is not None]
    if not frames:
        raise NoResultsError(
            f"no participant results found under {output_dir} "
            "(expected sub-*/sub-*_evaluation.csv; run the participant level first)"
        )
    # Empty frames (a header only) would turn every column into object dtype.
    non_empty = [f for f in frames if len(f)]
    df = pd.concat(non_empty or frames[:1], ignore_index=True, sort=False)
    df = df.reindex(columns=order_columns(df.columns))
    for col in TEXT_COLUMNS:
        if col in df.columns:
            df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    for col in df.columns:
        if col not in TEXT_COLUMNS and df[col].dtype == object:
            # A column that is all-empty in every file is read as text: make it numeric.
            numeric = _numeric(df, col)
            if numeric is not None:
                df[col] = numeric
    df = df.sort_values(list(SORT_KEYS), kind="mergesort").reset_index(drop=True)
    return df


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Numeric columns to summarise, in table order (identity columns excluded)."""
    skip = set(TEXT_COLUMNS) | set(SORT_KEYS)
    return [
        c
        for c in df.columns
        if c not in skip
        and pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
    ]


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Per fixed/moving pair and method: counts and mean/median/sd of every metric.

    Columns: ``fixed, moving, method, n, n_ok, n_failed``, then for every
    numeric column ``<col>_mean``, ``<col>_median``, ``<col>_sd``. Statistics
    use the successful (``status == "ok"``) rows only and skip NaN (a pair
    without landmarks has no TRE); ``sd`` is the sample standard deviation
    (``ddof=1``), NaN for fewer than two values. A method whose rows all
    failed keeps its row, with NaN statistics.

    Args:
        df: Rows as returned by :func:`aggregate`.
    """
    metrics = metric_columns(df)
    keys = [k for k in SUMMARY_KEYS if k in df.columns]
    stats_cols = [f"{m}_{s}" for m in metrics for s in ("mean", "median", "sd")]
    columns = [*keys, "n", "n_ok", "n_failed", *stats_cols]
    if df.empty:
        return pd.DataFrame(columns=columns)
    ok = (
        df["status"].astype(str).eq("ok")
        if "status" in df.columns
        else pd.Series(True, index=df.index)
    )
    rows = []
    for key, group in df.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        good = group[ok.loc[group.index]]
        row: dict[str, object] = dict(zip(keys, key, strict=True))
        row["n"] = len(group)
        row["n_ok"] = len(good)
        row["n_failed"] = len(group) - len(good)
        for m in metrics:
            values = pd.to_numeric(good[m], errors="coerce").to_numpy(dtype=np.float64)
            values = values[np.isfinite(values)]
            row[f"{m}_mean"] = float(values.mean()) if values.size else np.nan
            row[f"{m}_median"] = float(np.median(values)) if values.size else np.nan
            row[f"{m}_sd"] = float(values.std(ddof=1)) if values.size > 1 else np.nan
        rows.append(row)
    out = pd.DataFrame(rows, columns=columns)
    return out.astype({"n": int, "n_ok": int, "n_failed": int})


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` atomically with the stable float format, and its data dictionary."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=FLOAT_FORMAT)
    write_data_dictionary(Path(path), df.columns)
    return Path(path)


def bids_subjects(bids_dir: Path) -> list[str]:
    """Labels of the ``sub-<label>`` folders of a BIDS dataset (none if it cannot be listed)."""
    try:
        with os.scandir(bids_dir) as it:
            entries = [e for e in it if e.name.startswith("sub-") and is_bids_label(e.name[4:])]
    except OSError:
        return []
    labels = []
    for entry in entries:
        # A broken folder (a symlink loop) still names a subject that should have results.
        with contextlib.suppress(OSError):
            if not entry.is_dir():
                continue
        labels.append(entry.name[4:])
    return sorted(labels)


def warn_subjects_without_results(df: pd.DataFrame, bids_dir: Path) -> list[str]:
    """Warn (one line) about subjects of ``bids_dir`` that have no row; return them."""
    have = set(df["subject"].astype(str)) if "subject" in df.columns else set()
    lacking = [f"sub-{s}" for s in bids_subjects(bids_dir) if s not in have]
    if lacking:
        LOGGER.warning(
            "%d subject(s) of %s have no participant results: %s (run the participant "
            "level for them)",
            len(lacking),
            bids_dir,
            _shown(lacking),
        )
    return lacking


def _matching(
    df: pd.DataFrame,
    group_dir: Path,
    paths: dict[str, Path],
    bids_dir: Path | None,
    models: Mapping[str, str],
    device: str,
) -> list[tuple[str, str]]:
    """Subject matching: CSVs into ``paths``, and its report section (none on any failure)."""
    from mmreg.reports.matching import (
        FAMILY,
        matching_section,
        run_matching,
        write_matching,
    )

    try:
        result = run_matching(
            df,
            bids_dir=bids_dir,
            model=models.get(FAMILY),
            device=device,
            output_dir=group_dir.parent,
        )
        if result is None:
            return []
        paths.update(write_matching(result, group_dir))
        return [("Subject matching and swap detection", matching_section(result))]
    except Exception as exc:  # an extra analysis: it never costs the group level its tables
        LOGGER.warning("subject matching failed: %s", " ".join(str(exc).split()))
        LOGGER.debug("subject matching traceback", exc_info=True)
        return []


def run_group_level(
    output_dir: Path,
    *,
    bids_dir: Path | None = None,
    extra_sections: Sequence[tuple[str, str]] | None = None,
    max_subjects: int | None = DEFAULT_MAX_SUBJECTS,
    matching: bool = True,
    models: Mapping[str, str] | None = None,
    device: str = "cpu",
) -> dict[str, Path]:
    """Write ``group/evaluation.csv``, ``group/summary.csv`` and ``group/report.html``.

    Also ``group/table1.csv`` when the rows carry per-landmark errors, and
    ``group/matching.csv`` / ``group/matching_summary.csv`` when ``matching`` is on
    and the run paired 2D with 3D images; each adds a report section.

    Args:
        output_dir: The derivatives folder holding the participant results.
        bids_dir: The input BIDS dataset, used to find fixed images for the
            report's figures when the rows carry no ``fixed_image`` path.
        extra_sections: ``(title, html)`` sections appended to the report;
            the HTML is inserted as is, so it must be trusted and escaped.
        max_subjects: Subjects that get alignment figures (failures and the worst
            scores first); ``None`` for all.
        matching: Match 2D and 3D scans across subjects (never fails the level).
        models: Weights per method family; ``contrastive`` scores the matching
            (default: the shipped weights; none: matching is skipped).
        device: ``auto``, ``cpu`` or ``cuda`` for the matching encoder.

    Returns:
        ``{"evaluation": ..., "summary": ..., "report": ...}`` paths, plus
        ``table1``, ``matching`` and ``matching_summary`` where written.

    Raises:
        NoResultsError: If there are no participant results (an InputError; exit code 66).
    """
    from mmreg.reports.html_report import build_report

    output_dir = Path(output_dir)
    df = aggregate(output_dir)
    if bids_dir is not None:
        warn_subjects_without_results(df, Path(bids_dir))
    summary = summarise(df)
    group_dir = output_dir / "group"
    paths = {
        "evaluation": write_csv(df, group_dir / "evaluation.csv"),
        "summary": write_csv(summary, group_dir / "summary.csv"),
    }
    sections: list[tuple[str, str]] = []
    points = keypoint_errors(df)
    if len(points):
        table = table1(points)
        paths["table1"] = write_csv(table, group_dir / "table1.csv")
        # cm, as in the paper's Table 1 that this reproduces; every other table is in mm.
        title = "Keypoint transfer error (cm, as in Windsor et al.'s Table 1)"
        sections.append((title, table1_section(table, points)))
    if matching:
        sections += _matching(df, group_dir, paths, bids_dir, models or {}, device)
    html = build_report(
        df,
        summary,
        output_dir=output_dir,
        bids_dir=bids_dir,
        extra_sections=[*sections, *(extra_sections or [])],
        max_subjects=max_subjects,
        subject_reports=True,
    )
    # Explicit UTF-8: the locale of a container may be plain ASCII.
    with atomic_path(group_dir / "report.html") as tmp:
        tmp.write_text(html, encoding="utf-8")
    paths["report"] = group_dir / "report.html"
    n_failed = int((df["status"] != "ok").sum()) if "status" in df.columns else 0
    LOGGER.info(
        "group level: %d row(s) from %d subject(s), %d failed",
        len(df),
        df["subject"].nunique() if "subject" in df.columns else 0,
        n_failed,
    )
    return paths


def subject_report_path(output_dir: Path, subject: str) -> Path:
    """``OUTPUT_DIR/sub-<label>.html``, where fMRIPrep puts its subject reports."""
    return Path(output_dir) / naming.subject_report(subject)


def write_subject_report(output_dir: Path, subject: str, *, bids_dir: Path | None = None) -> Path:
    """Write one subject's report (its tables, plots, failures and every figure).

    The participant level writes it for each subject as soon as the subject's evaluation
    table exists; the group report links it and shows figures for a few subjects only.

    Raises:
        NoResultsError: If the subject has no evaluation table.
    """
    from mmreg.reports.html_report import build_report

    df = aggregate(output_dir, [subject])
    html = build_report(
        df,
        summarise(df),
        output_dir=Path(output_dir),
        bids_dir=bids_dir,
        max_subjects=None,
        title=f"mmreg registration report: sub-{subject}",
    )
    path = subject_report_path(output_dir, subject)
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return path
