"""Real brains the project never generated, under a non-BIDS suffix (slow, shared data)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmreg.bids_app.cli import main

from factories import random_pose, write_dataset_description, write_posed_remap_subject

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]


def test_ants_affine_on_ixi_brain_as_us_suffix(shared_data, tmp_path):
    data = shared_data / "ixi-t1-dlmuse"
    t1 = sorted((data / "t1").glob("*.nii.gz"))[4]
    seg = data / "seg" / t1.name.replace("_T1.nii.gz", "_T1_DLMUSE.nii.gz")
    root = tmp_path / "bids"
    write_dataset_description(root)
    pose = random_pose(np.random.default_rng(3), angle_deg=15.0, shift_mm=8.0)
    write_posed_remap_subject(
        root, "ixi", image=t1, labels=seg, pose=pose, fixed_suffix="T1w", moving_suffix="US"
    )
    out = tmp_path / "out"
    code = main(
        [
            str(root),
            str(out),
            "participant",
            "--fixed",
            "suffix=T1w",
            "--moving",
            "suffix=US",
            "--methods",
            "ants-affine",
            "--nprocs",
            "1",
        ]
    )
    assert code == 0
    row = pd.read_csv(out / "sub-ixi" / "sub-ixi_evaluation.csv").iloc[0]
    assert row["status"] == "ok"
    assert row["initial_dice_mean"] < 0.5
    assert row["dice_mean"] >= 0.9
    assert row["tre_mean_mm"] < 1.0 < row["initial_tre_mean_mm"]
    assert (out / "sub-ixi" / "anat" / "sub-ixi_space-T1w_desc-antsAffine_US.nii.gz").exists()
