"""The shipped demo weights: loadable, documented, and registering unseen demo brains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmreg.imaging.preprocess import PreprocessOptions, preprocess
from mmreg.methods import get_method
from mmreg.methods.keymorph import register as _km  # noqa: F401  (registers the names)
from mmreg.models import default_model_path, load_checkpoint

torch.set_num_threads(1)

SHIPPED = default_model_path("keymorph")
pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped KeyMorph weights")


def test_shipped_checkpoint_is_small_verified_and_documented():
    assert SHIPPED.stat().st_size <= 3 * 1024 * 1024
    ckpt = load_checkpoint(SHIPPED, method="keymorph")
    assert ckpt.config["detector"]["ndim"] == 3
    training = ckpt.metadata["training"]
    assert training["settings"]["seed"] >= 10_000_000
    seeds = ckpt.metadata["training_data"]["subject_seeds"]
    # Disjoint from the seeds tests and benchmarks generate brains with (< 10 million).
    assert seeds and min(seeds.values()) >= 10_000_000
    assert training["wall_time_s"] > 0 and training["history"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
def test_shipped_weights_register_a_rotated_demo_brain(seed: int):
    from mmreg.imaging.phantoms.brain import generate_brain_subject

    s = generate_brain_subject(seed, large_rotations=True, extra_deformation_mm=0.0)
    options = PreprocessOptions()
    fixed, moving = preprocess(s.t1w, options), preprocess(s.t2w, options)
    result = get_method("keymorph-affine").register(fixed, moving)
    pts = np.array(list(s.landmarks_fixed.values()))
    error = np.linalg.norm(result.transform.map_points(pts) - s.fixed_to_moving(pts), axis=1)
    assert s.metadata["rotation_angle_deg"] != 0
    assert float(error.mean()) < 6.0
