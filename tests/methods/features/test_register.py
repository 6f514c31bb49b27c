"""``mind-io`` and ``dns-io`` as registration methods: known deformations, chains, files."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from mmreg.errors import InputError, UsageError
from mmreg.imaging.image import Image
from mmreg.imaging.transform import FieldStep, Transform
from mmreg.methods import get_method, run_chain
from mmreg.methods.features.register import folding_percent, pca_reduce, unit_range
from tests.methods.conftest import centred_affine, head, second_contrast

FAST = "grid=2:window=3:samples=2000"


def _deformed_pair(shape: tuple[int, ...], spacing: float, amplitude: float):
    """Fixed head; moving = its second contrast pulled through a smooth sine field.

    The truth is ``T(x) = x + d(x)``; the moving image is built with the approximate
    inverse ``x - d(x)``, exact to second order in the (small, smooth) field.
    """
    affine = centred_affine(shape, spacing)
    data = head(shape, seed=3)
    fixed = Image(data, affine)
    grid = fixed.grid
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    d = np.zeros((*shape, 3))
    d[..., 0] = amplitude * np.sin(2 * np.pi * ijk[..., 1] / shape[1])
    d[..., 1] = amplitude * np.cos(2 * np.pi * ijk[..., 0] / shape[0])
    truth = Transform.from_field(grid, d)
    inverse = Transform.from_field(grid, -d)
    moving = inverse.apply(Image(second_contrast(data), affine), grid)
    inside = np.argwhere(data > 0.3)[::25]
    points = grid.voxel_to_world(inside)
    return fixed, moving, truth, points


def _error(transform: Transform, truth: Transform, points: np.ndarray) -> float:
    diff = transform.map_points(points) - truth.map_points(points)
    return float(np.linalg.norm(diff, axis=1).mean())


@pytest.fixture(scope="module")
def deformed3d():
    return _deformed_pair((40, 44, 40), 2.0, 3.0)


def test_mind_io_recovers_a_smooth_deformation(deformed3d):
    fixed, moving, truth, points = deformed3d
    before = _error(Transform.identity(), truth, points)
    result = get_method(f"mind-io:{FAST}").register(fixed, moving, seed=1)
    after = _error(result.transform, truth, points)
    assert before > 2.5
    assert after < 0.45 * before, (before, after)
    assert isinstance(result.transform.steps[0], FieldStep)
    assert result.extras["neg_jacobian_pct"] < 0.5
    assert result.extras["opt"] == "convex"  # mind-io's default


@pytest.mark.parametrize("opt", ["convex", "mok"])
def test_each_optimiser_alone_helps(deformed3d, opt):
    fixed, moving, truth, points = deformed3d
    before = _error(Transform.identity(), truth, points)
    spec = f"mind-io:{FAST}:opt={opt}:iterations=30"
    after = _error(get_method(spec).register(fixed, moving).transform, truth, points)
    assert after < 0.8 * before, (opt, before, after)


def test_the_result_includes_the_initial_transform(deformed3d):
    fixed, moving, truth, points = deformed3d
    shift = np.eye(4)
    shift[:3, 3] = (4.0, -2.0, 1.0)
    # The moving image displaced by +shift in world space: the truth becomes shift o T.
    moved = Image(moving.data, shift @ moving.grid.affine)
    initial = Transform.from_affine(shift)
    result = get_method(f"mind-io:{FAST}").register(fixed, moved, initial=initial)
    target = truth.then(initial)
    assert _error(result.transform, target, points) < 0.45 * _error(initial, target, points)
    assert np.allclose(result.transform.steps[-1].matrix, shift)


def test_same_seed_same_field(deformed3d):
    fixed, moving, _, _ = deformed3d
    method = get_method(f"mind-io:{FAST}")
    a = method.register(fixed, moving, seed=5).transform.steps[0].vectors
    b = method.register(fixed, moving, seed=5).transform.steps[0].vectors
    assert np.array_equal(a, b)


def test_h5_round_trip_through_simpleitk(deformed3d, tmp_path):
    fixed, moving, _, points = deformed3d
    result = get_method(f"mind-io:{FAST}:opt=convex:iterations=0").register(fixed, moving)
    path = result.transform.write(tmp_path / "xfm.h5")
    back = Transform.read(path)
    assert np.allclose(back.map_points(points), result.transform.map_points(points), atol=1e-3)
    itk = sitk.ReadTransform(str(path))
    lps = points * [-1, -1, 1]
    mapped = np.array([itk.TransformPoint(tuple(p)) for p in lps]) * [-1, -1, 1]
    assert np.allclose(mapped, result.transform.map_points(points), atol=1e-3)


def test_chain_after_an_affine(deformed3d):
    fixed, moving, truth, points = deformed3d
    affine = run_chain("ants-affine", fixed, moving)
    result = run_chain(f"ants-affine+mind-io:{FAST}", fixed, moving)
    assert [s["method"] for s in result.extras["steps"]] == ["ants-affine", "mind-io"]
    assert _error(result.transform, truth, points) < 0.8 * _error(affine.transform, truth, points)
    assert result.runtime_s > affine.runtime_s * 0.5


def test_two_dimensional_images():
    fixed, moving, truth, points = _deformed_pair((64, 60), 2.0, 2.5)
    result = get_method("mind-io:grid=2:window=3:samples=1000").register(fixed, moving)
    assert result.transform.ndim == 2
    before, after = (
        _error(Transform(ndim=2), truth, points),
        _error(result.transform, truth, points),
    )
    assert after < 0.6 * before, (before, after)


def test_folding_guard_smooths_until_the_limit():
    rng = np.random.default_rng(0)
    fixed = Image(rng.random((24, 24, 24)).astype(np.float32), np.eye(4))
    moving = Image(rng.random((24, 24, 24)).astype(np.float32), np.eye(4))
    spec = "mind-io:grid=2:window=3:opt=convex:lambda_reg=0:iterations=30:max_folding=0.1"
    result = get_method(spec).register(fixed, moving)
    assert result.extras["neg_jacobian_pct"] <= 0.1


def test_folding_percent_by_hand():
    u = torch.zeros(1, 2, 5, 5)
    assert folding_percent(u) == 0.0
    u[0, 0] = -2.0 * torch.arange(5.0)[:, None]  # p0 + u0 = -p0: a mirror, det = -1
    assert folding_percent(u) == 100.0


def test_unit_range():
    data = np.concatenate([np.zeros(500), np.linspace(10, 20, 1001), [1e6]])
    x = unit_range(data)
    assert x.shape == (1, 1, 1502)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # The range is the tissue's (nonzero voxels), so 15 is about halfway; the hot voxel
    # does not squash it.
    assert float(x[0, 0, 1000]) == pytest.approx(0.5, abs=0.02)
    assert float(x[0, 0, 0]) == 0.0
    binary = unit_range(np.array([0.0, 1.0, 1.0, 0.0]))
    assert binary.flatten().tolist() == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mind-io:opt=fast", "opt must be one of"),
        ("mind-io:grid=0", "grid must be at least 1"),
        ("mind-io:colour=1", "unknown parameter 'colour'"),
        ("dns-io:levels=4", "levels must be"),
    ],
)
def test_bad_parameters_are_one_line(spec, message):
    with pytest.raises(UsageError, match=message) as info:
        get_method(spec)
    assert "\n" not in str(info.value)


def test_dns_io_with_a_trained_model(tmp_path):
    from mmreg.methods.features.dns import DNSConfig, DNSNet
    from mmreg.models import save_checkpoint

    torch.manual_seed(0)
    net = DNSNet(DNSConfig(channels=(4, 8), features=8))
    path = tmp_path / "dns.pt"
    save_checkpoint(
        path,
        method="dns",
        config=net.config.to_dict(),
        state_dict=net.state_dict(),
        metadata={},
    )
    fixed, moving, _, _ = _deformed_pair((32, 32, 32), 2.0, 2.0)
    result = get_method(f"dns-io:{FAST}", models={"dns": str(path)}).register(fixed, moving)
    assert result.extras["feature_channels"] == 8
    assert np.isfinite(result.transform.steps[0].vectors).all()
    both = get_method(f"dns-io:{FAST}:mind=1", models={"dns": str(path)})
    assert both.register(fixed, moving).extras["feature_channels"] == 8 + 12
    flat = _deformed_pair((40, 36), 2.0, 2.0)
    result2d = get_method(f"dns-io:{FAST}", models={"dns": str(path)}).register(*flat[:2])
    assert result2d.transform.ndim == 2


def test_dns_io_refuses_a_foreign_checkpoint(tmp_path):
    from mmreg.models import save_checkpoint

    path = tmp_path / "other.pt"
    save_checkpoint(
        path, method="keymorph", config={}, state_dict={"w": torch.ones(1)}, metadata={}
    )
    with pytest.raises(InputError):
        get_method("dns-io", models={"dns": str(path)})


def test_pca_keeps_the_leading_axes():
    torch.manual_seed(0)
    base = torch.randn(1, 1, 6, 6, 6)
    # Three channels carry one signal at different gains, a fourth only tiny noise.
    f = torch.cat([base, 2 * base, -base, 1e-3 * torch.randn_like(base)], dim=1)
    a, b = pca_reduce(f, f.clone(), 1)
    assert a.shape == (1, 1, 6, 6, 6) and torch.equal(a, b)
    # The one component is the signal itself (up to scale).
    corr = torch.corrcoef(torch.stack([a.flatten(), base.flatten()]))[0, 1]
    assert abs(float(corr)) > 0.999
    same, _ = pca_reduce(f, f, 0)
    assert same is f


def test_defaults_differ_by_feature_kind():
    from mmreg.methods.features.register import DNS_DEFAULTS, MIND_DEFAULTS

    assert MIND_DEFAULTS.opt == "convex" and DNS_DEFAULTS.opt == "both"
    assert MIND_DEFAULTS.mok_levels == 3 and DNS_DEFAULTS.mok_levels == 2
