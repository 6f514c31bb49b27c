"""Bad images and ground truth that users met: each gets a one-line mmreg error or a warning.

Anything but an :class:`~mmreg.errors.MmregError` reaches users as an internal error, so
every case here must raise :class:`InputError` (one line, starting with the file name) or
load with a logged warning, never a numpy/OS exception.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from numpy.exceptions import ComplexWarning

from mmreg.errors import InputError
from mmreg.imaging.evaluation import evaluate_transform
from mmreg.imaging.groundtruth import load_ground_truth
from mmreg.imaging.image import Grid, check_grid_size, load_image
from mmreg.imaging.transform import Transform


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _volume(rng: np.random.Generator, shape: tuple[int, ...] = (16, 16, 16)) -> np.ndarray:
    return rng.random(shape).astype(np.float32)


def _one_line_input_error(path: Path, match: str) -> str:
    with pytest.raises(InputError, match=match) as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path.name}: ")
    return message


# ----------------------------------------------------------------- 1. absurd voxel sizes


@pytest.mark.parametrize("size", [1e6, 1e-6])
def test_absurd_voxel_size_is_an_input_error_when_loading(tmp_path, rng, size):
    # Before: 1e6 mm loaded and then failed resampling ("array is too big"), 1e-6 mm
    # was called a "singular" affine.
    path = _save(tmp_path / "big.nii.gz", _volume(rng), np.diag([size, size, size, 1.0]))
    message = _one_line_input_error(path, "implausible voxel size")
    assert f"{size:g}" in message


def test_resampled_grid_size_is_guarded(tmp_path):
    # 16 voxels of 500 mm: plausible voxels, an 8 m field of view; at 0.5 mm the
    # resampled grid would have 16000^3 voxels.
    grid = Grid((16, 16, 16), np.diag([500.0, 500.0, 500.0, 1.0]))
    with pytest.raises(InputError, match=r"resampling to 0\.5 mm") as info:
        check_grid_size(grid, 0.5, name="x.nii.gz")
    message = str(info.value)
    assert "field of view 8000 x 8000 x 8000 mm" in message
    assert "voxel size 500 x 500 x 500 mm" in message
    assert check_grid_size(Grid((16, 16, 16), np.eye(4)), 2.0) == (8, 8, 8)


# ----------------------------------------------------------------- 2. complex data


def test_complex_data_is_read_as_its_magnitude_without_complex_warning(tmp_path, rng, caplog):
    data = (_volume(rng) + 1j * _volume(rng)).astype(np.complex64)
    path = _save(tmp_path / "cplx.nii.gz", data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ComplexWarning)
        with caplog.at_level(logging.WARNING, logger="mmreg"):
            image = load_image(path)
    np.testing.assert_allclose(image.data, np.abs(data), rtol=1e-6)
    assert any("cplx.nii.gz: complex-valued data" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------- 3. qform vs sform


def test_disagreeing_qform_and_sform_are_reported(tmp_path, rng, caplog):
    img = nib.Nifti1Image(_volume(rng), np.eye(4))
    shifted = np.eye(4)
    shifted[:3, 3] = [5.0, 0.0, 0.0]
    img.set_sform(shifted, code=1)
    img.set_qform(np.eye(4), code=1)
    path = tmp_path / "forms.nii.gz"
    nib.save(img, path)
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        image = load_image(path)
    np.testing.assert_allclose(image.affine, shifted)  # nibabel's choice: the sform
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("forms.nii.gz: qform and sform disagree") and "using the sform" in m
        for m in messages
    ), messages


def test_agreeing_qform_and_sform_are_quiet(tmp_path, rng, caplog):
    img = nib.Nifti1Image(_volume(rng), np.eye(4))
    img.set_qform(np.eye(4), code=1)
    nib.save(img, tmp_path / "ok.nii.gz")
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        load_image(tmp_path / "ok.nii.gz")
    assert not caplog.records


# ----------------------------------------------------------------- 4. file-system oddities


def test_directory_named_like_a_nifti(tmp_path):
    folder = tmp_path / "sub-01_T1w.nii.gz"
    folder.mkdir()
    _one_line_input_error(folder, "is a directory, not a file")


def test_symlink_loop(tmp_path):
    link = tmp_path / "loop.nii.gz"
    os.symlink(link, link)
    _one_line_input_error(link, "symbolic link loop")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path, rng):
    path = _save(tmp_path / "secret.nii.gz", _volume(rng))
    path.chmod(0)
    try:
        _one_line_input_error(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_unreadable_file_simulated(tmp_path, rng, monkeypatch):
    # The same as above where the tests run as root: the read itself is refused.
    path = _save(tmp_path / "secret.nii.gz", _volume(rng))

    def refuse(filename, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", filename)

    monkeypatch.setattr(nib, "load", refuse)
    _one_line_input_error(path, "permission denied")


def test_file_vanishing_while_being_read(tmp_path, rng, monkeypatch):
    path = _save(tmp_path / "gone.nii.gz", _volume(rng))
    real_load = nib.load

    def vanish_then_load(filename, **kwargs):
        os.remove(filename)
        return real_load(filename, **kwargs)

    monkeypatch.setattr(nib, "load", vanish_then_load)
    _one_line_input_error(path, "file disappeared while being read")


# ----------------------------------------------------------------- 5. degenerate shapes


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((64, 64, 2), r"only 2 slices along axis 2 \(shape \(64, 64, 2\)\)"),
        ((64, 1, 64), r"only 1 voxel along axis 1 .*stored as \(X, Y\) or \(X, Y, 1\)"),
        ((32, 32, 32, 3), r"4D image with 3 volumes .*extract one volume"),
    ],
    ids=["two-slices", "thin-axis-1", "three-volumes"],
)
def test_degenerate_shapes_say_what_is_wrong(tmp_path, rng, shape, match):
    path = _save(tmp_path / "odd.nii.gz", _volume(rng, shape))
    _one_line_input_error(path, match)


# ----------------------------------------------------------------- 6. labels off their grid


def test_label_map_on_another_grid_than_its_image(tmp_path, rng):
    image = _save(tmp_path / "sub-01_T1w.nii.gz", _volume(rng, (32, 32, 32)))
    labels = np.zeros((16, 16, 16), np.int16)
    labels[4:12, 4:12, 4:12] = 1
    # Downsampled by 2 but with the image's header: Dice would silently be wrong.
    dseg = _save(tmp_path / "sub-01_space-T1w_dseg.nii.gz", labels)
    with pytest.raises(InputError) as info:
        load_ground_truth(fixed_labels=dseg, fixed_image=image)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("sub-01_space-T1w_dseg.nii.gz: label map grid (shape (16, 16, 16)")
    assert "sub-01_T1w.nii.gz" in message
    assert "shape (16, 16, 16)" in message and "shape (32, 32, 32)" in message
    # The same label map on the image's grid (within a float's precision) is accepted.
    on_grid = np.zeros((32, 32, 32), np.int16)
    _save(dseg, on_grid, np.diag([1.0, 1.0, 1.0 + 1e-7, 1.0]))
    truth = load_ground_truth(fixed_labels=dseg, fixed_image=image)
    assert truth.fixed_labels is not None and truth.fixed_labels.shape == (32, 32, 32)


# ----------------------------------------------------------------- 7. landmark names


def _landmarks(path: Path, names: list[str]) -> Path:
    rows = "".join(f"{n}\t{i}\t0\t0\n" for i, n in enumerate(names))
    path.write_text("name\tx\ty\tz\n" + rows)
    return path


def test_unmatched_landmark_names_are_listed_and_the_rest_evaluated(tmp_path, caplog):
    fixed = _landmarks(tmp_path / "f_desc-landmarks.tsv", ["AC", "PC", "nose"])
    moving = _landmarks(tmp_path / "m_desc-landmarks.tsv", ["AC", "PC", "chin"])
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        truth = load_ground_truth(fixed_landmarks=fixed, moving_landmarks=moving)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "nose" in message and "chin" in message
    assert "TRE uses the 2 landmark(s)" in message
    row = evaluate_transform(Transform.identity(), truth, with_hd95=False)
    assert row["n_landmarks"] == 2
    assert set(row) >= {"tre_AC_mm", "tre_PC_mm"} and "tre_nose_mm" not in row


def test_no_matching_landmark_names(tmp_path, caplog):
    fixed = _landmarks(tmp_path / "f_desc-landmarks.tsv", ["a", "b"])
    moving = _landmarks(tmp_path / "m_desc-landmarks.tsv", ["A", "B"])
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        truth = load_ground_truth(fixed_landmarks=fixed, moving_landmarks=moving)
    assert any("no landmark names match" in r.getMessage() for r in caplog.records)
    row = evaluate_transform(Transform.identity(), truth, with_hd95=False)
    assert math.isnan(row["tre_mean_mm"]) and math.isnan(row["tre_max_mm"])
    assert row["n_landmarks"] == 0
