"""One good subject among eleven kinds of broken input: exit 65, one-line reasons, no loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from mmreg.bids_app.cli import main
from mmreg.imaging.image import Image
from mmreg.imaging.transform import Transform

from factories import (
    BROKEN_KINDS,
    second_contrast,
    smooth_head,
    write_broken_subject,
    write_dataset_description,
    write_pair,
)

EXPECTED_REASON = {
    "empty": "empty file",
    "truncated": "corrupt or truncated",
    "notnifti": "not a NIfTI",
    "nan": "NaN/Inf",
    "inf": "NaN/Inf",
    "allzero": "constant",
    "fourd": "4D image",
    "singular": "singular",
    "missing": "missing modality",
    "toosmall": "too small",
    "dimmismatch": "fixed image is 3D but moving image is 2D",
}


@pytest.fixture(scope="module")
def broken_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("broken") / "bids"
    write_dataset_description(root)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -45
    head = smooth_head((30, 32, 28), seed=3)
    fixed = Image(head, affine)
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("xyz", [6, -4, 5], degrees=True).as_matrix()
    pose[:3, 3] = [3, -2, 2]
    moving = Transform.from_affine(np.linalg.inv(pose)).apply(
        Image(second_contrast(head), affine), fixed.grid
    )
    good = write_pair(root, "good", fixed=fixed, moving=moving)
    for kind in BROKEN_KINDS:
        write_broken_subject(root, kind, kind, good)
    return root


def test_broken_subjects_fail_alone(broken_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            str(broken_dataset),
            str(out),
            "participant",
            "--methods",
            "sitk-rigid",
            "--nprocs",
            "2",
            "--worker",
            "cf",
        ]
    )
    captured = capsys.readouterr()
    assert code == 65
    assert "Traceback" not in captured.err + captured.out

    good = pd.read_csv(out / "sub-good" / "sub-good_evaluation.csv", dtype=str)
    assert good["status"].tolist() == ["ok"]
    assert (out / "sub-good" / "anat" / "sub-good_space-T1w_desc-sitkRigid_T2w.nii.gz").exists()

    for kind, reason in EXPECTED_REASON.items():
        rows = pd.read_csv(
            out / f"sub-{kind}" / f"sub-{kind}_evaluation.csv", dtype=str, keep_default_na=False
        )
        assert rows["status"].tolist() == ["failed"], kind
        error = rows["error"].iloc[0]
        assert reason in error, (kind, error)
        assert "\n" not in error
        assert not (out / f"sub-{kind}" / "anat").exists(), kind
        # the reason reaches the terminal too, on one line
        assert f"sub-{kind} " in captured.err

    # nothing half-written anywhere in the derivatives
    leftovers = [p for p in out.rglob("*.tmp*") if "work" not in p.parts]
    assert leftovers == []
    log = next((out / "logs").glob("*/mmreg.log")).read_text()
    assert "Traceback" in log
