"""Group level: aggregation order, hand-computed summary statistics, written files."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mmreg.errors import InputError
from mmreg.reports.group import aggregate, run_group_level, summarise

ERROR = "<script>alert('x')</script> & ANTs said \"no\""

#: Rows per subject, deliberately out of order inside each file.
ROWS = {
    "01": [
        {
            "method": "ants-syn",
            "status": "ok",
            "runtime_s": 10.0,
            "initial_dice_mean": 0.5,
            "dice_mean": 0.85,
            "dice_WM": 0.9,
            "dice_GM": 0.8,
            "tre_mean_mm": 1.0,
            "initial_tre_mean_mm": 5.0,
            "hd95_mean_mm": 2.0,
            "neg_jacobian_pct": 0.1,
        },
        {
            "method": "ants-affine",
            "status": "ok",
            "runtime_s": 1.0,
            "initial_dice_mean": 0.5,
            "dice_mean": 0.70,
            "dice_WM": 0.75,
            "dice_GM": 0.65,
            "tre_mean_mm": 2.0,
            "initial_tre_mean_mm": 5.0,
            "hd95_mean_mm": 3.0,
            "neg_jacobian_pct": 0.0,
        },
    ],
    "10": [
        {
            "method": "ants-syn",
            "status": "ok",
            "runtime_s": 20.0,
            "initial_dice_mean": 0.4,
            "dice_mean": 0.90,
            "dice_WM": 0.95,
            "dice_GM": 0.85,
            "tre_mean_mm": np.nan,
            "initial_tre_mean_mm": np.nan,
            "hd95_mean_mm": 1.0,
            "neg_jacobian_pct": 0.3,
        },
        {
            "method": "ants-affine",
            "status": "ok",
            "runtime_s": 6.0,
            "initial_dice_mean": 0.4,
            "dice_mean": 0.75,
            "dice_WM": 0.8,
            "dice_GM": 0.7,
            "tre_mean_mm": np.nan,
            "initial_tre_mean_mm": np.nan,
            "hd95_mean_mm": 4.0,
            "neg_jacobian_pct": 0.0,
        },
    ],
    "02": [
        {
            "method": "ants-syn",
            "status": "failed",
            "error": ERROR,
            "runtime_s": 3.0,
            "initial_dice_mean": 0.6,
            "dice_mean": np.nan,
            "dice_WM": np.nan,
            "dice_GM": np.nan,
            "tre_mean_mm": np.nan,
            "initial_tre_mean_mm": 7.0,
            "hd95_mean_mm": np.nan,
            "neg_jacobian_pct": np.nan,
        },
        {
            "method": "ants-affine",
            "status": "ok",
            "runtime_s": 2.0,
            "initial_dice_mean": 0.6,
            "dice_mean": 0.80,
            "dice_WM": 0.85,
            "dice_GM": 0.75,
            "tre_mean_mm": 4.0,
            "initial_tre_mean_mm": 7.0,
            "hd95_mean_mm": 5.0,
            "neg_jacobian_pct": 0.0,
        },
    ],
}


def _camel(method: str) -> str:
    head, *rest = method.split("-")
    return head + "".join(p.capitalize() for p in rest)


def write_fake_output(
    tmp_path: Path, *, images: bool = True, shape: tuple[int, ...] = (12, 12, 12)
) -> tuple[Path, Path]:
    """A BIDS input folder and a derivatives folder with participant results.

    Every row carries its ``warped``, ``fixed_image`` and ``moving_image`` paths as the
    participant level writes them (sub-01 absolute input paths, the others BIDS URIs);
    sub-02's affine result has no warped image on disk.
    """
    bids, out = tmp_path / "bids", tmp_path / "out"
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for subject, rows in ROWS.items():
        anat_in, anat_out = bids / f"sub-{subject}" / "anat", out / f"sub-{subject}" / "anat"
        anat_in.mkdir(parents=True, exist_ok=True)
        anat_out.mkdir(parents=True, exist_ok=True)
        records = []
        for row in rows:
            record = {
                "subject": subject,
                "session": "",
                "fixed": "T1w",
                "moving": "T2w",
                "error": "",
                **row,
            }
            warped = anat_out / f"sub-{subject}_space-T1w_desc-{_camel(row['method'])}_T2w.nii.gz"
            if row["status"] == "ok":
                record["warped"] = warped.relative_to(out).as_posix()
            for role, suffix in (("fixed", "T1w"), ("moving", "T2w")):
                image = anat_in / f"sub-{subject}_{suffix}.nii.gz"
                uri = f"bids:raw:{image.relative_to(bids).as_posix()}"
                record[f"{role}_image"] = str(image) if subject == "01" else uri
            skip = subject == "02" and row["method"] == "ants-affine"
            if images and row["status"] == "ok" and not skip:
                nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), affine), warped)
            records.append(record)
        if images:
            for name in ("T1w", "T2w"):
                data = rng.random(shape).astype(np.float32)
                nib.save(nib.Nifti1Image(data, affine), anat_in / f"sub-{subject}_{name}.nii.gz")
        pd.DataFrame(records).to_csv(
            out / f"sub-{subject}" / f"sub-{subject}_evaluation.csv", index=False
        )
    return bids, out


def test_aggregate_concatenates_in_sorted_order(tmp_path: Path) -> None:
    _, out = write_fake_output(tmp_path, images=False)
    df = aggregate(out)
    assert len(df) == 6
    assert list(df["subject"]) == ["01", "01", "02", "02", "10", "10"]
    assert list(df["method"]) == ["ants-affine", "ants-syn"] * 3
    assert list(df.columns[:5]) == ["subject", "session", "fixed", "moving", "method"]
    assert set(df["session"]) == {""}
    # A failed row has no warped image: "" rather than NaN.
    failed = df[df["status"] == "failed"]
    assert list(failed["warped"]) == [""] * len(failed)
    assert list(failed["error"]) == [ERROR]


def test_summarise_matches_hand_computed_statistics(tmp_path: Path) -> None:
    _, out = write_fake_output(tmp_path, images=False)
    summary = summarise(aggregate(out)).set_index("method")
    assert list(summary.index) == ["ants-affine", "ants-syn"]
    affine, syn = summary.loc["ants-affine"], summary.loc["ants-syn"]
    assert (affine["n"], affine["n_ok"], affine["n_failed"]) == (3, 3, 0)
    assert (syn["n"], syn["n_ok"], syn["n_failed"]) == (3, 2, 1)
    # Dice: affine 0.70, 0.80, 0.75; syn 0.85, 0.90 (the failed row is left out).
    assert affine["dice_mean_mean"] == pytest.approx(0.75)
    assert affine["dice_mean_median"] == pytest.approx(0.75)
    assert affine["dice_mean_sd"] == pytest.approx(0.05)
    assert syn["dice_mean_mean"] == pytest.approx(0.875)
    assert syn["dice_mean_sd"] == pytest.approx(math.sqrt(2 * 0.025**2))
    # Runtime of failed rows does not count: syn 10, 20.
    assert affine["runtime_s_mean"] == pytest.approx(3.0)
    assert affine["runtime_s_median"] == pytest.approx(2.0)
    assert affine["runtime_s_sd"] == pytest.approx(math.sqrt(7.0))
    assert syn["runtime_s_mean"] == pytest.approx(15.0)
    # TRE is NaN for sub-10 (no landmarks): mean of 2 and 4; syn has a single value.
    assert affine["tre_mean_mm_mean"] == pytest.approx(3.0)
    assert affine["tre_mean_mm_sd"] == pytest.approx(math.sqrt(2.0))
    assert syn["tre_mean_mm_mean"] == pytest.approx(1.0)
    assert math.isnan(syn["tre_mean_mm_sd"])
    assert affine["initial_dice_mean_mean"] == pytest.approx(0.5)
    assert affine["dice_WM_mean"] == pytest.approx(0.8)
    for col in ("fixed", "moving"):
        assert set(summary[col]) == {"T1w" if col == "fixed" else "T2w"}


def test_summarise_all_failed_method_keeps_a_row() -> None:
    df = pd.DataFrame(
        {
            "subject": ["01", "02"],
            "session": ["", ""],
            "fixed": ["T1w"] * 2,
            "moving": ["T2w"] * 2,
            "method": ["broken"] * 2,
            "status": ["failed"] * 2,
            "error": ["boom", "boom"],
            "dice_mean": [np.nan, np.nan],
            "runtime_s": [1.0, 2.0],
        }
    )
    row = summarise(df).iloc[0]
    assert (row["n"], row["n_ok"], row["n_failed"]) == (2, 0, 2)
    assert math.isnan(row["dice_mean_mean"]) and math.isnan(row["runtime_s_median"])


def test_no_results_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no participant results found under"):
        aggregate(tmp_path)


def test_unreadable_csv_is_skipped(tmp_path: Path) -> None:
    _, out = write_fake_output(tmp_path, images=False)
    (out / "sub-99").mkdir()
    (out / "sub-99" / "sub-99_evaluation.csv").write_bytes(b"")
    assert sorted(aggregate(out)["subject"].unique()) == ["01", "02", "10"]


def test_run_group_level_writes_all_outputs(tmp_path: Path) -> None:
    bids, out = write_fake_output(tmp_path, images=True)
    paths = run_group_level(out, bids_dir=bids)
    assert set(paths) == {"evaluation", "summary", "report"}
    for path in paths.values():
        assert path.is_file() and path.parent == out / "group"
    evaluation = pd.read_csv(paths["evaluation"], dtype={"subject": str})
    assert list(evaluation["subject"]) == ["01", "01", "02", "02", "10", "10"]
    summary = pd.read_csv(paths["summary"])
    assert list(summary["method"]) == ["ants-affine", "ants-syn"]
    assert summary.loc[0, "dice_mean_mean"] == pytest.approx(0.75)
    # Stable formatting: the same inputs give byte-identical CSVs.
    first = paths["summary"].read_bytes(), paths["evaluation"].read_bytes()
    run_group_level(out, bids_dir=bids, max_subjects=0)
    assert (paths["summary"].read_bytes(), paths["evaluation"].read_bytes()) == first
    assert not list((out / "group").glob(".*tmp*"))
