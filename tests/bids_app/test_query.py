"""The BIDS query: images selected by entity filters, paired, ground truth attached."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mmreg.bids_app.config import Config
from mmreg.bids_app.query import (
    InputDirMissingError,
    MissingPair,
    NoMatchError,
    NotBidsError,
    Pair,
    find_pairs,
    load_layout,
    parse_filter,
)
from mmreg.errors import UsageError


def make_dataset(root: Path, files: list[str], *, description: bool = True) -> Path:
    """A tiny BIDS dataset: one random 16^3 image per relative path in ``files``."""
    root.mkdir(parents=True, exist_ok=True)
    if description:
        (root / "dataset_description.json").write_text(
            json.dumps({"Name": "t", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
        )
    rng = np.random.default_rng(0)
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".tsv":
            path.write_text("name\tx\ty\tz\na\t1\t2\t3\n")
        else:
            data = rng.random((16, 16, 16)).astype(np.float32)
            nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return root


def anat(sub: str, name: str, ses: str | None = None) -> str:
    prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
    folder = f"sub-{sub}" + (f"/ses-{ses}" if ses else "")
    return f"{folder}/anat/{prefix}_{name}.nii.gz"


def run_query(root: Path, **kw: object) -> tuple[list[Pair], list[MissingPair]]:
    return find_pairs(Config(bids_dir=root, output_dir=root.parent / "out", **kw))


def test_basic_pairs(tmp_path: Path) -> None:
    # A root path holding "sub-"/"ses-" must not leak into the entities.
    root = make_dataset(
        tmp_path / "sub-99" / "ses-x" / "ds",
        [anat(s, m) for s in ("01", "02") for m in ("T1w", "T2w")],
    )
    pairs, missing = run_query(root)
    assert missing == []
    assert [(p.subject, p.session, p.fixed_label, p.moving_label) for p in pairs] == [
        ("01", None, "T1w", "T2w"),
        ("02", None, "T1w", "T2w"),
    ]
    p = pairs[0]
    assert p.fixed.endswith("sub-01_T1w.nii.gz") and p.moving.endswith("sub-01_T2w.nii.gz")
    assert p.pair_id == "sub-01_from-T2w_to-T1w"
    assert p.fixed_dseg is None and p.moving_landmarks is None
    assert Pair.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_several_moving_filters_and_nonbids_suffixes(tmp_path: Path) -> None:
    root = make_dataset(
        tmp_path / "ds",
        [anat("01", "T1w"), anat("01", "T2w"), anat("01", "US"), "sub-01/dxa/sub-01_DXA.nii"],
    )
    pairs, missing = run_query(
        root, moving=({"suffix": "T2w"}, {"suffix": "US"}, {"suffix": "DXA"})
    )
    assert missing == []
    assert sorted(p.moving_label for p in pairs) == ["DXA", "T2w", "US"]
    us = next(p for p in pairs if p.moving_label == "US")
    assert us.moving.endswith("sub-01_US.nii.gz")


def test_nonbids_fixed_suffix(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [anat("01", "US"), anat("01", "T1w")])
    pairs, _ = run_query(root, fixed={"suffix": "US"}, moving=({"suffix": "T1w"},))
    assert [(p.fixed_label, p.moving_label) for p in pairs] == [("US", "T1w")]


def test_sessions(tmp_path: Path) -> None:
    files = [anat("01", m, s) for s in ("a", "b") for m in ("T1w", "T2w")]
    files += [anat("02", "T1w", "a")]  # sub-02 lacks its T2w
    root = make_dataset(tmp_path / "ds", files)
    pairs, missing = run_query(root)
    assert [(p.subject, p.session) for p in pairs] == [("01", "a"), ("01", "b")]
    assert "ses-b" in pairs[1].fixed and "ses-b" in pairs[1].moving
    assert pairs[1].pair_id == "sub-01_ses-b_from-T2w_to-T1w"
    assert missing == [
        MissingPair(
            "02", "a", "T1w", "T2w", "missing modality: no file matches --moving suffix=T2w"
        )
    ]


def test_cross_session_fixed(tmp_path: Path) -> None:
    files = [anat("01", "T1w", "pre"), anat("01", "T1w", "post")]
    root = make_dataset(tmp_path / "ds", files)
    pairs, missing = run_query(
        root, fixed={"suffix": "T1w", "ses": "pre"}, moving=({"suffix": "T1w", "ses": "post"},)
    )
    assert missing == []
    assert len(pairs) == 1 and pairs[0].session == "post"
    assert "ses-pre" in pairs[0].fixed and "ses-post" in pairs[0].moving


def test_missing_fixed_modality(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [anat("01", "T1w"), anat("01", "T2w"), anat("02", "T2w")])
    pairs, missing = run_query(root)
    assert [p.subject for p in pairs] == ["01"]
    assert [(m.subject, m.reason) for m in missing] == [
        ("02", "missing modality: no file matches --fixed suffix=T1w")
    ]


def test_acq_disambiguates_labels(tmp_path: Path) -> None:
    files = [
        anat("01", "T1w"),
        anat("01", "acq-highres_T2w"),
        anat("01", "acq-lowres_T2w"),
        anat("02", "T1w"),
        anat("02", "acq-highres_T2w"),
    ]
    root = make_dataset(tmp_path / "ds", files)
    pairs, missing = run_query(root)
    assert missing == []
    # Labels are chosen once for the run, so sub-02's highres T2w is labelled like sub-01's.
    assert [(p.subject, p.moving_label) for p in pairs] == [
        ("01", "T2wHighres"),
        ("01", "T2wLowres"),
        ("02", "T2wHighres"),
    ]
    assert [p.fixed_label for p in pairs] == ["T1w"] * 3


def test_runs_and_fixed_choice(tmp_path: Path) -> None:
    files = [
        anat("01", "run-1_T1w"),
        anat("01", "run-2_T1w"),
        anat("01", "run-1_T2w"),
        anat("01", "run-2_T2w"),
    ]
    root = make_dataset(tmp_path / "ds", files)
    pairs, missing = run_query(root)
    assert missing == []
    # Each moving run is paired with the fixed image of the same run.
    assert [(Path(p.fixed).name, Path(p.moving).name) for p in pairs] == [
        ("sub-01_run-1_T1w.nii.gz", "sub-01_run-1_T2w.nii.gz"),
        ("sub-01_run-2_T1w.nii.gz", "sub-01_run-2_T2w.nii.gz"),
    ]
    assert [(p.fixed_label, p.moving_label) for p in pairs] == [
        ("T1wRun1", "T2wRun1"),
        ("T1wRun2", "T2wRun2"),
    ]


def test_ambiguous_fixed_is_a_failed_pair(tmp_path: Path) -> None:
    files = [anat("01", "run-1_T1w"), anat("01", "run-2_T1w"), anat("01", "T2w")]
    root = make_dataset(tmp_path / "ds", files)
    pairs, missing = run_query(root)
    assert pairs == []
    assert len(missing) == 1 and "ambiguous fixed image" in missing[0].reason
    assert "sub-01_run-1_T1w.nii.gz" in missing[0].reason


def test_filter_on_any_entity(tmp_path: Path) -> None:
    files = [
        anat("01", "T1w"),
        anat("01", "ce-gd_T1w"),
        anat("01", "acq-fast_T2w"),
        anat("01", "T2w"),
    ]
    root = make_dataset(tmp_path / "ds", files)
    pairs, _ = run_query(
        root, fixed={"suffix": "T1w", "ce": "gd"}, moving=({"acq": "fast"},)
    )  # suffix stays T2w
    assert len(pairs) == 1
    assert Path(pairs[0].fixed).name == "sub-01_ce-gd_T1w.nii.gz"
    assert Path(pairs[0].moving).name == "sub-01_acq-fast_T2w.nii.gz"


def test_ignores_derivatives_and_stray_files(tmp_path: Path) -> None:
    files = [
        anat("01", "T1w"),
        anat("01", "T2w"),
        "derivatives/mmreg/sub-01/anat/sub-01_space-T1w_desc-antsAffine_T2w.nii.gz",
        "sourcedata/sub-01_T2w.nii.gz",
        "extra/sub-01_T2w.nii.gz",
    ]
    root = make_dataset(tmp_path / "ds", files)
    (root / "sub-01" / "anat" / "sub-01_T2w.json").write_text("{}")
    pairs, missing = run_query(root)
    assert len(pairs) == 1 and not missing
    assert pairs[0].moving == str(root.resolve() / anat("01", "T2w"))


def test_participant_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = [anat(s, m) for s in ("01", "02", "03") for m in ("T1w", "T2w")]
    root = make_dataset(tmp_path / "ds", files)
    pairs, _ = run_query(root, participant_labels=("02", "sub-03"))
    assert [p.subject for p in pairs] == ["02", "03"]
    pairs, _ = run_query(root, participant_labels=("03", "99"))
    assert [p.subject for p in pairs] == ["03"]
    assert "99" in caplog.text
    with pytest.raises(UsageError, match="none of 98, 99"):
        run_query(root, participant_labels=("98", "99"))
    with pytest.raises(UsageError):
        run_query(root, participant_labels=("../01",))


def test_ground_truth_lookup(tmp_path: Path) -> None:
    files = [
        anat("01", "T1w", "a"),
        anat("01", "T2w", "a"),
        anat("02", "T1w", "a"),
        anat("02", "T2w", "a"),
    ]
    root = make_dataset(tmp_path / "ds", files)
    gt = make_dataset(
        root / "derivatives" / "ground-truth",
        [
            "sub-01/ses-a/anat/sub-01_ses-a_space-T1w_dseg.nii.gz",
            "sub-01/ses-a/anat/sub-01_ses-a_space-T2w_dseg.nii.gz",
            "sub-01/ses-a/anat/sub-01_ses-a_space-T1w_desc-landmarks.tsv",
            "sub-01_ses-a_space-T2w_desc-landmarks.tsv",
        ],  # anywhere below the folder
    )
    pairs, _ = run_query(root, ground_truth=gt)
    p1, p2 = pairs
    assert p1.fixed_dseg.endswith("sub-01_ses-a_space-T1w_dseg.nii.gz")
    assert p1.moving_dseg.endswith("sub-01_ses-a_space-T2w_dseg.nii.gz")
    assert p1.fixed_landmarks.endswith("sub-01_ses-a_space-T1w_desc-landmarks.tsv")
    assert p1.moving_landmarks == str(gt.resolve() / "sub-01_ses-a_space-T2w_desc-landmarks.tsv")
    assert (p2.fixed_dseg, p2.moving_dseg, p2.fixed_landmarks, p2.moving_landmarks) == (
        None,
        None,
        None,
        None,
    )


def test_ground_truth_label_then_suffix(tmp_path: Path) -> None:
    files = [anat("01", "T1w"), anat("01", "acq-a_T2w"), anat("01", "acq-b_T2w")]
    root = make_dataset(tmp_path / "ds", files)
    gt = make_dataset(
        tmp_path / "gt", ["sub-01_space-T2wA_dseg.nii.gz", "sub-01_space-T2w_dseg.nii.gz"]
    )
    pairs, _ = run_query(root, ground_truth=gt)
    assert [Path(p.moving_dseg).name for p in pairs] == [
        "sub-01_space-T2wA_dseg.nii.gz",
        "sub-01_space-T2w_dseg.nii.gz",
    ]


def test_exit_code_errors(tmp_path: Path) -> None:
    with pytest.raises(InputDirMissingError):
        run_query(tmp_path / "nothing")
    plain = make_dataset(tmp_path / "plain", [anat("01", "T1w")], description=False)
    with pytest.raises(NotBidsError):
        run_query(plain)
    root = make_dataset(tmp_path / "ds", [anat("01", "T1w"), anat("01", "T2w")])
    with pytest.raises(NoMatchError, match=r"suffix=FLAIR.*suffixes present: T1w, T2w"):
        run_query(root, moving=({"suffix": "FLAIR"},))
    with pytest.raises(NoMatchError, match="--fixed"):
        run_query(root, fixed={"suffix": "T1w", "acq": "nope"})
    with pytest.raises(InputDirMissingError):
        run_query(root, ground_truth=tmp_path / "no-gt")
    empty = make_dataset(tmp_path / "empty", [])
    with pytest.raises(NotBidsError):
        run_query(empty)


def test_parse_filter() -> None:
    assert parse_filter(["suffix=T2w", "acq=highres"]) == {"suffix": "T2w", "acq": "highres"}
    assert parse_filter(["suffix=T2w,run=1"]) == {"suffix": "T2w", "run": "1"}
    assert parse_filter(["acquisition=x", "acq=x"]) == {"acquisition": "x"}
    for bad in (["suffix"], ["bogus=1"], ["sub=01"], ["suffix=../x"], ["acq=a", "acq=b"]):
        with pytest.raises(UsageError):
            parse_filter(bad)


def test_max_pairs(tmp_path: Path) -> None:
    root = make_dataset(
        tmp_path / "ds", [anat(s, m) for s in ("01", "02") for m in ("T1w", "T2w")]
    )
    pairs, _ = run_query(root, max_pairs=1)
    assert [p.subject for p in pairs] == ["01"]


def test_index_reused_and_refreshed(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [anat("01", "T1w"), anat("01", "T2w")])
    db = tmp_path / "work" / "bids_db"
    layout = load_layout(root, db)
    assert len(layout.get(suffix="T2w")) == 1
    assert len(list(db.iterdir())) == 1
    assert len(load_layout(root, db).get(suffix="T2w")) == 1
    assert len(list(db.iterdir())) == 1  # reused, not rebuilt
    make_dataset(root, [anat("02", "T1w"), anat("02", "T2w")])
    assert len(load_layout(root, db).get(suffix="T2w")) == 2  # new subject seen
    pairs, _ = find_pairs(
        Config(bids_dir=root, output_dir=tmp_path / "out", work_dir=tmp_path / "work")
    )
    assert len(pairs) == 2


def test_participant_labels_from_a_file(tmp_path: Path) -> None:
    from mmreg.bids_app.query import normalize_participant_labels

    listing = tmp_path / "subjects.txt"
    listing.write_text("# cohort A\nsub-01\n02, 03  # trailing comment\n\n04\n")
    assert normalize_participant_labels([str(listing), "05", "01"]) == (
        "01",
        "02",
        "03",
        "04",
        "05",
    )
    tsv = tmp_path / "participants.tsv"
    tsv.write_text("participant_id\tage\nsub-07\t30\nsub-08\t41\n")
    assert normalize_participant_labels([str(tsv)]) == ("07", "08")
    # A file named like a label needs '@'; without it the value is the label itself.
    named = tmp_path / "cohort"
    named.write_text("09\n")
    assert normalize_participant_labels([f"@{named}"]) == ("09",)


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "lists no participant"), ("01\n../etc\n", "invalid participant label '../etc'")],
)
def test_bad_label_files(tmp_path: Path, content: str, message: str) -> None:
    from mmreg.bids_app.query import normalize_participant_labels

    listing = tmp_path / "subjects.txt"
    listing.write_text(content)
    with pytest.raises(UsageError, match=message):
        normalize_participant_labels([str(listing)])
    with pytest.raises(UsageError, match="cannot read"):
        normalize_participant_labels([f"@{tmp_path / 'missing.txt'}"])
