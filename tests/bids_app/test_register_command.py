"""``mmreg register FIXED MOVING --method M --out PREFIX``: one pair outside BIDS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mmreg.bids_app.cli import main
from mmreg.imaging.image import Image, load_image, load_labels, save_image

from factories import second_contrast, smooth_head

SHIFT_MM = np.array([4.0, -3.0, 2.0])


@pytest.fixture
def pair(tmp_path: Path) -> dict[str, Path]:
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -45
    head = smooth_head((30, 32, 28), seed=5)
    moved = affine.copy()
    moved[:3, 3] += SHIFT_MM  # the same anatomy, SHIFT_MM further along in world
    labels = (head > np.percentile(head, 80)).astype(np.int16)
    return {
        "fixed": save_image(Image(head, affine), tmp_path / "t1.nii.gz"),
        "moving": save_image(Image(second_contrast(head), moved), tmp_path / "t2.nii.gz"),
        "labels": save_image(Image(labels, moved), tmp_path / "t2_dseg.nii.gz", dtype=np.int16),
        "fixed_labels": save_image(Image(labels, affine), tmp_path / "t1_dseg.nii.gz"),
    }


def test_register_writes_transform_warped_and_labels(pair, tmp_path):
    prefix = tmp_path / "out" / "sub-01"
    argv = ["register", str(pair["fixed"]), str(pair["moving"]), "--method", "sitk-rigid"]
    argv += ["--out", str(prefix), "--moving-labels", str(pair["labels"]), "--prealign", "none"]
    assert main(argv) == 0
    xfm = Path(f"{prefix}_xfm.txt")
    transform = sitk.ReadTransform(str(xfm))  # ITK: fixed (LPS) points -> moving points
    moved = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    np.testing.assert_allclose(moved * [-1, -1, 1], SHIFT_MM, atol=1.0)
    fixed = load_image(pair["fixed"])
    warped = load_image(Path(f"{prefix}_warped.nii.gz"))
    assert warped.shape == fixed.shape
    np.testing.assert_allclose(warped.affine, fixed.affine)
    labels = load_labels(Path(f"{prefix}_warped_labels.nii.gz")).data
    truth = load_labels(pair["fixed_labels"]).data
    dice = 2 * np.sum((labels > 0) & (truth > 0)) / (np.sum(labels > 0) + np.sum(truth > 0))
    assert dice > 0.9


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"--method": "sitk-rigid,identity"}, 64, "one method"),
        ({"--method": "nonsense"}, 64, "unknown method"),
        ({"moving": "missing.nii.gz"}, 66, "file not found"),
    ],
)
def test_register_errors_are_one_line(pair, tmp_path, capsys, change, code, words):
    args = {"moving": str(pair["moving"]), "--method": "identity"}
    args.update(change)
    moving = (
        args["moving"] if args["moving"] != "missing.nii.gz" else str(tmp_path / "none.nii.gz")
    )
    argv = ["register", str(pair["fixed"]), moving, "--method", args["--method"]]
    assert main([*argv, "--out", str(tmp_path / "p")]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not list(tmp_path.glob("p_*"))


def test_register_deformable_writes_an_h5_that_ants_reads(pair, tmp_path):
    prefix = tmp_path / "def" / "sub-01"
    method = "sitk-rigid+mind-io:grid=2:window=2:samples=2000"
    argv = ["register", str(pair["fixed"]), str(pair["moving"]), "--method", method]
    argv += ["--out", str(prefix), "--moving-labels", str(pair["labels"]), "--prealign", "none"]
    assert main(argv) == 0
    xfm = Path(f"{prefix}_xfm.h5")
    assert xfm.is_file()
    import ants

    fixed, moving = ants.image_read(str(pair["fixed"])), ants.image_read(str(pair["moving"]))
    warped = ants.apply_transforms(fixed, moving, transformlist=[str(xfm)])
    ours = load_image(Path(f"{prefix}_warped.nii.gz")).data
    inside = ours > 0.2 * ours.max()
    assert np.corrcoef(warped.numpy()[inside], ours[inside])[0, 1] > 0.95
    labels = load_labels(Path(f"{prefix}_warped_labels.nii.gz")).data
    truth = load_labels(pair["fixed_labels"]).data
    dice = 2 * np.sum((labels > 0) & (truth > 0)) / (np.sum(labels > 0) + np.sum(truth > 0))
    assert dice > 0.85
