"""One good subject among new kinds of broken input: exit 65, one real reason each."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mmreg.bids_app.cli import main

from reliability_data import write_good_dataset

#: Broken subject -> words its one-line reason must hold.
EXPECTED = {
    "loop": "symbolic link",
    "complex": None,  # the magnitude is used: the subject registers
    "huge": "implausible voxel size",
    "tiny": "implausible voxel size",
    "folder": "is a directory",
    "thin": "2 slices",
    "grid": "is not the grid of its image",
}


def _break(root: Path, subject: str) -> None:
    anat = root / f"sub-{subject}" / "anat"
    moving = anat / f"sub-{subject}_T2w.nii.gz"
    img = nib.load(moving)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if subject == "loop":
        moving.unlink()
        os.symlink(moving.name, moving)
    elif subject == "complex":
        nib.save(nib.Nifti1Image(data.astype(np.complex64) * (1 + 1j), img.affine), moving)
    elif subject in ("huge", "tiny"):
        affine = img.affine.copy()
        affine[:3, :3] *= 1e6 if subject == "huge" else 1e-6
        nib.save(nib.Nifti1Image(data, affine), moving)
    elif subject == "folder":
        moving.unlink()
        moving.mkdir()
    elif subject == "thin":
        nib.save(nib.Nifti1Image(data[:, :, :2].copy(), img.affine), moving)
    elif subject == "grid":
        truth = root / "derivatives" / "ground-truth" / f"sub-{subject}" / "anat"
        truth.mkdir(parents=True)
        labels = (data[::2, ::2, ::2] > np.median(data)).astype(np.int16)
        nib.save(
            nib.Nifti1Image(labels, img.affine), truth / f"sub-{subject}_space-T2w_dseg.nii.gz"
        )
        fixed = np.asarray(nib.load(anat / f"sub-{subject}_T1w.nii.gz").dataobj) > 0.3
        nib.save(
            nib.Nifti1Image(fixed.astype(np.int16), img.affine),
            truth / f"sub-{subject}_space-T1w_dseg.nii.gz",
        )


@pytest.fixture
def broken_dataset(tmp_path: Path) -> Path:
    root = write_good_dataset(tmp_path / "bids", ("good", *EXPECTED))
    truth = root / "derivatives" / "ground-truth"
    truth.mkdir(parents=True)
    shutil.copy(root / "dataset_description.json", truth / "dataset_description.json")
    for subject in EXPECTED:
        _break(root, subject)
    return root


def test_broken_subjects_fail_alone_with_real_reasons(broken_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(broken_dataset), str(out), "participant", "--methods", "sitk-rigid"]
    code = main([*argv, "--worker", "cf", "--nprocs", "2"])
    err = capsys.readouterr().err
    assert code == 65, err
    assert "internal error" not in err and "Traceback" not in err
    rows = pd.concat(
        pd.read_csv(p, dtype=str, keep_default_na=False) for p in out.glob("sub-*/*.csv")
    ).set_index("subject")
    assert rows.loc["good", "status"] == "ok"
    for subject, words in EXPECTED.items():
        status, error = rows.loc[subject, ["status", "error"]]
        if words is None:
            assert status == "ok", (subject, error)
            continue
        assert status == "failed", subject
        assert words in error, (subject, error)
        assert "\n" not in error and "internal error" not in error
    assert "complex" in err  # said once, not silently dropped
