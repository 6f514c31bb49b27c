"""``identity``: the initial transform, unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmreg.errors import InputError
from mmreg.imaging.image import Image
from mmreg.imaging.transform import Transform
from mmreg.methods import get_method


def test_identity_without_initial_is_the_identity(pair3d) -> None:
    result = get_method("identity").register(pair3d.fixed, pair3d.moving)
    assert result.transform.ndim == 3
    np.testing.assert_array_equal(result.transform.as_affine(), np.eye(4))
    assert result.runtime_s >= 0.0
    json.dumps(result.extras)


def test_identity_returns_the_initial(pair2d) -> None:
    result = get_method("identity").register(pair2d.fixed, pair2d.moving, initial=pair2d.truth)
    assert result.transform is pair2d.truth
    assert pair2d.error(result.transform) == 0.0


def test_dimension_mismatch_is_an_input_error(pair3d, pair2d) -> None:
    with pytest.raises(InputError, match="3D but moving image is 2D"):
        get_method("identity").register(pair3d.fixed, pair2d.moving)
    with pytest.raises(InputError, match="initial transform is 2D"):
        get_method("identity").register(pair3d.fixed, pair3d.moving, initial=Transform.identity(2))


def test_identity_accepts_any_image(rng) -> None:
    img = Image(rng.random((9, 10)).astype(np.float32), np.eye(4))
    assert get_method("identity").register(img, img).transform.ndim == 2
