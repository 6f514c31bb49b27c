"""2D/3D pairs: the 3D Dixon MR becomes its mid-coronal slice, ground truth follows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmreg.errors import InputError
from mmreg.imaging.groundtruth import load_ground_truth
from mmreg.imaging.phantoms.wholebody_dataset import write_wholebody_dataset
from mmreg.imaging.planar import dixon_channels
from mmreg.imaging.preprocess import PreprocessOptions
from mmreg.imaging.transform import Transform
from mmreg.pipeline import evaluate, prepare


@pytest.fixture(scope="module")
def wholebody(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wb") / "bids"
    write_wholebody_dataset(root, n_subjects=1, seed=31)
    return root


def _files(root: Path) -> dict[str, Path]:
    anat, gt = root / "sub-1" / "anat", root / "derivatives" / "ground-truth" / "sub-1" / "anat"
    if not anat.is_dir():  # labels are zero-padded to the subject count
        anat = next(root.glob("sub-*/anat"))
        gt = root / "derivatives" / "ground-truth" / anat.parent.name / "anat"
    return {
        "dxa": next(anat.glob("*_rec-bone_DXA.nii.gz")),
        "fat": next(anat.glob("*_acq-dixon_rec-fat_T1w.nii.gz")),
        "dxa_dseg": next(gt.glob("*_space-DXA_dseg.nii.gz")),
        "mr_dseg": next(gt.glob("*_space-T1w_dseg.nii.gz")),
        "dxa_lm": next(gt.glob("*_space-DXA_desc-landmarks.tsv")),
        "mr_lm": next(gt.glob("*_space-T1w_desc-landmarks.tsv")),
        "truth": next(gt.glob("*_from-DXA_to-midcoronal_desc-truth_xfm.txt")),
    }


def test_dixon_siblings_are_found_both_ways(wholebody):
    fat = _files(wholebody)["fat"]
    paths, roles = dixon_channels(fat)
    assert roles == ("fat", "water") and paths[1].name.endswith("_rec-water_T1w.nii.gz")
    paths, roles = dixon_channels(paths[1])
    assert roles == ("water", "fat") and paths[1] == fat
    assert dixon_channels(_files(wholebody)["dxa"]) == ([_files(wholebody)["dxa"]], None)


def test_a_2d_3d_pair_needs_the_option(wholebody):
    f = _files(wholebody)
    with pytest.raises(InputError, match="--coronal-slice"):
        prepare(str(f["dxa"]), str(f["fat"]), PreprocessOptions())
    prepared = prepare(str(f["dxa"]), str(f["fat"]), PreprocessOptions(coronal_slice=True))
    assert prepared.fixed.ndim == prepared.moving.ndim == 2
    assert prepared.initial.ndim == 2


def test_the_true_transform_scores_perfectly_on_the_slice(wholebody):
    """Landmarks and labels of the 3D MR land on the slice where the truth maps the DXA's."""
    f = _files(wholebody)
    truth = load_ground_truth(
        fixed_labels=f["dxa_dseg"],
        moving_labels=f["mr_dseg"],
        fixed_landmarks=f["dxa_lm"],
        moving_landmarks=f["mr_lm"],
    )
    true = Transform.read(f["truth"], ndim=2)
    warped, row = evaluate(str(f["dxa"]), str(f["fat"]), true, truth, coronal_slice=True)
    assert warped.ndim == 2
    # The slice is sampled on a 2.2 mm grid; the humeral heads (2 of 5 landmarks) also
    # move with the shoulders between the scans (at most hypot(10, 5) mm each).
    assert row["tre_mean_mm"] < 1.5 + 2 * np.hypot(10.0, 5.0) / 5
    assert row["initial_tre_mean_mm"] > 5 * row["tre_mean_mm"]
    assert row["dice_mean"] > 0.75 > row["initial_dice_mean"]
    assert np.isfinite(row["hd95_mean_mm"])
