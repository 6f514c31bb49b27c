"""The group-level HTML report: one self-contained file, figures embedded.

The report shows the run's provenance, the per-method summary, metric box
plots, the failures, and per subject and pair the fixed image against each
method's warped moving image. PNGs are embedded as base64 data URIs so the
single ``group/report.html`` can be mailed or archived on its own.

The markup is in jinja2 templates (``templates/report.html`` and its
``macros.html``); this module computes what they show (table cells, captions,
notes, PNG data URIs) as plain values, and the templates' autoescaping escapes
every string that comes from data (labels, method names, error messages,
paths, configuration values). A figure that cannot be drawn (missing or
unreadable image) is replaced by a note; the report itself never fails on one
subject's data.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from mmreg import __version__
from mmreg.bids_app import naming
from mmreg.errors import MmregError
from mmreg.imaging.image import Image, load_image
from mmreg.reports import figures

LOGGER = logging.getLogger("mmreg.report")

#: Metrics drawn as box plots: (column, title, y label, log scale).
BOXPLOTS = (
    ("dice_mean", "Dice (mean over labels)", "Dice", False),
    ("tre_mean_mm", "Target registration error", "TRE (mm)", False),
    ("hd95_mean_mm", "95th percentile Hausdorff distance", "HD95 (mm)", False),
    ("runtime_s", "Runtime", "seconds", True),
    ("neg_jacobian_pct", "Folding", "% voxels with Jacobian ≤ 0", False),
)

#: Summary table columns: (metric column, header, digits).
SUMMARY_METRICS = (
    ("initial_dice_mean", "Dice before", 3),
    ("dice_mean", "Dice", 3),
    ("initial_tre_mean_mm", "TRE before (mm)", 2),
    ("tre_mean_mm", "TRE (mm)", 2),
    ("hd95_mean_mm", "HD95 (mm)", 2),
    ("runtime_s", "runtime (s)", 1),
    ("neg_jacobian_pct", "% neg. Jacobian", 3),
)

#: Per-subject table columns: (column, header, digits).
SUBJECT_METRICS = (
    ("dice_mean", "Dice", 3),
    ("tre_mean_mm", "TRE (mm)", 2),
    ("hd95_mean_mm", "HD95 (mm)", 2),
    ("runtime_s", "runtime (s)", 1),
    ("neg_jacobian_pct", "% neg. Jacobian", 3),
)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _num(value: Any, digits: int = 3) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "–"
    return f"{number:.{digits}f}" if math.isfinite(number) else "–"


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI for embedding ``png`` in HTML."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


#: Plain data for the templates: a section, a table, or an entry of a row of figures.
Record = dict[str, Any]


def _figure(png: bytes, caption: str) -> Record:
    return {"kind": "figure", "src": data_uri(png), "caption": caption}


def _note(text: str) -> Record:
    return {"kind": "note", "text": text}


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    kinds: Sequence[str] | None = None,
    row_classes: Sequence[str] | None = None,
) -> Record:
    """A table for ``macros.table``: cells are plain values; ``kinds`` styles each column
    (``"num"``, ``"b"``, ``"code"`` or ``""``), ``row_classes`` each row (``"failed"``)."""
    classes = list(row_classes) if row_classes else [""] * len(rows)
    return {
        "header": list(header),
        "rows": list(zip(rows, classes, strict=True)),
        "kinds": list(kinds) if kinds else [""] * len(header),
    }


def _pair_label(fixed: Any, moving: Any) -> str:
    return f"{moving} → {fixed}"


# --- provenance -----------------------------------------------------------------------------


def newest_config(output_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The most recent run's ``logs/<run>/config.json``, or ``None``."""
    candidates = sorted(
        Path(output_dir).glob("logs/*/config.json"),
        key=lambda p: (p.stat().st_mtime, p.as_posix()),
    )
    for path in reversed(candidates):
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(config, dict):
            return path, config
    return None


def _config_section(output_dir: Path) -> Record | None:
    """The most recent run's settings; ``None`` without a ``config.json``."""
    found = newest_config(output_dir)
    if found is None:
        return None
    path, config = found
    rows = []
    for key in sorted(config):
        value = config[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if len(text) > 300:
            text = text[:297] + "..."
        rows.append([key, text])
    try:
        shown = path.relative_to(output_dir).as_posix()
    except ValueError:
        shown = str(path)
    return {"path": shown, "table": _table(["setting", "value"], rows, ["code", ""])}


# --- summary --------------------------------------------------------------------------------


def _mean_sd(row: pd.Series, column: str, digits: int) -> str:
    mean = row.get(f"{column}_mean", np.nan)
    sd = row.get(f"{column}_sd", np.nan)
    if _num(mean, digits) == "–":
        return "–"
    if _num(sd, digits) == "–":
        return _num(mean, digits)
    return f"{_num(mean, digits)} ± {_num(sd, digits)}"


def _summary_section(summary: pd.DataFrame) -> Record | None:
    """The per-method table and the Dice per label table; ``None`` without rows."""
    if summary.empty:
        return None
    metrics = [m for m in SUMMARY_METRICS if f"{m[0]}_mean" in summary.columns]
    header = ["pair (moving → fixed)", "method", "n", "ok", "failed"]
    header += [title for _, title, _ in metrics]
    rows, classes = [], []
    for _, row in summary.iterrows():
        cells = [
            _pair_label(row.get("fixed", ""), row.get("moving", "")),
            row.get("method", ""),
            *(int(row[c]) for c in ("n", "n_ok", "n_failed")),
        ]
        cells += [_mean_sd(row, col, digits) for col, _, digits in metrics]
        rows.append(cells)
        classes.append("failed" if int(row["n_ok"]) == 0 else "")
    kinds = ["", "b"] + ["num"] * (len(header) - 2)
    return {"table": _table(header, rows, kinds, classes), "labels": _label_dice_table(summary)}


def _label_dice_table(summary: pd.DataFrame) -> Record | None:
    labels = [
        c[len("dice_") : -len("_mean")]
        for c in summary.columns
        if c.startswith("dice_") and c.endswith("_mean") and c != "dice_mean_mean"
    ]
    if not labels:
        return None
    rows = [
        [
            _pair_label(row.get("fixed", ""), row.get("moving", "")),
            row.get("method", ""),
            *(_mean_sd(row, f"dice_{lab}", 3) for lab in labels),
        ]
        for _, row in summary.iterrows()
    ]
    header = ["pair (moving → fixed)", "method", *labels]
    return _table(header, rows, ["", ""] + ["num"] * len(labels))


def _has_values(df: pd.DataFrame, column: str) -> bool:
    cols = [c for c in (column, f"initial_{column}") if c in df.columns]
    return any(np.isfinite(pd.to_numeric(df[c], errors="coerce")).any() for c in cols)


def _plots_section(df: pd.DataFrame) -> Record:
    """A box plot per metric with values, and notes on the others."""
    figs, missing, notes = [], [], []
    for column, title, ylabel, log in BOXPLOTS:
        if column not in df.columns or not _has_values(df, column):
            missing.append(column)
            continue
        data = df
        if column == "neg_jacobian_pct":
            values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
            if not np.any(values[np.isfinite(values)] != 0):
                notes.append("No result folds (Jacobian determinant > 0 everywhere).")
                continue
        if log and "method" in df.columns:
            # No registration takes no time: on a log axis it would only squash the others.
            data = df[df["method"].astype(str) != "identity"]
            if data.empty:
                continue
        try:
            png = figures.boxplot_by_method(data, column, title=title, ylabel=ylabel, logscale=log)
        except Exception as exc:  # a plot is never worth losing the report
            LOGGER.warning("box plot of %s failed: %s", column, exc)
            missing.append(column)
            continue
        caption = f"{title} per method ({column})"
        if figures.initial_column(df, column):
            caption += "; grey: before registration"
        figs.append(_figure(png, caption))
    if missing:
        notes.insert(0, "No values for: " + ", ".join(missing) + ".")
    return {"figures": figs, "notes": notes}


def _failures_section(df: pd.DataFrame) -> Record:
    """The rows whose status is not ``ok``, as a table."""
    failed = df[df["status"].astype(str) != "ok"] if "status" in df.columns else df.iloc[:0]
    rows = [
        [
            r.get("subject", ""),
            r.get("session", ""),
            _pair_label(r.get("fixed", ""), r.get("moving", "")),
            r.get("method", ""),
            r.get("error", "") or "(no reason given)",
        ]
        for _, r in failed.iterrows()
    ]
    return _table(["subject", "session", "pair", "method", "error"], rows)


# --- per-subject figures --------------------------------------------------------------------


def stored_path(row: pd.Series | Mapping[str, Any], column: str, root: Path | None) -> Path | None:
    """The file an evaluation row stores in ``column``, or ``None`` where there is none.

    The table stores paths as the participant level wrote them: derivatives relative to
    OUTPUT_DIR (``warped``), inputs as BIDS URIs (``bids:raw:<path in BIDS_DIR>``) or
    ``file://`` URLs (``fixed_image``); relative paths are taken from ``root``.

    Example:
        >>> stored_path({"warped": "sub-01/anat/w.nii.gz"}, "warped", Path("/out"))
        PosixPath('/out/sub-01/anat/w.nii.gz')
        >>> stored_path({"fixed_image": "bids:raw:sub-01/anat/a.nii.gz"}, "fixed_image",
        ...             Path("/bids"))
        PosixPath('/bids/sub-01/anat/a.nii.gz')
        >>> stored_path({"warped": ""}, "warped", None) is None
        True
    """
    given = row.get(column, "")
    if _is_missing(given):
        return None
    text = str(given)
    if text.startswith("file://"):
        text = url2pathname(urlparse(text).path)
    path = Path(text.removeprefix("bids:raw:"))
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    return path


def warped_path(row: pd.Series | Mapping[str, Any], output_dir: Path) -> Path | None:
    """The warped moving image of an evaluation row (its ``warped`` column)."""
    return stored_path(row, "warped", output_dir)


def find_source_image(
    row: pd.Series | Mapping[str, Any], role: str, bids_dir: Path | None
) -> Path | None:
    """The input image of ``role`` (``"fixed"``/``"moving"``): its ``<role>_image`` column."""
    path = stored_path(row, f"{role}_image", bids_dir)
    return path if path is not None and path.is_file() else None


def _load(path: Path | None, cache: dict[Path, Image | str]) -> Image | str:
    """The image at ``path``, or a one-line reason why there is none."""
    if path is None:
        return "not found"
    if path not in cache:
        try:
            cache[path] = load_image(path, check_contents=False)
        except Exception as exc:  # report the reason; the report goes on
            cache[path] = " ".join(str(exc).split()) or type(exc).__name__
    return cache[path]


def _flicker(fixed: Image, other: Image, caption: str) -> Record:
    """Fixed and ``other`` alternating in one place (hover holds the fixed frame)."""
    try:
        first, second = figures.flicker_frames(fixed, other)
    except Exception as exc:  # a figure is never worth losing the report
        return _note(f"{caption}: no figure ({exc})")
    return {
        "kind": "flicker",
        "src": data_uri(first),
        "other": data_uri(second),
        "caption": caption,
    }


def _overlay(fixed: Image, other: Image, title: str, caption: str) -> Record:
    try:
        return _figure(figures.overlay_figure(fixed, other, title=title), caption)
    except Exception as exc:  # a figure is never worth losing the report
        LOGGER.warning("figure %r failed: %s", title, exc)
        return _note(f"{caption}: figure failed ({' '.join(str(exc).split())})")


def keypoint_tables(row: pd.Series, output_dir: Path) -> tuple[Path, Path] | None:
    """The fixed- and moving-space keypoint TSVs a row's method wrote, if any."""
    try:
        subject = str(row["subject"])
        session = None if _is_missing(row.get("session")) else str(row.get("session")) or None
        fixed, moving, method = str(row["fixed"]), str(row["moving"]), str(row["method"])
        folder = Path(output_dir) / naming.subject_dir(subject, session)
        paths = tuple(
            folder / naming.keypoints_name(subject, session, fixed, moving, method, space)
            for space in (fixed, moving)
        )
    except (KeyError, ValueError, MmregError):
        return None
    return paths if all(p.is_file() for p in paths) else None  # type: ignore[return-value]


def _keypoints(row: pd.Series, output_dir: Path, fixed: Image, moving: Image) -> list[Record]:
    tables = keypoint_tables(row, output_dir)
    if tables is None:
        return []
    method = str(row.get("method", ""))
    try:
        points = [pd.read_csv(t, sep="\t")[["x", "y", "z"]].to_numpy() for t in tables]
        png = figures.keypoints_figure(fixed, moving, *points, title=f"{method}: keypoints")
    except Exception as exc:  # a figure is never worth losing the report
        LOGGER.warning("keypoint figure for %s failed: %s", method, exc)
        return [_note(f"{method}: keypoint figure failed ({' '.join(str(exc).split())})")]
    caption = (
        f"{method}: {len(points[0])} keypoints on the fixed (top) and moving image (bottom); "
        "equal colours correspond"
    )
    return [_figure(png, caption)]


def _planar_moving(
    fixed_path: Path, moving_path: Path, fixed: Image, moving: Image
) -> Image | str:
    """The moving image as registered: a 3D image paired with a 2D one is its coronal slice."""
    from mmreg.imaging.planar import make_planar

    try:
        planar = make_planar(fixed_path, moving_path, fixed, moving)
    except Exception as exc:  # a figure is never worth losing the report
        return " ".join(str(exc).split()) or type(exc).__name__
    if planar.sliced != "moving":
        return "is 3D while the fixed image is 2D; no slice to show"
    return planar.moving


def _pair_section(group: pd.DataFrame, output_dir: Path, bids_dir: Path | None) -> Record:
    """One pair of one subject: its metrics table, then its figures (or why there are none)."""
    first = group.iloc[0]
    fixed_label, moving_label = first.get("fixed", ""), first.get("moving", "")
    metrics = [m for m in SUBJECT_METRICS if m[0] in group.columns]
    rows, classes = [], []
    for _, r in group.iterrows():
        cells = [r.get("method", ""), r.get("status", "")]
        rows.append(cells + [_num(r.get(c), d) for c, _, d in metrics])
        classes.append("" if str(r.get("status", "")) == "ok" else "failed")
    header = ["method", "status"] + [t for _, t, _ in metrics]
    pair: Record = {
        "title": _pair_label(fixed_label, moving_label),
        "table": _table(header, rows, ["", ""] + ["num"] * len(metrics), classes),
        "note": None,  # why there are no figures
        "figures": [],  # filled below
    }
    cache: dict[Path, Image | str] = {}
    fixed_path = find_source_image(first, "fixed", bids_dir)
    fixed = _load(fixed_path, cache)
    if isinstance(fixed, str):
        pair["note"] = f"No figures: fixed image ({fixed_label}) {fixed}."
        return pair
    figs: list[Record] = pair["figures"]
    moving_path = find_source_image(first, "moving", bids_dir)
    moving = _load(moving_path, cache)
    if isinstance(moving, Image) and moving.ndim != fixed.ndim and fixed_path and moving_path:
        moving = _planar_moving(fixed_path, moving_path, fixed, moving)
    if isinstance(moving, Image):
        figs.append(
            _overlay(
                fixed,
                moving,
                "before registration",
                f"before registration: {moving_label} as it lies in world space",
            )
        )
        figs.append(_flicker(fixed, moving, f"before registration: {moving_label}"))
    for _, r in group.iterrows():
        method = str(r.get("method", ""))
        if str(r.get("status", "")) != "ok":
            figs.append(_note(f"{method}: failed ({r.get('error', '') or 'no reason given'})"))
            continue
        warped = _load(warped_path(r, output_dir), cache)
        if isinstance(warped, str):
            figs.append(_note(f"{method}: warped image {warped}"))
            continue
        figs.append(_overlay(fixed, warped, method, f"{method}: {moving_label} warped"))
        figs.append(_flicker(fixed, warped, f"{method}: {moving_label} warped"))
        if isinstance(moving, Image):
            figs.extend(_keypoints(r, output_dir, fixed, moving))
    return pair


def worst_subjects(df: pd.DataFrame, n: int) -> list[str]:
    """The ``n`` subjects a reviewer should look at first, in the order shown.

    Subjects with a failed row come first, then those whose worst successful row scores
    lowest (Dice; landmark error when there are no labels); ties and subjects without
    scores in label order.

    Example:
        >>> df = pd.DataFrame({"subject": ["01", "02", "03", "04"],
        ...                    "status": ["ok", "ok", "ok", "failed"],
        ...                    "dice_mean": [0.9, 0.5, 0.7, None]})
        >>> worst_subjects(df, 3)
        ['04', '02', '03']
    """
    frame = df.assign(subject=df["subject"].astype(str))
    failed = (
        (frame.get("status", pd.Series("ok", index=frame.index)) != "ok")
        .groupby(frame["subject"])
        .any()
    )
    badness = pd.Series(0.0, index=failed.index)
    for column, sign in (("dice_mean", -1.0), ("tre_mean_mm", 1.0)):
        if column in frame.columns:
            values = pd.to_numeric(frame[column], errors="coerce") * sign
            worst = values.groupby(frame["subject"]).max()
            if worst.notna().any():
                badness = worst.reindex(failed.index).fillna(-np.inf)
                break
    order = sorted(failed.index, key=lambda s: (bool(not failed[s]), -badness[s], s))
    return order[:n]


def _subjects_section(
    df: pd.DataFrame, output_dir: Path, bids_dir: Path | None, max_subjects: int | None
) -> Record | None:
    """The subjects shown with figures, each with its pairs; ``None`` without subjects."""
    if df.empty or "subject" not in df.columns:
        return None
    subjects = sorted(df["subject"].astype(str).unique())
    shown = subjects
    if max_subjects is not None and len(subjects) > max_subjects:
        shown = worst_subjects(df, max(0, max_subjects))
    note = None
    if len(shown) < len(subjects):
        note = (
            f"Figures for {len(shown)} of {len(subjects)} subjects only (max_subjects): those "
            "with failures first, then the worst scores (lowest Dice, else largest TRE); all "
            "subjects are in the tables and the CSVs."
        )
    keys = [k for k in ("session", "fixed", "moving") if k in df.columns]
    figured: list[tuple[str, list[Record]]] = []
    for subject in shown:
        rows = df[df["subject"].astype(str) == subject]
        pairs = []
        for key, group in rows.groupby(keys, sort=True, dropna=False) if keys else [((), rows)]:
            key = key if isinstance(key, tuple) else (key,)
            session = dict(zip(keys, key, strict=True)).get("session", "")
            pairs.append({**_pair_section(group, output_dir, bids_dir), "session": session})
        figured.append((subject, pairs))
    return {"note": note, "shown": figured}


def _subject_links(df: pd.DataFrame, output_dir: Path) -> dict[str, str]:
    """Subject label -> link (relative to ``group/``) of each subject report that exists."""
    if "subject" not in df.columns:
        return {}
    subjects = sorted(df["subject"].astype(str).unique())
    reports = {s: naming.subject_report(s) for s in subjects}
    return {s: f"../{page}" for s, page in reports.items() if (output_dir / page).is_file()}


# --- the report -----------------------------------------------------------------------------


def build_report(
    df: pd.DataFrame,
    summary: pd.DataFrame,
    *,
    output_dir: Path,
    bids_dir: Path | None = None,
    extra_sections: Sequence[tuple[str, str]] | None = None,
    max_subjects: int | None = 20,
    title: str = "mmreg registration report",
    subject_reports: bool = False,
) -> str:
    """The report as one HTML string.

    Args:
        df: All evaluation rows (:func:`mmreg.reports.group.aggregate`).
        summary: Per-method summary (:func:`mmreg.reports.group.summarise`).
        output_dir: The derivatives folder (warped images, ``logs/``).
        bids_dir: Input dataset, to find fixed/moving images by name when the
            rows do not carry their paths.
        extra_sections: ``(title, html)`` appended at the end; the HTML is
            trusted (inserted unescaped), the title is escaped.
        max_subjects: Subjects with alignment figures (failures and worst scores
            first, see :func:`worst_subjects`); ``None`` for all.
        title: Page title.
        subject_reports: Link the subjects' own reports (``OUTPUT_DIR/sub-<label>.html``,
            those that exist) from a page in ``OUTPUT_DIR/group/``.
    """
    output_dir = Path(output_dir)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    n_subjects = df["subject"].nunique() if "subject" in df.columns else 0
    n_failed = int((df["status"].astype(str) != "ok").sum()) if "status" in df.columns else 0
    methods = sorted(df["method"].astype(str).unique()) if "method" in df.columns else []
    extras = list(extra_sections or [])
    nav = [
        ("summary", "Summary"),
        ("plots", "Plots"),
        ("failures", "Failures"),
        ("subjects", "Subjects"),
    ]
    nav += [(f"extra-{i}", t) for i, (t, _) in enumerate(extras)]
    return _template("report.html").render(
        title=title,
        version=__version__,
        generated=now,
        n_rows=len(df),
        n_subjects=n_subjects,
        methods=methods,
        n_failed=n_failed,
        output_dir=str(output_dir),
        nav=nav,
        config=_config_section(output_dir),
        summary=_summary_section(summary),
        plots=_plots_section(df),
        failures=_failures_section(df),
        subjects=_subjects_section(df, output_dir, bids_dir, max_subjects),
        subject_links=_subject_links(df, output_dir) if subject_reports else {},
        # Extras' HTML is trusted by contract (built by other modules), their titles are not.
        extras=[(t, Markup(h)) for t, h in extras],
    )


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("mmreg.reports", "templates"),
        autoescape=True,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=lambda value: "" if value is None else value,  # a missing value shows empty
    )


def _template(name: str) -> jinja2.Template:
    return _environment().get_template(name)
