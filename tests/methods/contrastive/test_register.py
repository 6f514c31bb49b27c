"""contrastive-dense / -salient: geometry on synthetic feature maps, and the method interface.

The end-to-end tests use an untrained stride-1 encoder shared by both modalities on
toy pairs whose two images show the same channels (conftest): such an encoder is
exactly translation-equivariant, so any error comes from our geometry, not the model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmreg.errors import UsageError
from mmreg.imaging.transform import Transform
from mmreg.methods import get_method, model_family
from mmreg.methods.contrastive.features import FeatureMap
from mmreg.methods.contrastive.geometry import angle_of, apply, rigid
from mmreg.methods.contrastive.register import (
    ContrastiveSettings,
    dense_peak,
    match_salient,
    parse_settings,
    salient_cells,
)
from mmreg.pipeline import method_columns

from .conftest import same_modality_pair


def _maps(shift: tuple[int, int]) -> tuple[FeatureMap, FeatureMap]:
    """A random DXA map and an MR map cut out of it: MR cell v = DXA cell v + shift."""
    torch.manual_seed(0)
    values = torch.nn.functional.normalize(torch.randn(16, 12, 14), dim=0)
    grid_d = np.array([[8.0, 0, -40], [0, 8.0, -50], [0, 0, 1]])
    grid_m = np.array([[8.0, 0, 100], [0, 8.0, 7], [0, 0, 1]])
    mr = values[:, shift[0] : shift[0] + 6, shift[1] : shift[1] + 8].clone()
    return (
        FeatureMap(values, grid_d, np.ones((12, 14), bool)),
        FeatureMap(mr, grid_m, np.ones((6, 8), bool)),
    )


def test_dense_peak_geometry() -> None:
    dxa, mr = _maps((3, 2))
    peak = dense_peak(dxa, mr)
    assert peak.shift == pytest.approx((3.0, 2.0), abs=0.01)
    assert peak.value == pytest.approx(1.0, abs=1e-5)
    # DXA cell (5, 5) is MR cell (2, 3).
    x = dxa.world([[5, 5]])
    np.testing.assert_allclose(apply(peak.matrix, x), mr.world([[2, 3]]), atol=0.2)


def test_dense_peak_respects_max_shift() -> None:
    dxa, mr = _maps((3, 2))
    # The true alignment puts the MR centre (cell (2.5, 3.5) -> DXA cell (5.5, 5.5)) one
    # cell, 8 mm, from the DXA centre (cell (5.5, 6.5)) along the second axis.
    assert dense_peak(dxa, mr, max_shift_mm=0).value > 0.99
    assert dense_peak(dxa, mr, max_shift_mm=8.0).value > 0.99
    assert dense_peak(dxa, mr, max_shift_mm=6.0).value < 0.5


def test_salient_matching_recovers_the_shift() -> None:
    dxa, mr = _maps((4, 3))
    settings = ContrastiveSettings()
    cells = salient_cells(mr, n=20)
    assert 0 < len(cells) <= 20
    matches = match_salient(dxa, mr, settings)
    assert len(matches.similarity) >= 4
    np.testing.assert_allclose(
        matches.dxa_cells - matches.mr_cells,
        np.tile([4, 3], (len(matches.similarity), 1)),
        atol=0.3,
    )
    assert (matches.ratio < settings.ratio).all()


def test_patch_refinement_places_a_match_between_cells() -> None:
    # A smooth random map shifted by (2.4, 1.7) cells (bilinear): a patch of cells finds
    # the fractional shift better than a single descriptor.
    from mmreg.methods.contrastive.register import _refine_cell, _refine_patch

    rng = np.random.default_rng(0)
    base = torch.nn.functional.avg_pool2d(torch.randn(1, 16, 28, 28), 3, 1, 1)[0]
    src = torch.nn.functional.normalize(base[:, 4:20, 4:20], dim=0)
    grid = torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij"), -1)
    # Target cell v shows the content of source position v + (2.4, 1.7): source cell p
    # lies at target p - (2.4, 1.7).
    shift = np.array([2.4, 1.7])
    coords = (grid + 4 + torch.tensor(shift, dtype=torch.float32)) / 27 * 2 - 1
    sampled = torch.nn.functional.grid_sample(
        base[None], coords[None, ..., [1, 0]], align_corners=True, mode="bilinear"
    )[0]
    tgt = torch.nn.functional.normalize(sampled, dim=0)
    eye = np.eye(3)
    fs = FeatureMap(src, eye, np.ones((16, 16), bool))
    ft = FeatureMap(tgt, eye, np.ones((16, 16), bool))
    errors_patch, errors_cell = [], []
    for p in rng.integers(5, 11, (10, 2)):
        truth = p - shift  # where source cell p lies in the target
        q = np.rint(truth).astype(int)
        errors_patch.append(np.abs(_refine_patch(fs, p, ft, q, 3) - truth).max())
        errors_cell.append(np.abs(_refine_cell(ft, src[:, p[0], p[1]], q) - truth).max())
    assert np.mean(errors_patch) < 0.15
    assert np.mean(errors_patch) < 0.7 * np.mean(errors_cell)


def test_guided_matching_searches_only_near_the_guide() -> None:
    # MR cell v = DXA cell v + (4, 3); a guide that is right finds the shift, a guide
    # 5 cells (40 mm) off with a 20 mm window cannot, and finds nothing consistent.
    dxa, mr = _maps((4, 3))
    settings = ContrastiveSettings(search_mm=20.0)
    right = dense_peak(dxa, mr).matrix
    matches = match_salient(dxa, mr, settings, guide=right)
    exact = np.all(np.abs(matches.dxa_cells - matches.mr_cells - [4, 3]) < 0.3, axis=1)
    assert len(exact) >= 4 and exact.mean() > 0.9  # at the border, a neighbour may win
    wrong = rigid(0.0, (40.0, 0.0)) @ right
    off = match_salient(dxa, mr, settings, guide=wrong)
    shifts = off.dxa_cells - off.mr_cells
    assert not np.any(np.all(np.abs(shifts - [4, 3]) < 0.5, axis=1))


def test_settings_parsing() -> None:
    s = parse_settings(ContrastiveSettings, {"angle_step": "1", "fixed_modality": "mr"})
    assert s.angle_step == 1.0 and s.fixed_modality == "mr"
    assert s.angles.tolist() == list(np.arange(-10.0, 11.0))
    with pytest.raises(UsageError, match="unknown parameter"):
        parse_settings(ContrastiveSettings, {"nope": "1"})
    with pytest.raises(UsageError, match="not a valid int"):
        parse_settings(ContrastiveSettings, {"n_salient": "many"})
    with pytest.raises(UsageError, match="invalid parameters"):
        parse_settings(ContrastiveSettings, {"fixed_modality": "ct"})


def _dxa_to_mr(transform: Transform, fixed_is_dxa: bool) -> np.ndarray:
    m = transform.as_affine()
    if not fixed_is_dxa:
        m = np.linalg.inv(m)
    return np.array([[m[0, 0], m[0, 1], m[0, 3]], [m[1, 0], m[1, 1], m[1, 3]], [0, 0, 1.0]])


@pytest.mark.parametrize("name", ["contrastive-dense", "contrastive-salient"])
def test_methods_register_both_directions(name: str, shared_encoder_model) -> None:
    pair = same_modality_pair(3, angle=5.0, shift=(8.0, -6.0))
    models = {"contrastive": str(shared_encoder_model)}
    assert model_family(name) == "contrastive"
    tolerance = 1.0 if name == "contrastive-dense" else 4.0
    for fixed_is_dxa in (True, False):
        method = get_method(
            f"{name}:fixed_modality={'dxa' if fixed_is_dxa else 'mr'}", models=models
        )
        fixed, moving = (pair.dxa, pair.mr) if fixed_is_dxa else (pair.mr, pair.dxa)
        result = method.register(fixed, moving)
        estimate = _dxa_to_mr(result.transform, fixed_is_dxa)
        assert pair.error(estimate) < tolerance < pair.initial_error
        assert abs(angle_of(estimate) - 5.0) < 1.0
        extras = result.extras
        json.dumps(extras)  # JSON-serialisable
        assert extras["fixed_modality"] == ("dxa" if fixed_is_dxa else "mr")
        assert len(extras["keypoints_fixed"]) == len(extras["keypoints_moving"])
        if name == "contrastive-salient":
            assert extras["n_inliers"] >= 4
            assert method_columns(extras) == {"salient_fallback": 0.0}
            # min_inliers beyond any match count: the dense estimate, reported per pair.
            strict = get_method(f"{name}:min_inliers=100000", models=models)
            fallback = strict.register(fixed, moving).extras
            assert fallback["fallback"] == "dense"
            assert method_columns(fallback) == {"salient_fallback": 1.0}
            fixed_pts = np.asarray(extras["keypoints_fixed"])
            moving_pts = np.asarray(extras["keypoints_moving"])
            mapped = result.transform.map_points(fixed_pts)
            assert np.median(np.linalg.norm(mapped - moving_pts, axis=1)) < 8.0


def test_auto_modality_and_initial_transform(shared_encoder_model) -> None:
    pair = same_modality_pair(4, angle=-4.0, shift=(-5.0, 10.0))
    method = get_method("contrastive-dense", models={"contrastive": str(shared_encoder_model)})
    # Larger field of view slides better as the "DXA": auto picks the real DXA.
    result = method.register(pair.dxa, pair.mr)
    assert result.extras["fixed_modality"] == "dxa"
    assert pair.error(_dxa_to_mr(result.transform, True)) < 1.5
    # An initial transform is refined and included in the result.
    shift = np.eye(4)
    shift[:2, 3] = [6.0, -4.0]
    initial = Transform.from_affine(shift, ndim=3)
    again = method.register(pair.dxa, pair.mr, initial=initial)
    assert pair.error(_dxa_to_mr(again.transform, True)) < 1.5
    np.testing.assert_allclose(again.transform.as_affine(), result.transform.as_affine(), atol=1.0)


def test_channel_mismatch_is_an_input_error(shared_encoder_model) -> None:
    from mmreg.errors import InputError
    from mmreg.imaging.image import Image

    pair = same_modality_pair(5, angle=0.0, shift=(0.0, 0.0))
    dxa = Image(np.ascontiguousarray(pair.dxa.data[..., 0]), pair.dxa.affine)
    mr = Image(np.ascontiguousarray(pair.mr.data[..., 0]), pair.mr.affine)
    models = {"contrastive": str(shared_encoder_model)}
    with pytest.raises(InputError, match="2-channel DXA"):
        get_method("contrastive-dense", models=models).register(dxa, mr)
    with pytest.raises(InputError, match="reads 2 channel"):
        get_method("contrastive-dense:fixed_modality=dxa", models=models).register(dxa, mr)


def test_rigid_helper_matches_truth_convention() -> None:
    pair = same_modality_pair(6, angle=3.0, shift=(1.0, 2.0))
    assert pair.error(rigid(3.0, (1.0, 2.0))) == pytest.approx(0.0, abs=1e-9)


def test_pull_back_deformable_initial_matches_linear() -> None:
    from mmreg.imaging.image import Grid
    from mmreg.methods.contrastive.data import ChannelImage
    from mmreg.methods.contrastive.register import pull_back

    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 1.0, 1.0])
    moving = ChannelImage(rng.random((2, 20, 24)), affine)
    fixed = ChannelImage(np.zeros((1, 20, 24)), affine)
    shift = np.eye(4)
    shift[:2, 3] = [3.0, -2.0]
    linear = Transform.from_affine(shift, ndim=2)
    # The same shift as a constant displacement field.
    grid = Grid((20, 24), affine)
    field = np.zeros((20, 24, 3))
    field[..., :2] = [3.0, -2.0]
    deformable = Transform.from_field(grid, field)
    a = pull_back(moving, linear, fixed)
    b = pull_back(moving, deformable, fixed)
    from mmreg.methods.contrastive.data import sample, working_grid

    resampled = sample(a, working_grid(fixed.centre, fixed.shape, 2.0), fixed.shape)
    np.testing.assert_allclose(b.data[:, 3:-3, 3:-3], resampled[:, 3:-3, 3:-3], atol=1e-5)
