"""KeyMorph methods: fitting and refinement logic, the method contract, parameters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmreg.errors import InputError, UsageError
from mmreg.imaging.image import Grid, Image
from mmreg.imaging.transform import AffineStep, FieldStep, Transform
from mmreg.methods import get_method, model_family
from mmreg.methods.keymorph import register as km
from mmreg.methods.keymorph.model import DetectorConfig, build_detector
from mmreg.models import save_checkpoint

from factories import smooth_head

torch.set_num_threads(1)


def centred_affine(shape: tuple[int, ...], spacing: float) -> np.ndarray:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[: len(shape), 3] = -spacing * (np.asarray(shape, dtype=float) - 1.0) / 2.0
    return affine


def rigid_matrix(degrees_z: float, degrees_x: float, shift: tuple[float, ...]) -> np.ndarray:
    a, b = np.deg2rad(degrees_z), np.deg2rad(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = np.eye(4)
    m[:3, :3] = rz @ rx
    m[: len(shift), 3] = shift
    return m


def head(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return smooth_head(shape, seed=seed)


def _checkpoint(path: Path, ndim: int = 3, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = DetectorConfig(
        ndim=ndim, n_keypoints=8, input_size=16, input_mm=96.0, channels=(2, 4, 4)
    )
    save_checkpoint(
        path,
        method="keymorph",
        config={"detector": config.to_dict(), "spacing_mm": 2.0},
        state_dict=build_detector(config).state_dict(),
        metadata={},
    )
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("km") / "tiny.pt")


@pytest.fixture(scope="module")
def images() -> tuple[Image, Image]:
    shape = (24, 26, 22)
    affine = centred_affine(shape, 3.0)
    data = head(shape, seed=2)
    return Image(data, affine), Image(1.0 - data * (data > 0), affine.copy())


def _oracle(monkeypatch: pytest.MonkeyPatch, fixed: Image, truth: np.ndarray, ndim: int) -> None:
    """Replace detection by perfect keypoints (plus three gross outliers on the moving side).

    The method smooths its inputs (new arrays, same affine object), so the fixed image
    is recognised by its affine object.
    """
    rng = np.random.default_rng(0)
    points = np.zeros((20, 3))
    points[:, :ndim] = rng.uniform(-25, 25, (20, ndim))
    moved = points @ truth[:3, :3].T + truth[:3, 3]
    moved[:3, :ndim] += 30.0

    def detect_one(image: Image, transform: Transform | None) -> np.ndarray:
        if image.affine is fixed.affine:
            return points.copy()
        if transform is None:
            return moved.copy()
        inv = np.linalg.inv(transform.as_affine())
        return moved @ inv[:3, :3].T + inv[:3, 3]

    def detect(self, model, images, grids, transforms, device):
        return [detect_one(im, t) for im, t in zip(images, transforms, strict=True)]

    monkeypatch.setattr(km.KeyMorphMethod, "_detect", detect)


def _moved(fixed: Image, truth: np.ndarray) -> Image:
    """A second contrast of ``fixed`` seen through ``truth``: moving(truth(x)) ~ f(fixed(x))."""
    contrast = Image(1.0 - fixed.data * (fixed.data > 0), fixed.affine)
    inverse = Transform.from_affine(np.linalg.inv(truth), ndim=fixed.ndim)
    return inverse.apply(contrast, Grid(fixed.shape, fixed.affine.copy()))


@pytest.mark.parametrize("kind", ["rigid", "affine", "tps"])
def test_oracle_keypoints_give_the_true_transform_3d(monkeypatch, tiny_model, images, kind):
    fixed, _ = images
    truth = rigid_matrix(150.0, 40.0, (6.0, -4.0, 3.0))
    moving = _moved(fixed, truth)
    _oracle(monkeypatch, fixed, truth, 3)
    method = km.make_method(kind, model=tiny_model)
    result = method.register(fixed, moving)
    probe = fixed.grid.world_coordinates().reshape(-1, 3)[::37]
    expected = probe @ truth[:3, :3].T + truth[:3, 3]
    assert np.allclose(result.transform.map_points(probe), expected, atol=1e-4)
    assert result.extras["inlier_fraction"] == pytest.approx(17 / 20)
    assert result.extras["keypoint_residual_mm"] < 1e-6
    if kind == "tps":
        steps = result.transform.steps
        assert isinstance(steps[0], FieldStep) and isinstance(steps[-1], AffineStep)
        # The field covers the fixed grid (on every other voxel).
        corner = fixed.grid.voxel_to_world([np.asarray(fixed.shape) - 1])
        assert np.all(steps[0].grid.world_to_voxel(corner) <= np.asarray(steps[0].grid.shape) - 1)
        assert np.allclose(steps[0].grid.spacing, 2 * np.asarray(fixed.spacing))
        assert result.extras["lambda"] == km.DEFAULT_LAMBDA
    else:
        assert result.transform.is_linear


def test_oracle_2d_and_an_initial_transform_is_considered(monkeypatch, tmp_path):
    model = _checkpoint(tmp_path / "tiny2d.pt", ndim=2)
    shape = (30, 34)
    affine = centred_affine(shape, 2.0)
    fixed = Image(head(shape, seed=1), affine)
    truth = rigid_matrix(-120.0, 0.0, (5.0, 2.0))
    _oracle(monkeypatch, fixed, truth, 2)
    initial = Transform.from_affine(rigid_matrix(-100.0, 0.0, (0.0, 0.0)), ndim=2)
    moving = _moved(fixed, truth)  # a new affine object: the oracle tells them apart
    always = {"accept": "0"}  # search even when a start already fits
    result = km.make_method("affine", model=model, params=always).register(
        fixed, moving, initial=initial
    )
    assert np.allclose(result.transform.as_affine(), truth, atol=1e-6)
    starts = result.extras["start_residuals_mm"]
    assert {"keypoints", "initial"} <= set(starts) and len(starts) == 2 + 8  # 8 2D rotations
    assert len(result.extras["refined_residuals_mm"]) == 2
    assert len(result.extras["start_nmi"]) == 10
    assert result.extras["searched"] is True
    # Perfect keypoints explain every start exactly: by default the search is skipped.
    quick = km.make_method("affine", model=model).register(fixed, moving, initial=initial)
    assert np.allclose(quick.transform.as_affine(), truth, atol=1e-6)
    assert set(quick.extras["start_residuals_mm"]) == {"keypoints", "initial"}
    assert quick.extras["searched"] is False


def test_contract_with_a_real_tiny_model(tiny_model, images):
    fixed, moving = images
    method = get_method("keymorph-affine", models={"keymorph": str(tiny_model)})
    before = torch.get_num_threads()
    a = method.register(fixed, moving, threads=1)
    b = method.register(fixed, moving, threads=1)
    c = method.register(fixed, moving, threads=2)
    assert torch.get_num_threads() == before
    assert np.array_equal(a.transform.as_affine(), b.transform.as_affine())
    # Other thread counts sum in another order: equal up to rounding.
    assert np.allclose(a.transform.as_affine(), c.transform.as_affine(), atol=1e-3)
    extras = json.loads(json.dumps(a.extras))
    assert np.asarray(extras["keypoints_fixed"]).shape == (8, 3)
    assert np.asarray(extras["keypoints_moving"]).shape == (8, 3)
    from mmreg.provenance import sha256_file

    assert extras["model_sha256"] == sha256_file(tiny_model)
    # Fixed keypoints lie in the input cube around the fixed image (96 mm side).
    centre = np.asarray(extras["keypoints_fixed"]).mean(0)
    assert np.all(np.abs(np.asarray(extras["keypoints_fixed"]) - centre) <= 96.0)


def test_tps_with_a_real_tiny_model_returns_a_field_then_affine(tiny_model, images):
    fixed, moving = images
    method = get_method("keymorph-tps:lambda=1", models={"keymorph": str(tiny_model)})
    result = method.register(fixed, moving)
    assert method.deformable and not result.transform.is_linear
    assert result.extras["lambda"] == 1.0
    assert np.isfinite(result.transform.map_points(np.zeros((1, 3)))).all()


def test_dimension_mismatch_and_missing_model(tmp_path, images):
    fixed, moving = images
    model2d = _checkpoint(tmp_path / "m2d.pt", ndim=2)
    with pytest.raises(InputError, match="2D but the images are 3D"):
        km.make_method("affine", model=model2d).register(fixed, moving)
    with pytest.raises(InputError, match="not found"):
        km.make_method("affine", model=tmp_path / "none.pt").register(fixed, moving)


def test_names_parameters_and_family(tiny_model):
    assert model_family("keymorph-tps:lambda=0.1") == "keymorph"
    tps = get_method("keymorph-tps:lambda=0.01:passes=2", models={"keymorph": str(tiny_model)})
    assert isinstance(tps, km.KeyMorphMethod)
    assert (tps.options.lam, tps.options.passes, tps.name) == (0.01, 2, "keymorph-tps")
    assert get_method("keymorph-rigid").model_path is None  # shipped weights by default
    for spec, match in [
        ("keymorph-affine:lambda=1", "unknown parameter 'lambda'"),
        ("keymorph-rigid:foo=1", "unknown parameter 'foo'"),
        ("keymorph-tps:lambda=abc", "not a number"),
        ("keymorph-tps:lambda=-1", "non-negative"),
        ("keymorph-affine:passes=2.5", "whole number"),
    ]:
        with pytest.raises(UsageError, match=match):
            get_method(spec)


def test_search_rotations_cover_all_poses():
    rots = km._search_rotations(3)
    assert len(rots) == 24
    assert all(np.allclose(r @ r.T, np.eye(3)) and np.linalg.det(r) > 0 for r in rots)
    assert len({tuple(np.round(r, 6).ravel()) for r in rots}) == 24
    # Any rotation is within the cube group's covering radius (62.8 degrees) of one of them.
    from scipy.spatial.transform import Rotation

    for q in Rotation.random(200, random_state=0).as_matrix():
        angles = [np.degrees(np.arccos(np.clip((np.trace(r.T @ q) - 1) / 2, -1, 1))) for r in rots]
        assert min(angles) <= 62.9
    assert len(km._search_rotations(2)) == 8


def test_normalized_mutual_information_by_hand():
    a = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(4)
    # Two equally likely joint states, each image 1 bit: (1 + 1) / 1.
    assert km.normalized_mutual_information(a, 1.0 - a) == pytest.approx(2.0)
    b = torch.tensor([0.0, 1.0, 0.0, 1.0]).repeat(4)  # independent of a: (1 + 1) / 2
    assert km.normalized_mutual_information(a + 0.5, b + 0.5) == pytest.approx(1.0)


def test_search_and_keep_parameters():
    method = get_method("keymorph-rigid:search=0:keep=3")
    assert method.options.search is False and method.options.keep == 3
    with pytest.raises(UsageError, match="search must be 0 or 1"):
        get_method("keymorph-rigid:search=2")
    assert get_method("keymorph-affine").options.accept == km.DEFAULT_ACCEPT_MM
    assert get_method("keymorph-affine:accept=0").options.accept == 0.0
    with pytest.raises(UsageError, match="accept must be a non-negative number"):
        get_method("keymorph-affine:accept=-1")
