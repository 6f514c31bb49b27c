"""The SynthesizeCoronalSlice task: files in, 2D slices and labels out, as the function."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mmreg.imaging.image import load_image, load_labels, save_image
from mmreg.imaging.phantoms.wholebody import WholeBodySettings, generate_wholebody_subject
from mmreg.imaging.slice_synthesis import SliceSettings, synthesize_coronal_slice
from mmreg.tasks.slice import SynthesizeCoronalSlice

SMALL = WholeBodySettings(
    mr_spacing_mm=4.4, mr_size=(112, 251), dxa_spacing_mm=4.4, dxa_size=(150, 400)
)


def _write(tmp_path: Path, *, spine: bool) -> tuple[Path, Path, Path]:
    subject = generate_wholebody_subject(3, settings=replace(SMALL, spine=spine))
    return (
        save_image(subject.mr_fat, tmp_path / "fat.nii.gz"),
        save_image(subject.mr_water, tmp_path / "water.nii.gz"),
        save_image(subject.mr_labels, tmp_path / "labels.nii.gz"),
    )


def test_task_matches_the_function(tmp_path: Path) -> None:
    fat, water, labels = _write(tmp_path, spine=True)
    task = SynthesizeCoronalSlice(
        in_files=[fat, water], label_file=labels, size_lr=100, size_si=240, spacing=4.4
    )
    result = task(worker="debug", cache_root=tmp_path / "cache")
    assert result.found_spine is True
    assert len(result.out_files) == 2
    images = [load_image(f.fspath, ndim=2) for f in result.out_files]
    direct = synthesize_coronal_slice(
        [load_image(fat), load_image(water)],
        settings=SliceSettings(size=(100, 240), spacing_mm=4.4),
    )
    for got, want in zip(images, direct.images, strict=True):
        assert got.shape == (100, 240)
        np.testing.assert_allclose(got.data, want.data, atol=1e-4)
        np.testing.assert_allclose(got.affine, want.affine, atol=1e-5)
    sampled = load_labels(result.out_labels.fspath, ndim=2)
    assert {1, 2, 3} <= set(np.unique(sampled.data))
    record = json.loads(Path(result.path_file.fspath).read_text())
    assert record["found_spine"] is True and record["warnings"] == []
    assert len(record["y_mm"]) == 240 and any(record["on_spine"])
    np.testing.assert_allclose(record["y_mm"], direct.path.y, atol=1e-3)
    # Everything was written into the task's own cache folder.
    for path in (*result.out_files, result.out_labels, result.path_file):
        assert (tmp_path / "cache") in Path(path.fspath).parents


def test_task_reports_a_missing_spine(tmp_path: Path) -> None:
    fat, water, _ = _write(tmp_path, spine=False)
    result = SynthesizeCoronalSlice(in_files=[fat, water], size_lr=64, size_si=128, spacing=4.4)(
        worker="debug", cache_root=tmp_path / "cache"
    )
    assert result.found_spine is False and result.out_labels is None
    record = json.loads(Path(result.path_file.fspath).read_text())
    assert "no spine found" in record["warnings"][0]
    assert np.ptp(record["y_mm"]) == 0.0


def test_task_rejects_a_2d_input(tmp_path: Path) -> None:
    subject = generate_wholebody_subject(3, settings=SMALL)
    dxa = save_image(subject.dxa_bone, tmp_path / "dxa.nii.gz")
    with pytest.raises(Exception, match="3D"):
        SynthesizeCoronalSlice(in_files=[dxa])(worker="debug", cache_root=tmp_path / "cache")
