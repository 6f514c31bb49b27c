"""Report figures: PNG bytes for box plots and overlays, 2D and 3D, robust to odd data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmreg.imaging import display
from mmreg.imaging.image import Image
from mmreg.reports import figures

PNG = b"\x89PNG\r\n\x1a\n"


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject": ["01", "01", "02", "02", "03", "03"],
            "session": [""] * 6,
            "fixed": ["T1w"] * 6,
            "moving": ["T2w"] * 6,
            "method": ["a", "b"] * 3,
            "status": ["ok", "ok", "ok", "failed", "ok", "ok"],
            "initial_dice_mean": [0.5, 0.5, 0.6, 0.6, 0.4, 0.4],
            "dice_mean": [0.7, 0.8, 0.75, np.nan, 0.72, 0.9],
            "runtime_s": [0.5, 30.0, 0.7, 1.0, 0.6, 40.0],
            "tre_mean_mm": [np.nan] * 6,
        }
    )


def test_boxplot_returns_png() -> None:
    png = figures.boxplot_by_method(_frame(), "dice_mean")
    assert png.startswith(PNG)
    assert png == figures.boxplot_by_method(_frame(), "dice_mean")  # deterministic jitter


def test_boxplot_log_scale_and_all_nan() -> None:
    assert figures.boxplot_by_method(_frame(), "runtime_s", logscale=True).startswith(PNG)
    assert figures.boxplot_by_method(_frame(), "tre_mean_mm").startswith(PNG)


def test_boxplot_several_pairs_and_all_failed_method() -> None:
    df = _frame()
    df.loc[3:, "moving"] = "FLAIR"
    df.loc[df["method"] == "b", "status"] = "failed"
    assert figures.boxplot_by_method(df, "dice_mean").startswith(PNG)


def _blob(shape: tuple[int, ...]) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    return (sum(g**2 for g in grids) < 0.6).astype(np.float32) + 0.1


def test_overlay_3d() -> None:
    fixed = Image(_blob((12, 12, 12)), np.diag([2.0, 2.0, 3.0, 1.0]))
    warped = Image(np.roll(fixed.data, 1, axis=0), fixed.affine)
    png = figures.overlay_figure(fixed, warped, title="x")
    assert png.startswith(PNG)
    assert len(png) < 200_000


def test_overlay_2d_and_other_grid() -> None:
    fixed = Image(_blob((14, 12)), np.diag([1.0, 1.5, 1.0, 1.0]))
    # Another grid: resampled onto the fixed grid through world coordinates.
    warped = Image(_blob((10, 10)), np.diag([2.0, 2.0, 1.0, 1.0]))
    assert figures.overlay_figure(fixed, warped).startswith(PNG)


def test_overlay_oblique_and_constant() -> None:
    affine = np.array([[0, 0, -2.0, 10], [2.0, 0, 0, -5], [0, 2.0, 0, 3], [0, 0, 0, 1]])
    fixed = Image(_blob((12, 10, 8)), affine)
    constant = Image(np.zeros((12, 10, 8), np.float32), affine)
    assert figures.overlay_figure(fixed, constant).startswith(PNG)


def test_overlay_rejects_mixed_dimensionality() -> None:
    with pytest.raises(ValueError, match="2D"):
        figures.overlay_figure(Image(_blob((12, 12, 12))), Image(_blob((12, 12))))


def test_robust_normalise_and_checkerboard() -> None:
    data = np.arange(100, dtype=np.float32).reshape(10, 10)
    norm = display.robust_normalise(data)
    assert norm.min() == 0.0 and norm.max() == 1.0
    assert not display.robust_normalise(np.full((5, 5), np.nan)).any()
    board = display.checkerboard(np.zeros((8, 8)), np.ones((8, 8)), tiles=2)
    assert board[0, 0] == 0 and board[0, 7] == 1 and board[7, 7] == 0


def test_keypoints_land_on_their_voxels_in_the_display_frame():
    """A LAS-stored image: world points map to the reoriented (RAS) voxel indices."""
    from mmreg.reports.figures import _canonical_points

    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [20.0, -10.0, 0.0]
    shape = (11, 6, 5)
    # Voxel (1, 2, 3) is world (18, -6, 6); flipped along x it is canonical (9, 2, 3).
    world = [[18.0, -6.0, 6.0]]
    np.testing.assert_allclose(_canonical_points(world, affine, shape), [[9.0, 2.0, 3.0]])


def test_keypoints_figure_renders_3d_and_2d():
    from mmreg.reports.figures import keypoints_figure

    rng = np.random.default_rng(0)
    volume = Image(rng.random((20, 22, 18)).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    points = rng.uniform(0, 36, size=(16, 3))
    png = keypoints_figure(volume, volume, points, points + 1.0, title="kp")
    assert png.startswith(b"\x89PNG")
    plane = Image(rng.random((30, 40)).astype(np.float32), np.eye(4))
    pts2 = np.c_[rng.uniform(0, 29, size=(8, 2)), np.zeros(8)]
    assert keypoints_figure(plane, plane, pts2, pts2).startswith(b"\x89PNG")
