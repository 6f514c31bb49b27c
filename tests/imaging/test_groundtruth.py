"""Ground-truth readers: landmarks, label tables, column names."""

from __future__ import annotations

import numpy as np
import pytest

from mmreg.errors import InputError
from mmreg.imaging.groundtruth import label_column, read_label_names, read_landmarks


def test_landmarks_round_trip(tmp_path):
    path = tmp_path / "lm.tsv"
    path.write_text("name\tx\ty\tz\nAC\t0\t2.5\t-4\nPC\t0\t-24\t-2\n")
    lm = read_landmarks(path)
    assert list(lm) == ["AC", "PC"]
    np.testing.assert_allclose(lm["AC"], [0, 2.5, -4])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name\tx\ty\nAC\t0\t1\n", "missing column"),
        ("name\tx\ty\tz\nAC\t0\tone\t2\n", "non-numeric"),
        ("name\tx\ty\tz\nAC\t0\t1\t2\nAC\t1\t1\t1\n", "appears twice"),
        ("name\tx\ty\tz\nAC\tnan\t1\t2\n", "non-finite"),
    ],
)
def test_bad_landmarks(tmp_path, text, message):
    path = tmp_path / "lm.tsv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_landmarks(path)


def test_label_table_and_columns(tmp_path):
    path = tmp_path / "dseg.tsv"
    path.write_text("index\tname\n1\tCSF\n2\tGrey matter\n")
    names = read_label_names(path)
    assert names == {1: "CSF", 2: "Grey matter"}
    assert label_column(2, names) == "Grey_matter"
    assert label_column(9, names) == "9"


def test_a_directory_instead_of_a_table(tmp_path):
    (tmp_path / "lm.tsv").mkdir()
    with pytest.raises(InputError, match=r"lm\.tsv: is a directory, not a file"):
        read_landmarks(tmp_path / "lm.tsv")


def test_labels_on_their_image_grid_are_accepted(tmp_path):
    import nibabel as nib

    from mmreg.imaging.groundtruth import load_ground_truth

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).random((9, 9, 9)), affine), tmp_path / "i.nii"
    )
    nib.save(nib.Nifti1Image(np.ones((9, 9, 9), np.int16), affine), tmp_path / "l.nii")
    truth = load_ground_truth(fixed_labels=tmp_path / "l.nii", fixed_image=tmp_path / "i.nii")
    assert truth.fixed_labels is not None and int(truth.fixed_labels.data.sum()) == 9**3
