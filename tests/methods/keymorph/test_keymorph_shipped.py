"""The shipped weights: small, verified, trained on real heads only, and registering an
unseen real head (brain-extracted, another contrast, rotated) when the shared data exist."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmreg.models import default_model_path, load_checkpoint

torch.set_num_threads(1)

SHIPPED = default_model_path("keymorph")
REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # benchmarks/ is a folder of scripts, not an installed package
    sys.path.insert(0, str(REPO))
IXI = REPO.parent / "shared" / "data" / "ixi-t1-dlmuse"
pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped KeyMorph weights")


def test_shipped_checkpoint_is_small_verified_and_documented():
    from benchmarks.heldout import IXI_HELDOUT

    assert SHIPPED.stat().st_size <= 3 * 1024 * 1024
    ckpt = load_checkpoint(SHIPPED, method="keymorph")
    assert ckpt.config["detector"]["ndim"] == 3
    training = ckpt.metadata["training"]
    assert training["settings"]["synth_from_labels"] is True
    assert training["anchors"] == ["label-kmeans"]
    assert training["wall_time_s"] > 0 and training["history"]
    images = ckpt.metadata["training_data"]["images"]
    # No held-out evaluation subject was trained on (BIDS labels drop the dashes).
    held_out = {name.replace("-", "") for name in IXI_HELDOUT}
    assert images and not any(h in name for name in images for h in held_out)
    assert (REPO / "docs" / "keymorph.md").read_text().count(ckpt.sha256[:12]) >= 1


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not IXI.is_dir(), reason="../shared/data/ixi-t1-dlmuse not present")
def test_shipped_weights_register_an_unseen_brain_extracted_head_at_120_degrees(tmp_path):
    from benchmarks.bench_keymorph import brain_extracted, dice_mean, ixi_subjects, make_case
    from mmreg.imaging.image import load_image, load_labels, save_image
    from mmreg.imaging.preprocess import PreprocessOptions
    from mmreg.imaging.transform import Transform
    from mmreg.pipeline import prepare, register

    name, t1_path, seg_path = ixi_subjects(1)[0]
    t1, labels = load_image(t1_path), load_labels(seg_path)
    case = make_case(
        name, brain_extracted(t1, labels), labels, 120.0, np.random.default_rng(7), variant="brain"
    )
    fixed = save_image(case.fixed, tmp_path / "fixed.nii.gz")
    moving = save_image(case.moving, tmp_path / "moving.nii.gz")
    prepared = prepare(str(fixed), str(moving), PreprocessOptions())
    result = register(prepared, "keymorph-affine", seed=0, threads=1)
    dice, _ = dice_mean(case, result.transform)
    assert dice_mean(case, Transform.identity())[0] < 0.2  # the rotation is real
    assert dice > 0.5
