"""ANTs baselines (antspyx): recovery, determinism, initial-transform semantics, hygiene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmreg.errors import RegistrationError, UsageError
from mmreg.imaging.image import Image
from mmreg.imaging.transform import AffineStep, FieldStep, Transform
from mmreg.methods import get_method, parse_methods
from mmreg.methods.ants import AntsAIMethod, AntsMethod, AntsSettings, SearchSettings

pytest.importorskip("ants")


def _zero_iterations() -> AntsMethod:
    """An ANTs affine registration that does not move: it shows what ANTs returns."""
    return AntsMethod(
        "ants-affine-0", AntsSettings("Affine", iterations=(0, 0, 0)), deformable=False
    )


@pytest.mark.parametrize("name", ["ants-rigid", "ants-affine"])
def test_recovers_a_rigid_transform_in_3d(pair3d, name: str) -> None:
    result = get_method(name).register(pair3d.fixed, pair3d.moving, seed=0)
    error = pair3d.error(result.transform)
    assert error < 2.0
    assert error < pair3d.initial_error / 3
    assert result.transform.is_linear
    extras = json.loads(json.dumps(result.extras))
    assert extras["transform_files"] == ["out_0GenericAffine.mat"]
    assert extras["initialised"] == "center_of_mass"


def test_syn_recovers_and_is_deformable(pair3d) -> None:
    result = get_method("ants-syn").register(pair3d.fixed, pair3d.moving, seed=0)
    assert pair3d.error(result.transform) < pair3d.initial_error / 3
    assert not result.transform.is_linear
    assert any(isinstance(s, FieldStep) for s in result.transform.steps)
    # fwdtransforms [1Warp, 0GenericAffine]: the warp acts first on a fixed point.
    assert isinstance(result.transform.steps[0], FieldStep)
    json.dumps(result.extras)


def test_recovers_a_rigid_transform_in_2d(pair2d) -> None:
    result = get_method("ants-rigid").register(pair2d.fixed, pair2d.moving, seed=0)
    assert result.transform.ndim == 2
    assert pair2d.error(result.transform) < 1.0


_REPEAT = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from conftest import make_pair, rigid_matrix
from mmreg.methods import get_method

pair = make_pair((40, 40, 40), 2.5, rigid_matrix(10.0, 5.0, (5.0, -3.0, 2.0)))
method = get_method("ants-affine")
a, b = (method.register(pair.fixed, pair.moving, seed=5, threads=1) for _ in range(2))
print(float(np.abs(a.transform.as_affine() - b.transform.as_affine()).max()))
"""


def test_same_seed_gives_the_same_result() -> None:
    # In a fresh process: ANTs' ITK fixes its thread count at its first use in a
    # process, and other tests may have used ANTs with several threads already.
    out = subprocess.run(
        [sys.executable, "-c", _REPEAT, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"},
    )
    assert float(out.stdout.strip().splitlines()[-1]) == 0.0


def test_output_includes_a_linear_initial_transform(pair3d) -> None:
    # With zero iterations ANTs' output is its starting point: the initial transform.
    result = _zero_iterations().register(pair3d.fixed, pair3d.moving, initial=pair3d.truth)
    np.testing.assert_allclose(result.transform.as_affine(), pair3d.truth.as_affine(), atol=1e-4)
    assert result.extras["initialised"] == "given"


def test_output_includes_a_deformable_initial_transform(pair3d) -> None:
    grid = pair3d.fixed.grid
    world = grid.world_coordinates()
    bump = np.exp(-np.sum(world**2, axis=-1) / (2 * 15.0**2))
    vectors = np.stack([3.0 * bump, -2.0 * bump, 1.0 * bump], axis=-1)
    initial = Transform.from_field(grid, vectors).then(pair3d.truth)
    result = _zero_iterations().register(pair3d.fixed, pair3d.moving, initial=initial)
    points = world.reshape(-1, 3)[::37]
    np.testing.assert_allclose(
        result.transform.map_points(points), initial.map_points(points), atol=1e-3
    )


def test_initial_transform_is_honoured(pair3d) -> None:
    result = get_method("ants-affine").register(
        pair3d.fixed, pair3d.moving, initial=pair3d.truth, seed=0
    )
    assert pair3d.error(result.transform) < 1.0


def test_writes_only_into_a_removed_scratch_folder_of_the_cwd(
    pair2d, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    get_method("ants-rigid").register(pair2d.fixed, pair2d.moving, initial=pair2d.truth)
    assert list(tmp_path.iterdir()) == []


def test_no_overlap_is_refused_before_the_engine_runs(pair2d, far_initial) -> None:
    with pytest.raises(RegistrationError, match=r"^ants-rigid: .*do not overlap"):
        get_method("ants-rigid").register(pair2d.fixed, pair2d.moving, initial=far_initial(2))


def test_engine_failure_is_a_one_line_registration_error(
    pair2d, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ants

    def fail(*args, **kwargs):
        raise RuntimeError("Registration failed with error code 1")

    monkeypatch.setattr(ants, "registration", fail)
    with pytest.raises(RegistrationError) as info:
        get_method("ants-syn").register(pair2d.fixed, pair2d.moving)
    assert str(info.value) == (
        "ants-syn: antsRegistration failed (Registration failed with error code 1)"
    )


# ----------------------------------------------------------------------------- ants-ai


def _turn(degrees: float, ndim: int) -> Transform:
    """A rotation by ``degrees`` about the world z axis (in-plane for 2D)."""
    a = np.deg2rad(degrees)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return Transform.from_affine(m, ndim=ndim)


def _turned(pair, degrees: float) -> tuple[Image, Transform]:
    """The pair's moving image turned by ``degrees`` (its header only, so no resampling
    blur) and the new true fixed->moving map."""
    turn = _turn(degrees, pair.fixed.ndim)
    moving = Image(pair.moving.data, turn.as_affine() @ pair.moving.affine)
    return moving, pair.truth.then(turn)


def _error(pair, transform: Transform, truth: Transform) -> float:
    diff = transform.map_points(pair.points) - truth.map_points(pair.points)
    return float(np.linalg.norm(diff, axis=1).mean())


def test_ants_ai_parameters_and_defaults() -> None:
    method = get_method("ants-ai")
    assert isinstance(method, AntsAIMethod)
    assert method.settings == SearchSettings(
        search=30.0, arc=1.0, principal=True, res=6.0, refine=True, tries=2
    )
    assert method.name == "ants-ai" and not method.deformable
    tuned = get_method("ants-ai:search=20:arc=0.5:principal=0:res=4:refine=no:tries=1")
    assert tuned.settings == SearchSettings(
        search=20.0, arc=0.5, principal=False, res=4.0, refine=False, tries=1
    )
    # The refinement is ants-affine's own method and settings.
    assert tuned.affine.settings == get_method("ants-affine").settings
    assert parse_methods("ants-ai:search=30+ants-syn") == ["ants-ai:search=30+ants-syn"]
    json.dumps(tuned.describe())


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("ants-ai:step=30", r"unknown parameter 'step'; known: arc, principal, refine"),
        ("ants-ai:search=abc", r"search='abc' is not a valid float"),
        ("ants-ai:search=2", r"search must be 5 to 90 degrees, got 2"),
        ("ants-ai:arc=1.5", r"arc must be 0.01 to 1, got 1.5"),
        ("ants-ai:res=0", r"res must be above 0"),
        ("ants-ai:res=nan", r"res must be finite"),
        ("ants-ai:principal=2", r"principal must be 0 or 1, got '2'"),
        ("ants-ai:tries=0", r"tries must be 1 to 4, got 0"),
        ("ants-ai:tries=1.5", r"tries='1.5' is not a valid int"),
    ],
)
def test_ants_ai_bad_parameters_are_one_line_usage_errors(spec: str, reason: str) -> None:
    with pytest.raises(UsageError, match=rf"^ants-ai: {reason}") as info:
        get_method(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("degrees", [150.0, -120.0, 180.0])
def test_ants_ai_recovers_a_large_in_plane_rotation_in_2d(
    pair2d, degrees: float, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    moving, truth = _turned(pair2d, degrees)  # with the pair's own 10 degrees: 160, -110, 190
    result = get_method("ants-ai").register(pair2d.fixed, moving, seed=0)
    assert result.transform.ndim == 2 and result.transform.is_linear
    assert _error(pair2d, result.transform, truth) < 1.0
    # Plain ants-affine stays in the wrong basin on the same pair.
    plain = get_method("ants-affine").register(pair2d.fixed, moving, seed=0)
    assert _error(pair2d, plain.transform, truth) > 20.0
    extras = json.loads(json.dumps(result.extras))
    assert extras["initialised"] == "rotation_search"
    # A small 2D image is searched at its own resolution (MI needs the samples).
    assert extras["search"]["spacing_mm"] == pytest.approx([2.0, 2.0])
    assert list(tmp_path.iterdir()) == []  # scratch files removed


def test_ants_ai_searches_around_the_initial_transform(pair2d) -> None:
    # A +/-10 degree search cannot reach 160 degrees from the identity, but can from an
    # initial transform 10 degrees off: only if the search starts from the initial's pose.
    moving, truth = _turned(pair2d, 150.0)
    narrow = get_method("ants-ai:arc=0.05:search=5:principal=0:refine=0")
    alone = narrow.register(pair2d.fixed, moving, seed=0)
    assert _error(pair2d, alone.transform, truth) > 20.0
    initial = _turn(150.0, 2)  # the truth is 160 degrees and a shift
    started = narrow.register(pair2d.fixed, moving, initial=initial, seed=0)
    assert _error(pair2d, started.transform, truth) < 2.0  # search only, no refinement
    assert abs(started.extras["search"]["rotation_deg"]) < 15.0  # it found the residual
    refined = get_method("ants-ai:principal=0").register(
        pair2d.fixed, moving, initial=initial, seed=0
    )
    assert _error(pair2d, refined.transform, truth) < 1.0


def test_ants_ai_output_includes_a_deformable_initial(pair2d) -> None:
    moving, truth = _turned(pair2d, 150.0)
    grid = pair2d.fixed.grid
    world = grid.world_coordinates()
    bump = np.exp(-np.sum(world**2, axis=-1) / (2 * 20.0**2))
    field = Transform.from_field(grid, np.stack([1.0 * bump, -0.5 * bump], axis=-1))
    initial = field.then(_turn(155.0, 2))
    result = get_method("ants-ai:refine=0").register(pair2d.fixed, moving, initial=initial, seed=0)
    # The search's affine acts first, then the initial (its field, then its turn).
    kinds = [type(step) for step in result.transform.steps]
    assert kinds == [AffineStep, FieldStep, AffineStep]
    assert _error(pair2d, result.transform, truth) < 2.5
    refined = get_method("ants-ai").register(pair2d.fixed, moving, initial=initial, seed=0)
    assert not refined.transform.is_linear
    assert _error(pair2d, refined.transform, truth) < 2.0


_REPEAT_AI = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from conftest import make_pair, rigid_matrix
from mmreg.imaging.transform import Transform
from mmreg.methods import get_method

pair = make_pair((40, 40, 40), 2.5, rigid_matrix(150.0, 5.0, (5.0, -3.0, 2.0)))
method = get_method("ants-ai:search=60")  # 64 starts per try: a quick search
runs = [
    method.register(pair.fixed, pair.moving, seed=5, threads=1).transform.as_affine()
    for _ in range(int(sys.argv[2]))
]
print(pair.error(Transform.from_affine(runs[0])))
print(max(float(np.abs(r - runs[0]).max()) for r in runs))
print(runs[0].tobytes().hex())
"""


def test_ants_ai_same_seed_gives_the_same_result_across_processes() -> None:
    # Fresh processes with one ITK thread (see test_same_seed_gives_the_same_result): one
    # repeats the registration, a second one checks that nothing is seeded by the clock.
    runs = [
        subprocess.run(
            [sys.executable, "-c", _REPEAT_AI, str(Path(__file__).parent), str(repeats)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
            env={**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"},
        ).stdout.split()[-3:]
        for repeats in (2, 1)
    ]
    (error, diff, matrix), (_, _, matrix2) = runs
    assert float(error) < 1.0  # 150 degrees recovered, so the repeat is not trivially equal
    assert float(diff) == 0.0
    assert matrix == matrix2


def test_ants_ai_initializer_failure_is_a_one_line_registration_error(
    pair2d, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    import ants

    def fail(*args, txfn: str, **kwargs) -> str:
        warnings.warn("ERROR: Non-zero exit status!", stacklevel=1)
        return txfn  # never written, as when antsAffineInitializer fails

    monkeypatch.setattr(ants, "affine_initializer", fail)
    with pytest.raises(RegistrationError) as info:
        get_method("ants-ai").register(pair2d.fixed, pair2d.moving)
    assert str(info.value) == (
        "ants-ai: antsAffineInitializer failed (ERROR: Non-zero exit status!)"
    )
