"""Reliability of ``prealign(mode="auto")``: header kept when fields of view differ, com when
the header is off, on synthetic sweeps and (when present) real same-subject scans.

"com" compares the centres of the two foregrounds; when the two acquisitions cover
different extents of the anatomy those centres differ although the scanner (header)
coordinates already align the anatomy. "auto" must then keep the identity, and still
switch to "com" when the header is far off.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pytest

from mmreg.imaging.image import Image, load_image
from mmreg.imaging.preprocess import (
    choose_prealign,
    prealign,
    prealign_candidates,
    preprocess,
)

from factories import (
    crop_image,
    remap_image,
    shift_image,
    smooth_head,
    spine_phantom,
)

ALL = slice(None)

# --------------------------------------------------------------------------- helpers


def _head(seed: int, shape: tuple[int, ...] = (40, 44, 36)) -> Image:
    return Image(smooth_head(shape, seed=seed), np.diag([2.0, 2.0, 2.0, 1.0]))


def _check_keeps_header(fixed: Image, moving: Image, *, com_off_mm: float) -> None:
    fixed, moving = preprocess(fixed), preprocess(moving)
    com = prealign(fixed, moving, "com")
    assert np.linalg.norm(com[:3, 3]) > com_off_mm
    np.testing.assert_array_equal(prealign(fixed, moving, "auto"), np.eye(4))


def _check_recovers_shift(
    fixed: Image, moving: Image, shift: np.ndarray, *, tol_mm: float
) -> None:
    fixed, moving = preprocess(fixed), preprocess(moving)
    chosen = choose_prealign(prealign_candidates(fixed, moving))
    assert chosen.mode in ("com", "moments")
    assert np.linalg.norm(chosen.matrix[:3, 3] - shift) < tol_mm
    np.testing.assert_array_equal(prealign(fixed, moving, "auto"), chosen.matrix)


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize(
    ("fixed_z", "moving_z", "com_off_mm"),
    [
        (ALL, slice(50, None), 45.0),  # moving: upper half (com off by ~50 mm)
        (ALL, slice(70, None), 60.0),  # moving: upper 30%
        (ALL, slice(None, 40), 55.0),  # moving: lower 40%
        (slice(30, None), ALL, 25.0),  # fixed: upper 70%
        (slice(None, 70), slice(30, None), 55.0),  # 40 of each one's 70 slices in common
        (slice(None, 50), slice(35, None), 60.0),  # 15 of 50 / 65 slices in common
    ],
)
def test_spine_different_fields_of_view_keep_header(seed, fixed_z, moving_z, com_off_mm):
    spine = spine_phantom(seed)
    fixed = crop_image(spine, ALL, ALL, fixed_z)
    moving = crop_image(remap_image(spine), ALL, ALL, moving_z)
    _check_keeps_header(fixed, moving, com_off_mm=com_off_mm)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("start", [18, 30])
def test_head_different_fields_of_view_keep_header(seed, start):
    head = _head(seed)
    moving = crop_image(remap_image(head), ALL, ALL, slice(start, None))  # upper 50% / 17%
    _check_keeps_header(head, moving, com_off_mm=8.0)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize(
    "shift", [(10.0, 0.0, 0.0), (0.0, 0.0, 20.0), (24.0, -32.0, 0.0), (0.0, 60.0, 60.0)]
)
def test_head_header_off_uses_com(seed, shift):
    head = _head(seed)
    shift_mm = np.asarray(shift)
    _check_recovers_shift(head, shift_image(remap_image(head), shift_mm), shift_mm, tol_mm=1.0)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("shift", [(0.0, 0.0, 40.0), (0.0, 0.0, -80.0), (10.0, 0.0, 0.0)])
def test_spine_header_off_uses_com(seed, shift):
    # Same field of view, header off: even along the column the vertebrae tell.
    spine = spine_phantom(seed)
    shift_mm = np.asarray(shift)
    _check_recovers_shift(spine, shift_image(remap_image(spine), shift_mm), shift_mm, tol_mm=1.0)


def test_auto_is_fast_on_a_brain_sized_volume():
    head = Image(smooth_head((90, 108, 90), seed=0), np.diag([2.0, 2.0, 2.0, 1.0]))
    fixed = preprocess(head)
    moving = preprocess(crop_image(remap_image(head), ALL, ALL, slice(40, None)))
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        matrix = prealign(fixed, moving, "auto")
        seconds.append(time.perf_counter() - start)
    np.testing.assert_array_equal(matrix, np.eye(4))
    assert min(seconds) < 2.0, seconds  # about 0.4 s on one core


# --------------------------------------------------------------------------- real data


@functools.cache
def _stroke(root: Path, name: str) -> Image:
    return load_image(root / "stroke-t1-t2-flair" / f"{name}.nii.gz")


@functools.cache
def _slice_png(root: Path, name: str) -> Image:
    import SimpleITK as sitk

    data = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "itk-brain-slices" / name)))
    data = data[..., 0] if data.ndim == 3 else data  # grey + alpha PNGs
    return Image(np.ascontiguousarray(data.T, dtype=np.float32), np.eye(4))


# (fixed, fixed crop, moving, moving crop, least com offset in mm) on the 124x160x140
# 1 mm grid the three stroke contrasts share (RAS; axis 2 runs inferior -> superior).
STROKE_CROPS = {
    "T1 upper half": ("T2", (), "T1", (ALL, ALL, slice(70, None)), 15.0),
    "T1 upper 40%": ("T2", (), "T1", (ALL, ALL, slice(84, None)), 20.0),
    "T1 anterior 55%": ("T2", (), "T1", (ALL, slice(72, None)), 20.0),
    "FLAIR fixed lower 64%": ("FLAIR", (ALL, ALL, slice(None, 90)), "T1", (), 10.0),
    "T2 lower 43%, T1 upper 71%": (
        "T2",
        (ALL, ALL, slice(None, 60)),
        "T1",
        (ALL, ALL, slice(40, None)),
        30.0,
    ),
}


@pytest.mark.shared_data
@pytest.mark.parametrize("case", sorted(STROKE_CROPS))
def test_stroke_different_fields_of_view_keep_header(shared_data, case):
    fixed_name, fixed_crop, moving_name, moving_crop, com_off_mm = STROKE_CROPS[case]
    fixed = crop_image(_stroke(shared_data, fixed_name), *fixed_crop)
    moving = crop_image(_stroke(shared_data, moving_name), *moving_crop)
    _check_keeps_header(fixed, moving, com_off_mm=com_off_mm)


@pytest.mark.shared_data
def test_stroke_full_fields_of_view_keep_header(shared_data):
    # Same grid: identity is the truth; com is off by ~2 mm (T1 and T2 masks differ).
    _check_keeps_header(_stroke(shared_data, "T2"), _stroke(shared_data, "T1"), com_off_mm=1.0)


@pytest.mark.shared_data
@pytest.mark.parametrize("shift", [(24.0, -32.0, 0.0), (0.0, 0.0, 40.0), (5.0, 3.0, -4.0)])
def test_stroke_header_off_uses_com(shared_data, shift):
    shift_mm = np.asarray(shift)
    moving = shift_image(_stroke(shared_data, "T1"), shift_mm)
    _check_recovers_shift(_stroke(shared_data, "T2"), moving, shift_mm, tol_mm=3.0)


@pytest.mark.shared_data
def test_stroke_auto_runtime(shared_data):
    fixed = preprocess(_stroke(shared_data, "T2"))
    moving = preprocess(crop_image(_stroke(shared_data, "T1"), ALL, ALL, slice(70, None)))
    start = time.perf_counter()
    prealign(fixed, moving, "auto")
    assert time.perf_counter() - start < 2.0


@pytest.mark.shared_data
def test_brain_slices_2d(shared_data):
    t1 = _slice_png(shared_data, "BrainT1SliceBorder20.png")
    pd = _slice_png(shared_data, "BrainProtonDensitySliceBorder20.png")
    _check_keeps_header(t1, crop_image(pd, ALL, slice(120, None)), com_off_mm=30.0)
    _check_keeps_header(t1, crop_image(pd, slice(None, 100), ALL), com_off_mm=30.0)
    shifted = _slice_png(shared_data, "BrainProtonDensitySliceShifted13x17y.png")
    _check_recovers_shift(t1, shifted, np.array([13.0, 17.0, 0.0]), tol_mm=2.0)
    shift = np.array([24.0, -32.0, 0.0])
    _check_recovers_shift(t1, shift_image(pd, shift), shift, tol_mm=2.0)
