"""ANTs baselines (antspyx): recovery, determinism, initial-transform semantics, hygiene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmreg.errors import RegistrationError
from mmreg.imaging.transform import FieldStep, Transform
from mmreg.methods import get_method
from mmreg.methods.ants import AntsMethod, AntsSettings

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
