"""Real 2D BrainWeb slices (ITK Software Guide data): T1 fixed, proton density moving.

``BrainProtonDensitySliceR10X13Y17`` is the PD slice rotated by 10 degrees about the
image centre and shifted; measured at the geometric centre (110, 128) of the
221x257 1-mm grid, the shift is (13, 16) mm in ITK's physical (LPS) frame (the
file name's nominal 17 mm refers to a slightly different rotation centre; every
method here, and the ITK Software Guide's own example, recover 16 at this centre).
``...Shifted13x17y`` is a pure (13, 17) mm shift.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mmreg.imaging import itk_space
from mmreg.imaging.image import Image
from mmreg.imaging.transform import Transform
from mmreg.methods import get_method

pytestmark = pytest.mark.shared_data

CENTRE_LPS = np.array([110.0, 128.0])
CASES = {
    "BrainProtonDensitySliceR10X13Y17.png": (10.0, (13.0, 16.0)),
    "BrainProtonDensitySliceShifted13x17y.png": (0.0, (13.0, 17.0)),
}


def _read(folder: Path, name: str) -> Image:
    path = folder / "itk-brain-slices" / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    image = itk_space.sitk_to_image(sitk.ReadImage(str(path), sitk.sitkFloat32))
    return image.with_data((image.data / image.data.max()).astype(np.float32))


def _truth(degrees: float, shift: tuple[float, float]) -> Transform:
    """``x -> R (x - c) + c + t`` in LPS, converted to RAS."""
    a = np.deg2rad(degrees)
    lps = np.eye(4)
    lps[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    lps[:2, 3] = CENTRE_LPS - lps[:2, :2] @ CENTRE_LPS + np.asarray(shift)
    return Transform.from_affine(itk_space.lps_to_ras_affine(lps), ndim=2)


def _brain_points() -> np.ndarray:
    """Points spread over the brain, RAS."""
    offsets = np.array([[0, 0], [60, 0], [-60, 0], [0, 70], [0, -70], [40, 50], [-40, -50]])
    lps = np.zeros((len(offsets), 3))
    lps[:, :2] = CENTRE_LPS + offsets
    return itk_space.lps_to_ras_points(lps)


@pytest.mark.parametrize("moving_name", sorted(CASES))
@pytest.mark.parametrize("method", ["sitk-rigid", "ants-rigid", "sitk-affine", "ants-affine"])
def test_recovers_the_known_transform(shared_data: Path, moving_name: str, method: str) -> None:
    fixed = _read(shared_data, "BrainT1SliceBorder20.png")
    moving = _read(shared_data, moving_name)
    truth = _truth(*CASES[moving_name])
    points = _brain_points()

    def error(t: Transform) -> float:
        return float(
            np.linalg.norm(t.map_points(points) - truth.map_points(points), axis=1).mean()
        )

    initial_error = error(Transform.identity(2))
    result = get_method(method).register(fixed, moving, seed=0)
    assert initial_error > 15.0
    assert error(result.transform) < 1.0
