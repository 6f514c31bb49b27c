"""SimpleITK baselines: recovery of a known rigid transform across contrasts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmreg.errors import RegistrationError
from mmreg.methods import get_method


@pytest.mark.parametrize("name", ["sitk-rigid", "sitk-affine"])
def test_recovers_a_rigid_transform_in_3d(pair3d, name: str) -> None:
    assert pair3d.initial_error > 5.0
    result = get_method(name).register(pair3d.fixed, pair3d.moving, seed=0)
    error = pair3d.error(result.transform)
    assert error < 2.0
    assert error < pair3d.initial_error / 3
    assert result.transform.is_linear
    assert result.runtime_s > 0.0
    extras = json.loads(json.dumps(result.extras))
    assert extras["metric"] == "mattes_mi"
    assert extras["final_metric"] < 0.0  # ITK's Mattes MI is negated
    assert extras["iterations"] > 0


def test_recovers_a_rigid_transform_in_2d(pair2d) -> None:
    result = get_method("sitk-rigid").register(pair2d.fixed, pair2d.moving, seed=0)
    assert result.transform.ndim == 2
    assert pair2d.error(result.transform) < 1.0
    # A 2D transform leaves z alone.
    np.testing.assert_allclose(result.transform.as_affine()[2], [0, 0, 1, 0], atol=1e-12)


@pytest.mark.parametrize("name", ["sitk-rigid", "sitk-affine"])
def test_same_seed_gives_the_same_result(pair3d, name: str) -> None:
    method = get_method(name)
    a = method.register(pair3d.fixed, pair3d.moving, seed=3, threads=1)
    b = method.register(pair3d.fixed, pair3d.moving, seed=3, threads=1)
    np.testing.assert_array_equal(a.transform.as_affine(), b.transform.as_affine())
    assert a.extras["final_metric"] == b.extras["final_metric"]


def test_initial_transform_is_honoured_and_included(pair3d) -> None:
    # Started from the truth, the method has nothing to correct: it must stay there,
    # and the returned transform must include the initial one.
    result = get_method("sitk-rigid").register(
        pair3d.fixed, pair3d.moving, initial=pair3d.truth, seed=0
    )
    assert pair3d.error(result.transform) < 1.0
    assert result.extras["initialised"] == "given"


def test_no_overlap_is_refused_before_the_engine_runs(pair3d, far_initial) -> None:
    with pytest.raises(RegistrationError, match=r"^sitk-rigid: .*0% of the fixed image"):
        get_method("sitk-rigid").register(pair3d.fixed, pair3d.moving, initial=far_initial(3))


def test_engine_failure_is_a_one_line_registration_error(pair3d, far_initial) -> None:
    method = get_method("sitk-rigid")
    method.min_overlap = 0.0  # let ITK itself find out
    with pytest.raises(RegistrationError) as info:
        method.register(pair3d.fixed, pair3d.moving, initial=far_initial(3), seed=0)
    message = str(info.value)
    assert message.startswith("sitk-rigid: All samples map outside moving image buffer")
    assert "\n" not in message
    assert "/" not in message  # no source paths from ITK
