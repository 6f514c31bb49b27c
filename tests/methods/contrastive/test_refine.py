"""contrastive-refine: the differentiable fit, the regressor's neutral start, training, method."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmreg.methods import get_method, model_family
from mmreg.methods.contrastive.data import as_channels
from mmreg.methods.contrastive.features import encode, load_model, prepare
from mmreg.methods.contrastive.geometry import fit_rigid, rigid
from mmreg.methods.contrastive.refine import (
    RefineTrainSettings,
    Regressor,
    RegressorConfig,
    _Batch,
    fit_refine,
    refine_estimate,
    rigid_fit_torch,
    save_refine,
)
from mmreg.methods.contrastive.train import PairImages
from mmreg.training import SEED_PROTOCOL

from .conftest import same_modality_pair


def test_rigid_fit_torch_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(-50, 50, (2, 12, 2))
    dst = rng.uniform(-50, 50, (2, 12, 2))
    w = rng.uniform(0.1, 1.0, (2, 12))
    out = rigid_fit_torch(torch.from_numpy(src), torch.from_numpy(dst), torch.from_numpy(w))
    for b in range(2):
        np.testing.assert_allclose(out[b].numpy(), fit_rigid(src[b], dst[b], w[b]), atol=1e-9)


def test_untrained_regressor_keeps_the_estimate(shared_encoder_model) -> None:
    # Zero-initialised head: no displacement, equal confidence, so the weighted fit of
    # (T^-1 y, y) returns T itself.
    pair = same_modality_pair(7, angle=2.0, shift=(3.0, 1.0))
    model, _ = load_model(shared_encoder_model)
    fd = encode(model, prepare(as_channels(pair.dxa)), "dxa")
    fm = encode(model, prepare(as_channels(pair.mr)), "mr")
    batch = _Batch.from_maps([fd], [fm])
    regressor = Regressor(RegressorConfig(embed_dim=16, width=8, depth=1)).eval()
    start = torch.from_numpy(rigid(1.0, (5.0, -2.0))).float()[None]
    with torch.no_grad():
        chain = refine_estimate(regressor, batch, start, steps=2)
    assert len(chain) == 3
    torch.testing.assert_close(chain[-1], start, atol=1e-3, rtol=1e-4)


@pytest.fixture(scope="module")
def refine_checkpoint(tmp_path_factory, shared_encoder_model):
    pairs = [same_modality_pair(400 + k, angle=3.0, shift=(4.0, -2.0)) for k in range(4)]
    images = [PairImages(p.subject, as_channels(p.dxa), as_channels(p.mr)) for p in pairs]
    model, checkpoint = load_model(shared_encoder_model)
    settings = RefineTrainSettings(epochs=3, batch_size=2, width=8, depth=1, val_fraction=0.5)
    regressor, summary = fit_refine(model, images, settings, progress=False)
    path = tmp_path_factory.mktemp("refine") / "refine.pt"
    save_refine(path, model, regressor, summary, checkpoint.sha256)
    return path, summary


def test_fit_refine_summary(refine_checkpoint) -> None:
    _, summary = refine_checkpoint
    assert summary["n_aligned"] == 4 and summary["n_val"] == 2
    history = summary["history"]
    assert len(history) == 3
    # Validation starts from the same perturbations each epoch.
    assert len({round(h["val_start_error_mm"], 6) for h in history}) == 1
    assert summary["best_val_error_mm"] == min(h["val_error_mm"] for h in history)
    assert [h["epoch"] for h in history] == [1.0, 2.0, 3.0]
    assert summary["seed_protocol"] == SEED_PROTOCOL


def test_refine_method_end_to_end(refine_checkpoint) -> None:
    path, _ = refine_checkpoint
    assert model_family("contrastive-refine") == "contrastive-refine"
    pair = same_modality_pair(9, angle=4.0, shift=(6.0, -5.0))
    method = get_method(
        "contrastive-refine:fixed_modality=dxa:steps=2", models={"contrastive-refine": str(path)}
    )
    result = method.register(pair.dxa, pair.mr)
    m = result.transform.as_affine()
    estimate = np.array([[m[0, 0], m[0, 1], m[0, 3]], [m[1, 0], m[1, 1], m[1, 3]], [0, 0, 1.0]])
    assert pair.error(estimate) < pair.initial_error
    extras = result.extras
    json.dumps(extras)
    assert len(extras["refine_steps"]) == 2
    assert np.linalg.det(m[:2, :2]) == pytest.approx(1.0)
