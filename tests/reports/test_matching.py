"""Group-level subject matching: hand-computed ranks and swaps, scan discovery, files, CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mmreg.bids_app import cli, run
from mmreg.errors import InputError
from mmreg.imaging.image import load_image
from mmreg.imaging.slice_synthesis import synthesize_coronal_slice
from mmreg.methods.contrastive.data import ChannelImage
from mmreg.methods.contrastive.matching import MATCH_COLUMNS, SUMMARY_COLUMNS
from mmreg.reports import matching as group_matching
from mmreg.reports.group import run_group_level
from mmreg.reports.matching import (
    SWAP_SUMMARY_COLUMNS,
    MatchingResult,
    ScanPair,
    find_scan_pairs,
    matching_section,
    run_matching,
    summarise_matching,
    swap_detection_curve,
    write_matching,
)

# Made-up volumes have no spine: the slicer says so and takes a flat coronal plane.
pytestmark = pytest.mark.filterwarnings("ignore:no spine found")

#: DXA (rows) x MR (columns) of subjects a, b, c: c's own pair scores below b's.
SIMILARITY = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.7], [0.1, 0.6, 0.5]])


def test_ranks_recall_and_swaps_by_hand() -> None:
    table, summary, roc, recall, threshold = summarise_matching(SIMILARITY, ["a", "b", "c"])
    assert list(table.columns) == list(MATCH_COLUMNS)
    # 6 different-subject pairs are too few for a within-cohort threshold at 4 %:
    # the best-match rule decides.
    assert threshold is None and np.isnan(summary["swap_threshold"].iloc[0])
    # DXA queries are rows, MR queries columns; c ranks its own scan second both ways.
    assert table["query_modality"].tolist() == ["dxa"] * 3 + ["mr"] * 3
    assert table["partner_rank"].tolist() == [1, 1, 2, 1, 1, 2]
    assert table["partner_similarity"].tolist() == pytest.approx([0.9, 0.8, 0.5] * 2)
    assert table["best_subject"].tolist() == ["a", "b", "b", "a", "b", "b"]
    assert table["swap_suspected"].tolist() == [False, False, True, False, False, True]
    row = summary.iloc[0]
    assert list(summary.columns) == [*SUMMARY_COLUMNS, *SWAP_SUMMARY_COLUMNS]
    assert row["n_swaps_suspected"] == 1
    assert row["n_subjects"] == 3
    assert row["recall_at_1"] == pytest.approx(4 / 6)
    assert (row["recall_at_5"], row["recall_at_10"]) == (1.0, 1.0)
    assert row["mean_rank"] == pytest.approx(8 / 6)
    # Genuine 0.9, 0.8, 0.5 against impostors 0.2, 0.1, 0.3, 0.7, 0.1, 0.6: 16 of 18 ordered.
    assert row["roc_auc"] == pytest.approx(16 / 18)
    # At threshold 0.6 one true pair is rejected (1/3) and two impostors accepted (2/6).
    assert row["eer"] == pytest.approx(1 / 3)
    assert row["tpr_at_fpr_1pct"] == pytest.approx(2 / 3)
    assert recall["recall"].tolist() == pytest.approx([4 / 6, 1.0, 1.0])
    assert roc["tpr"].iloc[-1] == 1.0 and roc["fpr"].iloc[-1] == 1.0


def test_within_cohort_swap_threshold(tmp_path: Path) -> None:
    # 10 subjects: different-subject scores 0.00 .. 0.89 (90 of them), true pairs 0.95,
    # except subject 3 (0.5: no better than half the unrelated pairs) and subject 7 (0.88,
    # weak but above the top 4 % of the null).
    s = np.zeros((10, 10))
    s[~np.eye(10, dtype=bool)] = np.arange(90) / 100
    np.fill_diagonal(s, 0.95)
    s[3, 3], s[7, 7] = 0.5, 0.88
    keys = [f"s{k}" for k in range(10)]
    table, summary, _, _, threshold = summarise_matching(s, keys, alpha=0.04)
    # 0.96 quantile of 90 scores ("higher"): 0.86.
    assert threshold == pytest.approx(0.86)
    flagged = sorted(set(table.loc[table["swap_suspected"], "query_subject"]))
    assert flagged == ["s3"]
    assert summary["n_swaps_suspected"].iloc[0] == 1
    assert summary["swap_alpha"].iloc[0] == 0.04
    # The files and the report section, with the injected-swap curve.
    curve = swap_detection_curve(s, keys)
    assert curve["caught"].is_monotonic_decreasing
    result = MatchingResult(
        "DXA",
        "T1w",
        keys,
        s,
        table,
        summary,
        *summarise_matching(s, keys)[2:4],
        swap_threshold=threshold,
        swap_curve=curve,
    )
    paths = write_matching(result, tmp_path)
    written = pd.read_csv(paths["swap_detection"])
    assert list(written.columns) == [
        "swaps_per_trial",
        "alpha",
        "threshold",
        "caught",
        "false_alarms",
    ]
    section = matching_section(result)
    assert "Injected swaps" in section and "data:image/png" in section
    assert "below the top 4 % of this cohort's 90 pairs" in section


# --- scans and channels ---------------------------------------------------------------------


def _nifti(path: Path, shape: tuple[int, ...]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def _rows(bids: Path, subjects: list[str], *, fixed_2d: bool = True) -> pd.DataFrame:
    rows = []
    for s in subjects:
        anat = bids / f"sub-{s}" / "anat"
        dxa = _nifti(anat / f"sub-{s}_rec-bone_DXA.nii.gz", (16, 20) if fixed_2d else (8, 8, 8))
        _nifti(anat / f"sub-{s}_rec-tissue_DXA.nii.gz", (16, 20))
        mr = _nifti(anat / f"sub-{s}_acq-dixon_rec-fat_T1w.nii.gz", (8, 8, 8))
        for method in ("identity", "sitk-rigid"):
            rows.append(
                {
                    "subject": s,
                    "session": "",
                    "fixed": "DXA",
                    "moving": "T1w",
                    "method": method,
                    "status": "ok",
                    "fixed_image": str(dxa),
                    "moving_image": str(mr),
                }
            )
    return pd.DataFrame(rows)


def test_find_scan_pairs_one_per_subject(tmp_path: Path) -> None:
    df = _rows(tmp_path / "bids", ["02", "01"])
    found = find_scan_pairs(df)
    assert (found.fixed, found.moving, found.missing) == ("DXA", "T1w", {})
    scans = found.scans
    assert [s.key for s in scans] == ["01", "02"]
    assert scans[0].planar.name == "sub-01_rec-bone_DXA.nii.gz"
    assert scans[0].volume.name == "sub-01_acq-dixon_rec-fat_T1w.nii.gz"
    assert scans[0].planar_is_fixed


def test_find_scan_pairs_ignores_3d_pairs_and_missing_paths(tmp_path: Path) -> None:
    assert find_scan_pairs(_rows(tmp_path / "bids", ["01", "02"], fixed_2d=False)) is None
    bare = _rows(tmp_path / "b2", ["01"]).drop(columns=["fixed_image", "moving_image"])
    assert find_scan_pairs(bare) is None  # no paths and no BIDS folder to look in
    assert find_scan_pairs(pd.DataFrame()) is None


def test_find_scan_pairs_keys_sessions(tmp_path: Path) -> None:
    df = _rows(tmp_path / "bids", ["01"])
    df = pd.concat([df, df.assign(session="2")], ignore_index=True)
    assert [s.key for s in find_scan_pairs(df).scans] == ["01", "01_ses-2"]


def test_find_scan_pairs_names_subjects_without_images(tmp_path: Path) -> None:
    df = _rows(tmp_path / "bids", ["01", "02"])
    Path(df.loc[df["subject"] == "02", "moving_image"].iloc[0]).unlink()
    found = find_scan_pairs(df)
    assert [s.key for s in found.scans] == ["01"]
    assert found.missing == {"02": "T1w image not found"}


def test_scans_load_as_the_participant_level_sees_them(tmp_path: Path) -> None:
    df = _rows(tmp_path / "bids", ["01"])
    anat = tmp_path / "bids" / "sub-01" / "anat"
    _nifti(anat / "sub-01_acq-dixon_rec-water_T1w.nii.gz", (8, 8, 8))
    [scan] = find_scan_pairs(df).scans
    dxa, mr, derived = group_matching._load_scan(scan, 2, 2)
    assert not derived  # no derivatives given: synthesised
    # DXA: bone + tissue on the DXA grid; MR: the fat and water mid-coronal slices.
    assert dxa.channels == 2 and dxa.shape == (16, 20)
    assert mr.channels == 2 and mr.data.min() >= 0.0 and mr.data.max() <= 1.0
    (anat / "sub-01_rec-tissue_DXA.nii.gz").unlink()
    with pytest.raises(InputError, match="DXA encoder reads 2 channel"):
        group_matching._load_scan(scan, 2, 2)


# --- matching with a tiny (untrained) model --------------------------------------------------


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    from mmreg.methods.contrastive.model import ContrastiveConfig, DualEncoder
    from mmreg.methods.contrastive.train import save_contrastive

    config = ContrastiveConfig(widths=(4, 8), embed_dim=8, shared_levels=1, spacing_mm=8.8)
    path = tmp_path / "tiny.pt"
    save_contrastive(path, DualEncoder(config).eval(), {"note": "untrained"})
    return path


@pytest.fixture
def fake_scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace image loading: made-up channel images; sub-03's MR is 'unreadable'."""
    calls: list[str] = []
    affine = np.diag([2.2, 2.2, 1.0, 1.0])

    def load(scan: ScanPair, dxa_channels: int, mr_channels: int, output_dir: Path | None):
        calls.append(scan.key)
        if scan.key == "03":
            raise ValueError("corrupt or truncated file (EOFError)")
        rng = np.random.default_rng(int(scan.key))
        dxa = ChannelImage(rng.random((dxa_channels, 40, 60)), affine)
        mr = ChannelImage(rng.random((mr_channels, 30, 60)), affine)
        return dxa, mr, False

    monkeypatch.setattr(group_matching, "_load_scan", load)
    return calls


def test_run_matching_leaves_unreadable_subjects_out(
    tmp_path: Path, tiny_model: Path, fake_scans: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    df = _rows(tmp_path / "bids", ["01", "02", "03"])
    with caplog.at_level(logging.WARNING, logger="mmreg.group"):
        result = run_matching(df, model=tiny_model)
    assert result is not None
    assert fake_scans == ["01", "02", "03"]
    assert result.subjects == ["01", "02"]
    assert "03" in result.left_out and "sub-03 left out" in caplog.text
    assert result.similarity.shape == (2, 2)
    assert (result.dxa_label, result.mr_label) == ("DXA", "T1w")
    assert len(result.table) == 4 and result.summary["n_subjects"].item() == 2


def test_run_matching_without_weights_is_skipped(
    tmp_path: Path, fake_scans: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    df = _rows(tmp_path / "bids", ["01", "02"])
    with caplog.at_level(logging.INFO, logger="mmreg.group"):
        assert run_matching(df, model=tmp_path / "missing.pt") is None
    assert "subject matching skipped" in caplog.text and "--model contrastive=PATH" in caplog.text
    assert fake_scans == []  # nothing was read


def _write_participant_csvs(out: Path, df: pd.DataFrame) -> None:
    for subject, rows in df.groupby("subject"):
        (out / f"sub-{subject}").mkdir(parents=True, exist_ok=True)
        rows.to_csv(out / f"sub-{subject}" / f"sub-{subject}_evaluation.csv", index=False)


def test_group_level_writes_matching_files_and_section(
    tmp_path: Path, tiny_model: Path, fake_scans: list[str]
) -> None:
    out = tmp_path / "out"
    _write_participant_csvs(out, _rows(tmp_path / "bids", ["01", "02", "03"]))
    paths = run_group_level(out, models={"contrastive": str(tiny_model)})
    table = pd.read_csv(paths["matching"], dtype={"query_subject": str, "best_subject": str})
    summary = pd.read_csv(paths["matching_summary"])
    assert list(table.columns) == list(MATCH_COLUMNS)
    assert list(summary.columns) == [*SUMMARY_COLUMNS, *SWAP_SUMMARY_COLUMNS]
    assert set(table["query_subject"]) == {"01", "02"}
    assert "swap_detection" not in paths  # 2 subjects: no within-cohort threshold
    html = paths["report"].read_text(encoding="utf-8")
    assert "Subject matching and swap detection" in html
    assert "Suspected swaps" in html and "sub-03" in html  # the left-out subject is named
    assert not list((out / "group").glob(".*"))  # no temporaries left


def test_group_level_survives_a_matching_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    _write_participant_csvs(out, _rows(tmp_path / "bids", ["01", "02"]))

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(group_matching, "run_matching", boom)
    with caplog.at_level(logging.WARNING, logger="mmreg.group"):
        paths = run_group_level(out)
    assert "matching" not in paths and paths["report"].is_file()
    assert "subject matching failed: out of memory" in caplog.text
    # Turned off, it is not even tried.
    caplog.clear()
    assert "matching" not in run_group_level(out, matching=False)
    assert "subject matching" not in caplog.text


# --- command line ------------------------------------------------------------------------------


def test_cli_group_options(tmp_path: Path, tiny_model: Path, monkeypatch) -> None:
    bids = tmp_path / "bids"
    _nifti(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz", (8, 8, 8))
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.10.0"})
    )
    seen = []
    monkeypatch.setattr(run, "run_group", lambda config: seen.append(config) or 0)
    out = str(tmp_path / "out")
    # contrastive weights are taken at the group level whatever --methods says.
    assert cli.main([str(bids), out, "group", "--model", f"contrastive={tiny_model}"]) == 0
    assert seen[-1].models == {"contrastive": str(tiny_model.resolve())}
    assert seen[-1].matching is True
    assert cli.main([str(bids), out, "group", "--no-matching"]) == 0
    assert seen[-1].matching is False
    # The participant level still refuses weights no selected method reads.
    assert cli.main([str(bids), out, "participant", "--model", f"contrastive={tiny_model}"]) == 64


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_wholebody_demo_end_to_end(tmp_path: Path) -> None:
    """3 phantom subjects, a contrastive model trained 1 epoch: table1 and matching written;
    the group level reads the participant level's mid-coronal slices."""
    from mmreg.methods.contrastive.train import (
        ContrastiveTrainSettings,
        PairImages,
        fit_contrastive,
        save_contrastive,
    )

    rng = np.random.default_rng(0)
    affine = np.diag([4.4, 4.4, 1.0, 1.0])
    pairs = [
        PairImages(
            str(k),
            ChannelImage(rng.random((2, 40, 60)), affine),
            ChannelImage(rng.random((2, 30, 60)), affine),
        )
        for k in range(3)
    ]
    settings = ContrastiveTrainSettings(
        epochs=1,
        batch_size=2,
        widths=(4, 8),
        embed_dim=8,
        shared_levels=1,
        spacing_mm=8.8,
        val_fraction=0.0,
    )
    model, summary = fit_contrastive(pairs, settings, progress=False)
    weights = tmp_path / "tiny.pt"
    save_contrastive(weights, model, summary)

    argv = ["demo", "--dataset", "wholebody", "--subjects", "3", "--out", str(tmp_path / "d")]
    argv += ["--methods", "identity", "--model", f"contrastive={weights}", "--worker", "debug"]
    assert cli.main(argv) == 0
    group = tmp_path / "d" / "bids" / "derivatives" / "mmreg" / "group"
    evaluation = pd.read_csv(group / "evaluation.csv")
    for name in ("femoral_head_left", "s1", "humeral_head_right"):
        assert evaluation[f"tre_{name}_mm"].notna().all()
        assert evaluation[f"initial_tre_{name}_mm"].notna().all()
    table = pd.read_csv(group / "table1.csv")
    assert list(table["group"].drop_duplicates()) == ["HJ", "S1", "SJ", "all"]
    assert table.set_index(["method", "group"]).loc[("identity", "all"), "n_points"] == 15
    matches = pd.read_csv(group / "matching.csv", dtype={"query_subject": str})
    assert sorted(matches["query_subject"]) == ["01", "01", "02", "02", "03", "03"]
    summary_row = pd.read_csv(group / "matching_summary.csv")
    assert list(summary_row.columns) == [*SUMMARY_COLUMNS, *SWAP_SUMMARY_COLUMNS]
    assert summary_row["n_subjects"].item() == 3
    # The participant level wrote each subject's mid-coronal slice (fat and water), the
    # same as synthesising it from the raw files, and the group level read them.
    bids = tmp_path / "d" / "bids"
    anat = bids / "derivatives" / "mmreg" / "sub-01" / "anat"
    fat = anat / "sub-01_acq-dixon_rec-fat_desc-midcoronal_T1w.nii.gz"
    water = anat / "sub-01_acq-dixon_rec-water_desc-midcoronal_T1w.nii.gz"
    raw = [
        bids / "sub-01" / "anat" / f"sub-01_acq-dixon_rec-{c}_T1w.nii.gz" for c in ("fat", "water")
    ]
    again = synthesize_coronal_slice([load_image(p, ndim=3) for p in raw])
    for derived, image in zip((fat, water), again.images, strict=True):
        np.testing.assert_allclose(load_image(derived).data, image.data, rtol=1e-6)
    meta = json.loads(fat.with_name(fat.name.replace(".nii.gz", ".json")).read_text())
    assert meta["FoundSpine"] is True and len(meta["SurfaceYmm"]) == image.shape[1]
    logs = (bids / "derivatives" / "mmreg" / "logs").glob("*/mmreg.log")
    assert any("3 slices read from the participant level" in f.read_text() for f in logs)
    assert 0.0 <= summary_row["roc_auc"].item() <= 1.0
    html = (group / "report.html").read_text(encoding="utf-8")
    assert "Keypoint transfer error (cm" in html and "Subject matching" in html
