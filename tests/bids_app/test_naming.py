"""BIDS-safe names: method camelCase, label checks, contract output names."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmreg.bids_app import naming
from mmreg.errors import UsageError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ants-affine", "antsAffine"),
        ("keymorph-affine+ants-syn", "keymorphAffineAntsSyn"),
        ("sitk-rigid", "sitkRigid"),
        ("identity", "identity"),
        ("ants_syn.v2", "antsSynV2"),
    ],
)
def test_camel_method(name: str, expected: str) -> None:
    assert naming.camel_method(name) == expected


def test_camel_method_rejects_empty() -> None:
    with pytest.raises(UsageError):
        naming.camel_method("+-")


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "sub-01", "a b", "x.y", "é"])
def test_sanitize_label_rejects(bad: str) -> None:
    with pytest.raises(UsageError):
        naming.sanitize_label(bad)


def test_sanitize_label_accepts() -> None:
    assert naming.sanitize_label("01") == "01"
    assert naming.sanitize_label(2) == "2"


def test_modality_label() -> None:
    assert naming.modality_label("T2w") == "T2w"
    assert naming.modality_label("T2w", "highres") == "T2wHighres"
    assert naming.modality_label("T2w", run=2) == "T2wRun2"
    assert naming.modality_label("T1w", "mprage", ce="gd") == "T1wMprageCeGd"
    assert naming.modality_label("US", None, run=None) == "US"
    with pytest.raises(ValueError, match="label entity"):
        naming.modality_label("T1w", ses="a")


def test_output_names() -> None:
    assert (
        naming.warped_name("01", None, "T1w", "T2w", "ants-affine")
        == "sub-01_space-T1w_desc-antsAffine_T2w.nii.gz"
    )
    assert (
        naming.warped_name("01", "x", "T1w", "T2w", "keymorph-affine+ants-syn")
        == "sub-01_ses-x_space-T1w_desc-keymorphAffineAntsSyn_T2w.nii.gz"
    )
    assert (
        naming.xfm_name("01", None, "T1w", "T2w", "ants-affine", "txt")
        == "sub-01_from-T2w_to-T1w_desc-antsAffine_mode-image_xfm.txt"
    )
    assert naming.xfm_name("01", "x", "T1w", "US", "ants-syn", ".h5").endswith(
        "sub-01_ses-x_from-US_to-T1w_desc-antsSyn_mode-image_xfm.h5"
    )
    assert naming.subject_dir("01") == Path("sub-01/anat")
    assert naming.subject_dir("01", "x") == Path("sub-01/ses-x/anat")
    assert naming.pair_id("01", "x", "T1w", "T2w") == "sub-01_ses-x_from-T2w_to-T1w"


def test_output_names_reject_traversal() -> None:
    with pytest.raises(UsageError):
        naming.warped_name("../01", None, "T1w", "T2w", "ants-affine")
    with pytest.raises(UsageError):
        naming.subject_dir("01", "../../etc")
    with pytest.raises(ValueError):
        naming.xfm_name("01", None, "T1w", "T2w", "ants-affine", "exe")


def test_bids_uri(tmp_path: Path) -> None:
    f = tmp_path / "ds" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    assert naming.bids_uri(f, tmp_path / "ds") == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    assert naming.bids_uri(f, tmp_path / "other").startswith("file://")
    assert naming.bids_uri(f).startswith("file://")
