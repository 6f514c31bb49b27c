"""Table 1 of the group level: keypoint transfer error per method and landmark group."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmreg.reports.group import run_group_level
from mmreg.reports.landmark_groups import LANDMARK_GROUPS, group_order, landmark_group
from mmreg.reports.table1 import INITIAL, TABLE1_COLUMNS, keypoint_errors, table1

NAMES = (
    "femoral_head_left",
    "femoral_head_right",
    "s1",
    "humeral_head_left",
    "humeral_head_right",
)


def _row(subject: str, method: str, status: str, runtime: float, errors_mm: list[float]) -> dict:
    row = {
        "subject": subject,
        "session": "",
        "fixed": "DXA",
        "moving": "T1w",
        "method": method,
        "status": status,
        "error": "" if status == "ok" else "boom",
        "runtime_s": runtime,
        "tre_mean_mm": float(np.nanmean(errors_mm)),
        "initial_tre_mean_mm": 100.0,
    }
    for name, e in zip(NAMES, errors_mm, strict=True):
        row[f"tre_{name}_mm"] = e
        row[f"initial_tre_{name}_mm"] = 100.0
    return row


def _frame() -> pd.DataFrame:
    """m1 on two subjects (sub-02's left humeral head missing), m2 ok once, failed once."""
    return pd.DataFrame(
        [
            _row("01", "m1", "ok", 2.0, [10, 20, 30, 40, 50]),
            _row("01", "m2", "ok", 1.0, [5, 5, 5, 5, 5]),
            _row("02", "m1", "ok", 4.0, [20, 40, 10, np.nan, 30]),
            # A failed row's numbers must not count.
            _row("02", "m2", "failed", 9.0, [999, 999, 999, 999, 999]),
        ]
    )


def test_landmark_groups_are_the_papers() -> None:
    assert LANDMARK_GROUPS["HJ"] == ("femoral_head_left", "femoral_head_right")
    assert [landmark_group(n) for n in NAMES] == ["HJ", "HJ", "S1", "SJ", "SJ"]
    assert landmark_group("anterior_commissure") == "anterior_commissure"
    assert group_order(["all", "b", "SJ", "A", "HJ"]) == ["HJ", "SJ", "A", "b", "all"]


def test_benchmark_reads_the_one_definition() -> None:
    text = (Path(__file__).parents[2] / "benchmarks" / "bench_wholebody.py").read_text()
    assert "from mmreg.reports.landmark_groups import LANDMARK_GROUPS" in text
    assert "LANDMARK_GROUPS: dict" not in text


def test_keypoint_errors_long_form() -> None:
    points = keypoint_errors(_frame())
    # initial: 2 pairs x 5 landmarks; m1: 9 finite; m2: 5 (the failed row left out).
    assert points["method"].value_counts().to_dict() == {INITIAL: 10, "m1": 9, "m2": 5}
    assert list(points["method"].drop_duplicates()) == [INITIAL, "m1", "m2"]
    assert (points.loc[points["method"] == INITIAL, "error_cm"] == 10.0).all()
    assert points.loc[points["method"] == INITIAL, "runtime_s"].isna().all()
    m1 = points[(points["method"] == "m1") & (points["subject"] == "02")]
    assert dict(zip(m1["landmark"], m1["error_cm"], strict=True)) == {
        "femoral_head_left": 2.0,
        "femoral_head_right": 4.0,
        "s1": 1.0,
        "humeral_head_right": 3.0,
    }


def test_table1_hand_computed() -> None:
    table = table1(keypoint_errors(_frame()))
    assert list(table.columns) == list(TABLE1_COLUMNS)
    assert list(table["method"].drop_duplicates()) == [INITIAL, "m1", "m2"]
    assert list(table.loc[table["method"] == "m1", "group"]) == ["HJ", "S1", "SJ", "all"]
    m1 = table[table["method"] == "m1"].set_index("group")
    # HJ: 1, 2, 2, 4 cm -> median 2, mean 2.25, sd sqrt(4.75 / 3).
    assert (m1.loc["HJ", "n_points"], m1.loc["HJ", "n_pairs"]) == (4, 2)
    assert m1.loc["HJ", "median_cm"] == pytest.approx(2.0)
    assert m1.loc["HJ", "mean_cm"] == pytest.approx(2.25)
    assert m1.loc["HJ", "sd_cm"] == pytest.approx(math.sqrt(4.75 / 3))
    # S1: 3, 1 cm; SJ: 4, 5, 3 cm.
    assert m1.loc["S1", ["median_cm", "mean_cm", "sd_cm"]].tolist() == pytest.approx(
        [2.0, 2.0, math.sqrt(2.0)]
    )
    assert m1.loc["SJ", ["n_points", "median_cm", "mean_cm", "sd_cm"]].tolist() == pytest.approx(
        [3, 4.0, 4.0, 1.0]
    )
    # all: 1, 2, 3, 4, 5, 2, 4, 1, 3 cm.
    assert m1.loc["all", ["n_points", "median_cm", "mean_cm"]].tolist() == pytest.approx(
        [9, 3.0, 25 / 9]
    )
    assert (m1["runtime_s_median"] == 3.0).all()  # median of 2 s and 4 s
    m2 = table[table["method"] == "m2"].set_index("group")
    assert m2.loc["all", ["n_pairs", "n_points", "median_cm"]].tolist() == [1, 5, 0.5]
    assert math.isnan(m2.loc["S1", "sd_cm"])  # one point: no sample SD
    assert (m2["runtime_s_median"] == 1.0).all()
    initial = table[table["method"] == INITIAL].set_index("group")
    assert initial.loc["all", ["n_points", "median_cm", "sd_cm"]].tolist() == [10, 10.0, 0.0]
    assert initial["runtime_s_median"].isna().all()


def test_other_landmarks_get_a_row_each() -> None:
    df = pd.DataFrame(
        {
            "subject": ["01", "02"],
            "session": ["", ""],
            "fixed": ["T1w"] * 2,
            "moving": ["T2w"] * 2,
            "method": ["a"] * 2,
            "status": ["ok"] * 2,
            "runtime_s": [1.0, 3.0],
            "tre_mean_mm": [1.5, 2.5],
            "tre_max_mm": [2.0, 3.0],
            "tre_pc_mm": [1.0, 2.0],
            "tre_ac_mm": [2.0, 3.0],
        }
    )
    table = table1(keypoint_errors(df))
    assert list(table["group"]) == ["ac", "pc", "all"]
    assert table.set_index("group").loc["all", "mean_cm"] == pytest.approx(0.2)


def test_no_landmark_columns_no_points() -> None:
    df = _frame()[["subject", "session", "fixed", "moving", "method", "status", "tre_mean_mm"]]
    assert keypoint_errors(df).empty


def test_group_level_writes_table1_and_report_section(tmp_path: Path) -> None:
    out = tmp_path / "out"
    frame = _frame()
    frame.loc[0, "method"] = "<b>m1</b>"  # escaped in the report
    frame.loc[2, "method"] = "<b>m1</b>"
    for subject, rows in frame.groupby("subject"):
        (out / f"sub-{subject}").mkdir(parents=True)
        rows.to_csv(out / f"sub-{subject}" / f"sub-{subject}_evaluation.csv", index=False)
    paths = run_group_level(out, matching=False)
    written = pd.read_csv(paths["table1"], dtype={"method": str})
    assert list(written.columns) == list(TABLE1_COLUMNS)
    assert len(written) == 12  # 3 methods x (HJ, S1, SJ, all)
    html = paths["report"].read_text(encoding="utf-8")
    assert "Keypoint transfer error (cm" in html
    assert "&lt;b&gt;m1&lt;/b&gt;" in html and "<b>m1</b>" not in html
    assert "2.00 (2.25 ± 1.26)" in html  # m1, HJ
    assert html.count("data:image/png;base64,") >= 1
    summary = pd.read_csv(paths["summary"])
    assert "tre_s1_mm_mean" in summary.columns  # per-landmark columns are summarised too


def test_best_rigid_reference_and_ratio() -> None:
    """The best-rigid pseudo-method comes from ``best_rigid_*`` columns, once per pair,
    and each method's mean error is divided by its mean (hand-computed)."""
    rows = pd.DataFrame(
        {
            "subject": ["01", "01", "02", "02"],
            "session": ["", "", "", ""],
            "fixed": ["DXA"] * 4,
            "moving": ["T1w"] * 4,
            "method": ["a", "b", "a", "b"],
            "status": ["ok"] * 4,
            "runtime_s": [1.0, 2.0, 3.0, 4.0],
            "tre_s1_mm": [10.0, 20.0, 30.0, 40.0],
            "best_rigid_tre_s1_mm": [5.0, 5.0, 15.0, 15.0],
        }
    )
    table = table1(keypoint_errors(rows))
    s1 = table[table["group"] == "S1"].set_index("method")
    assert list(s1.index) == ["best-rigid", "a", "b"]
    assert s1.loc["best-rigid", "mean_cm"] == pytest.approx(1.0)  # (0.5 + 1.5) / 2
    assert s1.loc["a", "ratio_to_best_rigid"] == pytest.approx(2.0)  # (1 + 3) / 2 / 1
    assert s1.loc["b", "ratio_to_best_rigid"] == pytest.approx(3.0)
    assert s1.loc["best-rigid", "ratio_to_best_rigid"] == pytest.approx(1.0)
