"""The derivatives writer: contract names, sidecars and keypoint tables."""

from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pandas as pd

from mmreg.bids_app import derivatives
from mmreg.imaging.image import Image, save_image
from mmreg.imaging.transform import Transform
from mmreg.records import PairRecord, ResultRow


def _row(tmp_path, extras, **changes):
    warped = save_image(Image(np.ones((4, 4, 4), np.float32), np.eye(4)), tmp_path / "w.nii.gz")
    xfm = Transform.identity().write(tmp_path / "x.txt")
    row = ResultRow(
        PAIR.pair_id,
        "keymorph-affine+ants-affine",
        "ok",
        warped=str(warped),
        transform=str(xfm),
        extras=extras,
    )
    return replace(row, **changes)


PAIR = PairRecord(
    subject="01",
    session=None,
    fixed="/data/sub-01/anat/sub-01_T1w.nii.gz",
    moving="/data/sub-01/anat/sub-01_T2w.nii.gz",
    fixed_label="T1w",
    moving_label="T2w",
    pair_id="sub-01_from-T2w_to-T1w",
)


def test_keypoints_of_a_chain_step_are_written_in_both_spaces(tmp_path):
    fixed_pts = [[1.0, 2.0, 3.0], [-4.5, 0.25, 9.0]]
    moving_pts = [[1.5, 2.5, 3.5], [-4.0, 0.75, 9.5]]
    extras = {
        "steps": [
            {
                "method": "keymorph-affine",
                "extras": {"keypoints_fixed": fixed_pts, "keypoints_moving": moving_pts},
            },
            {"method": "ants-affine", "extras": {}},
        ]
    }
    out = tmp_path / "out"
    row = derivatives.write_pair_outputs(out, PAIR, _row(tmp_path, extras))
    assert row["warped"].endswith("sub-01_space-T1w_desc-keymorphAffineAntsAffine_T2w.nii.gz")
    anat = out / "sub-01" / "anat"
    stem = "sub-01_from-T2w_to-T1w_space-{}_desc-keymorphAffineAntsAffine_keypoints"
    fixed_tsv = pd.read_csv(anat / (stem.format("T1w") + ".tsv"), sep="\t")
    moving_tsv = pd.read_csv(anat / (stem.format("T2w") + ".tsv"), sep="\t")
    assert list(fixed_tsv.columns) == ["name", "x", "y", "z"]
    np.testing.assert_allclose(fixed_tsv[["x", "y", "z"]].to_numpy(), fixed_pts)
    np.testing.assert_allclose(moving_tsv[["x", "y", "z"]].to_numpy(), moving_pts)
    assert list(moving_tsv["name"]) == ["kp000", "kp001"]
    meta = json.loads((anat / (stem.format("T2w") + ".json")).read_text())
    assert meta["SpatialReference"].endswith("sub-01_T2w.nii.gz")


def test_no_keypoints_no_table(tmp_path):
    out = tmp_path / "out"
    derivatives.write_pair_outputs(out, PAIR, _row(tmp_path, {"metric": 0.5}))
    assert not list(out.rglob("*_keypoints.tsv"))


def test_midcoronal_slice_is_written_once_per_channel(tmp_path):
    pair = replace(
        PAIR,
        fixed="/data/sub-01/anat/sub-01_rec-bone_DXA.nii.gz",
        moving="/data/sub-01/anat/sub-01_acq-dixon_rec-fat_T1w.nii.gz",
        fixed_label="DXA",
    )
    fat = save_image(Image(np.ones((5, 7), np.float32), np.eye(4)), tmp_path / "m0.nii.gz")
    water = save_image(Image(np.zeros((5, 7), np.float32), np.eye(4)), tmp_path / "m1.nii.gz")
    surface = tmp_path / "path.json"
    surface.write_text(json.dumps({"z_mm": [0.0] * 7, "y_mm": [1.5] * 7, "found_spine": True}))
    record = {
        "side": "moving",
        "channels": [
            {"source": pair.moving, "file": str(fat)},
            {"source": pair.moving.replace("fat", "water"), "file": str(water)},
        ],
        "path": str(surface),
    }
    out = tmp_path / "out"
    row = _row(tmp_path, {}, midcoronal=record)
    derivatives.write_pair_outputs(out, pair, row)
    anat = out / "sub-01" / "anat"
    written = anat / "sub-01_acq-dixon_rec-water_desc-midcoronal_T1w.nii.gz"
    assert (
        written.is_file()
        and (anat / "sub-01_acq-dixon_rec-fat_desc-midcoronal_T1w.nii.gz").is_file()
    )
    meta = json.loads(written.with_name(written.name.replace(".nii.gz", ".json")).read_text())
    assert meta["FoundSpine"] is True and meta["SurfaceYmm"] == [1.5] * 7
    assert "DXA image was registered to" in meta["Description"]
    assert len(meta["Sources"]) == 2
    # A later row with a changed slice (the raw image was fixed) replaces it: never stale.
    save_image(Image(np.full((5, 7), 2.0, np.float32), np.eye(4)), tmp_path / "m1.nii.gz")
    derivatives.write_pair_outputs(out, pair, replace(row, method="sitk-rigid"))
    assert float(nib.load(written).get_fdata().max()) == 2.0
    # A failed row writes nothing.
    derivatives.write_pair_outputs(tmp_path / "other", pair, replace(row, status="failed"))
    assert not (tmp_path / "other").exists()
