"""Keypoint transfer error per method and landmark group, in cm: ``group/table1.csv``.

The whole-body paper (Windsor et al. 2021, Table 1) reports, per method, the error of
landmarks carried from one scan to the other by the registration: median and
mean ± sd in cm over all points of each group (HJ, S1, SJ; see
:mod:`~mmreg.reports.landmark_groups`), and the time per registration. The
evaluation rows carry every landmark's error (``tre_<landmark>_mm``, and
``initial_tre_<landmark>_mm`` before registration; see
:func:`mmreg.imaging.evaluation.landmark_columns`); this module pools them.

Landmarks in no group (any dataset other than the whole-body one) get a row each;
``all`` pools every point. The pseudo-method ``initial`` is the alignment before
registration (once per image pair), the baseline every method starts from.
"""

from __future__ import annotations

import html
import logging

import numpy as np
import pandas as pd

from mmreg.imaging.evaluation import BEST_RIGID_PREFIX, landmark_error_columns
from mmreg.reports import figures
from mmreg.reports.landmark_groups import ALL, GROUP_TITLES, group_order, landmark_group

__all__ = [
    "INITIAL",
    "POINT_COLUMNS",
    "TABLE1_COLUMNS",
    "keypoint_errors",
    "table1",
    "table1_section",
]

LOGGER = logging.getLogger("mmreg.group")

#: The pseudo-method of the errors before registration.
INITIAL = "initial"
#: The pseudo-method of the best possible rigid map (least squares on the true points).
BEST_RIGID = "best-rigid"
#: Pseudo-methods, in table order, with their column prefixes.
REFERENCES = {INITIAL: "initial_", BEST_RIGID: BEST_RIGID_PREFIX}

#: Columns of :func:`keypoint_errors` (one row per registration and landmark).
POINT_COLUMNS = (
    "subject",
    "session",
    "fixed",
    "moving",
    "method",
    "landmark",
    "group",
    "error_cm",
    "runtime_s",
)

#: Columns of ``group/table1.csv`` (one row per pair, method and landmark group).
TABLE1_COLUMNS = (
    "fixed",
    "moving",
    "method",
    "group",
    "n_pairs",
    "n_points",
    "median_cm",
    "mean_cm",
    "sd_cm",
    "runtime_s_median",
    "ratio_to_best_rigid",
)

_KEYS = ("subject", "session", "fixed", "moving")


def _points(rows: pd.DataFrame, columns: dict[str, str], method: str | None) -> pd.DataFrame:
    """Rows x landmarks, long, NaN errors dropped; ``method=None`` keeps the rows' methods."""
    parts = []
    for name, column in columns.items():
        part = pd.DataFrame(
            {k: rows[k].astype(str) if k in rows else "" for k in _KEYS}, index=rows.index
        )
        part["method"] = rows["method"].astype(str) if method is None else method
        part["landmark"] = name
        part["group"] = landmark_group(name)
        part["error_cm"] = pd.to_numeric(rows[column], errors="coerce") / 10.0
        # Only a method's own rows have a runtime; "initial" took none.
        timed = method is None and "runtime_s" in rows
        part["runtime_s"] = pd.to_numeric(rows["runtime_s"], errors="coerce") if timed else np.nan
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=list(POINT_COLUMNS))
    out = pd.concat(parts, ignore_index=True)
    return out[np.isfinite(out["error_cm"].to_numpy(dtype=np.float64))]


def keypoint_errors(df: pd.DataFrame) -> pd.DataFrame:
    """Every landmark error of the evaluation rows, one row per registration and landmark.

    Methods' errors come from successful rows (``status == "ok"``); the ``initial``
    errors once per image pair (the first row that has them).

    Args:
        df: Evaluation rows (:func:`mmreg.reports.group.aggregate`).

    Returns:
        Columns :data:`POINT_COLUMNS`; ``error_cm`` finite, ``runtime_s`` NaN for
        ``initial``. Empty when the rows carry no per-landmark errors.
    """
    after = landmark_error_columns(df.columns)
    references = {
        name: landmark_error_columns(df.columns, prefix=prefix)
        for name, prefix in REFERENCES.items()
    }
    if df.empty or not (after or any(references.values())):
        return pd.DataFrame(columns=list(POINT_COLUMNS))
    ok = df[df["status"].astype(str) == "ok"] if "status" in df else df
    methods = _points(ok, after, None) if "method" in ok else _points(ok, {}, None)
    # References: once per image pair (the first row that has them).
    refs = [
        _points(df, columns, name).drop_duplicates([*_KEYS, "landmark"], keep="first")
        for name, columns in references.items()
    ]
    parts = [p for p in (*refs, methods) if len(p)] or [refs[0]]
    points = pd.concat(parts, ignore_index=True)
    # Stable order: pair, then the references, then the methods (sorted), then subject.
    order = {name: k for k, name in enumerate(REFERENCES)}
    points["_first"] = points["method"].map(order).fillna(len(order))
    points = points.sort_values(
        ["fixed", "moving", "_first", "method", "subject", "session"], kind="mergesort"
    )
    return points.drop(columns="_first").reset_index(drop=True)[list(POINT_COLUMNS)]


def _stats(errors: pd.Series) -> dict[str, float | int]:
    e = errors.to_numpy(dtype=np.float64)
    return {
        "n_points": int(e.size),
        "median_cm": float(np.median(e)) if e.size else np.nan,
        "mean_cm": float(e.mean()) if e.size else np.nan,
        "sd_cm": float(e.std(ddof=1)) if e.size > 1 else np.nan,
    }


def table1(points: pd.DataFrame) -> pd.DataFrame:
    """Per image pair type, method and landmark group (then ``all``): error statistics in cm.

    ``sd`` is the sample standard deviation (NaN for fewer than two points);
    ``n_pairs`` counts the registrations (subject and session) with points;
    ``runtime_s_median`` is the median wall-clock time per registration (NaN for
    ``initial``).

    Args:
        points: As returned by :func:`keypoint_errors`.

    Returns:
        Columns :data:`TABLE1_COLUMNS`, in the order of ``points``.
    """
    rows = []
    for (fixed, moving, method), g in points.groupby(["fixed", "moving", "method"], sort=False):
        once = g.drop_duplicates(["subject", "session"])
        runtime = pd.to_numeric(once["runtime_s"], errors="coerce").dropna()
        common = {
            "fixed": fixed,
            "moving": moving,
            "method": method,
            "runtime_s_median": float(runtime.median()) if len(runtime) else np.nan,
        }
        for group in group_order([*g["group"], ALL]):
            sub = g if group == ALL else g[g["group"] == group]
            n_pairs = len(sub.drop_duplicates(["subject", "session"]))
            rows.append({**common, "group": group, "n_pairs": n_pairs, **_stats(sub["error_cm"])})
    table = pd.DataFrame(rows, columns=list(TABLE1_COLUMNS[:-1]))
    # Each mean error as a multiple of the best possible rigid one (same pairs, group).
    best = table[table["method"] == BEST_RIGID].set_index(["fixed", "moving", "group"])["mean_cm"]
    keys = pd.MultiIndex.from_frame(table[["fixed", "moving", "group"]])
    floor = best.reindex(keys).to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = table["mean_cm"].to_numpy(dtype=np.float64) / floor
    table["ratio_to_best_rigid"] = np.where(floor > 0, ratio, np.nan)
    return table


# --- report -----------------------------------------------------------------------------------


def _cell(row: pd.Series) -> str:
    if not np.isfinite(row["median_cm"]):
        return "–"
    text = f"{row['median_cm']:.2f} ({row['mean_cm']:.2f}"
    sd = row["sd_cm"]
    return text + (f" ± {sd:.2f})" if np.isfinite(sd) else ")")


def _wide(table: pd.DataFrame) -> pd.DataFrame:
    """One row per pair and method; one cell ``median (mean ± sd)`` per group."""
    groups = group_order(table["group"])
    several = table[["fixed", "moving"]].drop_duplicates().shape[0] > 1
    rows = []
    for (fixed, moving, method), g in table.groupby(["fixed", "moving", "method"], sort=False):
        by_group = g.set_index("group")
        row: dict[str, object] = {}
        if several:
            row["pair (moving → fixed)"] = f"{moving} → {fixed}"
        row["method"] = method
        for group in groups:
            row[group] = _cell(by_group.loc[group]) if group in by_group.index else "–"
        row["n points"] = int(by_group.loc[ALL, "n_points"]) if ALL in by_group.index else 0
        ratio = (
            float(by_group.loc[ALL, "ratio_to_best_rigid"]) if ALL in by_group.index else np.nan
        )
        row["× best rigid"] = f"{ratio:.2f}" if np.isfinite(ratio) else "–"
        runtime = float(g["runtime_s_median"].iloc[0])
        row["runtime (s)"] = f"{runtime:.2f}" if np.isfinite(runtime) else "–"
        rows.append(row)
    return pd.DataFrame(rows)


def _figure(points: pd.DataFrame) -> bytes:
    """Box plot of every point's error per method (``initial`` in grey)."""
    pairs = points[["fixed", "moving"]].drop_duplicates().itertuples(index=False)
    pairs = list(pairs)
    groups: list[tuple[str, np.ndarray, str]] = []
    for fixed, moving in pairs:
        sub = points[(points["fixed"] == fixed) & (points["moving"] == moving)]
        suffix = f"\n{moving}→{fixed}" if len(pairs) > 1 else ""
        methods = [m for m in dict.fromkeys(sub["method"]) if m not in REFERENCES]
        for reference, colour in ((INITIAL, figures.INITIAL_COLOUR), (BEST_RIGID, "#616161")):
            if (sub["method"] == reference).any():
                values = sub.loc[sub["method"] == reference, "error_cm"].to_numpy()
                groups.append((f"{reference}{suffix}", values, colour))
        for i, method in enumerate(methods):
            values = sub.loc[sub["method"] == method, "error_cm"].to_numpy()
            groups.append((f"{method}{suffix}", values, figures.method_colour(i)))
    # Log scale: sub-centimetre methods and the raw start (~10 cm) share one axis.
    return figures.boxplot_groups(
        groups,
        title="Keypoint transfer error (every landmark)",
        ylabel="error (cm, log scale)",
        logscale=True,
    )


def table1_section(table: pd.DataFrame, points: pd.DataFrame) -> str:
    """The report section: the table (escaped) and the per-point box plot."""
    from mmreg.reports.html_report import data_uri

    groups = [g for g in group_order(table["group"]) if g in GROUP_TITLES]
    legend = "; ".join(f"{g}: {GROUP_TITLES[g]}" for g in groups)
    intro = (
        '<p class="meta">Distance (cm) between the moving image\'s landmarks and the fixed '
        "image's landmarks mapped by each method's transform: median (mean ± sample SD) "
        "over all points of each landmark group"
        + (f" ({html.escape(legend)})" if legend else "")
        + "; <i>initial</i>: before registration; <i>best-rigid</i>: the least-squares rigid "
        "map of the true points themselves, the floor of any rigid method (ratio: a "
        "method's mean error over it). Runtime: median wall-clock seconds per "
        "registration. Long form: <code>group/table1.csv</code>.</p>"
    )
    text = intro + _wide(table).to_html(index=False, escape=True, border=0, na_rep="–")
    try:
        png = _figure(points)
    except Exception as exc:  # a plot is never worth losing the report
        LOGGER.warning("keypoint error plot failed: %s", exc)
        return text
    caption = "Keypoint transfer error of every landmark, per method (grey: before registration)"
    return text + (
        f'<div class="figs"><figure><img src="{data_uri(png)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure></div>"
    )
