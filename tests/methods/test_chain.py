"""``A+B`` chains: A's full transform initialises B."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmreg.errors import RegistrationError
from mmreg.methods import get_method, run_chain


@pytest.mark.parametrize("spec", ["identity+ants-affine", "sitk-rigid+ants-affine"])
def test_chains_recover_the_transform(pair3d, spec: str) -> None:
    result = run_chain(spec, pair3d.fixed, pair3d.moving, seed=0)
    assert pair3d.error(result.transform) < 2.0
    steps = result.extras["steps"]
    assert [s["method"] for s in steps] == spec.split("+")
    assert result.runtime_s == pytest.approx(sum(s["runtime_s"] for s in steps))
    assert result.extras["final_metric"] == steps[-1]["extras"]["final_metric"]
    json.dumps(result.extras)


def test_each_step_starts_from_the_previous_result(pair2d) -> None:
    # identity passes the initial on; the last identity returns it unchanged.
    result = run_chain("identity+identity", pair2d.fixed, pair2d.moving, initial=pair2d.truth)
    assert result.transform is pair2d.truth
    refined = run_chain("sitk-rigid+identity", pair2d.fixed, pair2d.moving, seed=0)
    alone = get_method("sitk-rigid").register(pair2d.fixed, pair2d.moving, seed=0)
    np.testing.assert_array_equal(refined.transform.as_affine(), alone.transform.as_affine())


def test_single_name_is_the_method_itself(pair2d) -> None:
    result = run_chain("identity", pair2d.fixed, pair2d.moving)
    assert "steps" not in result.extras


def test_a_failing_step_fails_the_chain(pair2d, far_initial) -> None:
    with pytest.raises(RegistrationError, match=r"^sitk-rigid: "):
        run_chain("identity+sitk-rigid", pair2d.fixed, pair2d.moving, initial=far_initial(2))
