"""The shipped contrastive weights: verified, documented, and aligning an unseen phantom."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

from mmreg.imaging.image import Image
from mmreg.methods import get_method
from mmreg.methods.contrastive import register as _contrastive  # noqa: F401  (the names)
from mmreg.models import default_model_path, load_checkpoint

SHIPPED = default_model_path("contrastive")
pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped contrastive weights")


def test_shipped_checkpoint_is_small_verified_and_documented() -> None:
    assert SHIPPED.stat().st_size <= 3 * 1024 * 1024
    checkpoint = load_checkpoint(SHIPPED, method="contrastive")
    training = checkpoint.metadata["training"]
    # Trained on phantom seeds from 20,000,000: disjoint from every seed tests use.
    first, last = training["phantom_seeds"]
    assert 20_000_000 <= first <= last
    assert training["history"] and training["wall_time_s"] > 0
    assert training["command"]


def _unseen_phantom(seed: int) -> tuple[Any, Image, Image]:
    """A phantom subject no weights saw: its DXA (fixed) and MR mid-coronal slice (moving)."""
    from mmreg.imaging.phantoms.wholebody import generate_wholebody_subject
    from mmreg.imaging.slice_synthesis import synthesize_coronal_slice

    torch.set_num_threads(1)
    subject = generate_wholebody_subject(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mid = synthesize_coronal_slice([subject.mr_fat, subject.mr_water])
    dxa = np.stack([subject.dxa_bone.data, subject.dxa_tissue.data], axis=-1)
    mr = np.stack([im.data for im in mid.images], axis=-1)
    fixed = Image(dxa.astype(np.float32), subject.dxa_bone.affine)
    moving = Image(mr.astype(np.float32), mid.grid.affine)
    return subject, fixed, moving


def test_shipped_weights_align_an_unseen_phantom() -> None:
    from mmreg.imaging.phantoms.wholebody import LANDMARK_NAMES

    subject, fixed, moving = _unseen_phantom(7)
    points = np.array([subject.landmarks_dxa[k] for k in LANDMARK_NAMES])
    truth = np.array([subject.landmarks_mr_slice[k] for k in LANDMARK_NAMES])
    result = get_method("contrastive-dense").register(fixed, moving)
    after = np.linalg.norm(result.transform.map_points(points) - truth, axis=1).mean()
    before = np.linalg.norm(points - truth, axis=1).mean()
    assert before > 80.0  # the phantom's scans are far apart in world coordinates
    assert after < 30.0, (before, after)


REFINE = default_model_path("contrastive-refine")


@pytest.mark.skipif(not REFINE.is_file(), reason="no shipped contrastive-refine weights")
def test_shipped_refine_is_documented_and_aligns_an_unseen_phantom() -> None:
    from mmreg.imaging.phantoms.wholebody import LANDMARK_NAMES
    from mmreg.methods.contrastive import refine as _refine  # noqa: F401  (registers it)

    assert REFINE.stat().st_size <= 3 * 1024 * 1024
    checkpoint = load_checkpoint(REFINE, method="contrastive-refine")
    training = checkpoint.metadata["training"]
    assert training["phantom_seeds"][0] >= 20_000_000 and training["command"]
    # Trained to undo known perturbations: it must have learned (validation error, mm).
    history = training["history"]
    assert history[-1]["val_error_mm"] < 0.2 * history[0]["val_start_error_mm"]

    subject, fixed, moving = _unseen_phantom(7)
    # Hips and S1 (the shoulders move between the scans: no rigid map fits them).
    names = [n for n in LANDMARK_NAMES if not n.startswith("humeral")]
    points = np.array([subject.landmarks_dxa[k] for k in names])
    truth = np.array([subject.landmarks_mr_slice[k] for k in names])
    result = get_method("contrastive-refine").register(fixed, moving)
    after = np.linalg.norm(result.transform.map_points(points) - truth, axis=1).mean()
    assert after < 10.0, after
    assert len(result.extras["refine_steps"]) == 3
