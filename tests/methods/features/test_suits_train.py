"""SUITS training: signed distance maps, the supervised descent loss, the trainer, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from mmreg.imaging.image import Image, save_image
from mmreg.methods import get_method
from mmreg.methods.features.suits import SUITSConfig, SUITSNet, load_suits
from mmreg.methods.features.suits_train import (
    SUITSTrainer,
    SUITSTrainSettings,
    band_mask,
    deform_pair,
    dice_scores,
    label_groups,
    pairs_from_arrays,
    signed_distance_maps,
    step_loss,
    train_suits_pairs,
)
from mmreg.training import seed_everything

from factories import write_dataset_description

#: Intensity of labels 0-3 in the two synthetic contrasts (not monotonically related).
CONTRAST_A = np.array([0.0, 0.4, 0.9, 0.2])
CONTRAST_B = np.array([0.0, 0.8, 0.3, 1.0])


def _phantom(seed: int, shape=(32, 32)) -> np.ndarray:
    """An ellipse (label 1) holding two discs (labels 2 and 3) at random places."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    centre = np.asarray(shape) / 2 + rng.uniform(-1, 1, len(shape))
    radii = (12.0, 11.0, 10.0)[: len(shape)]
    ellipse = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
    labels = (ellipse < 1).astype(np.int32)
    for value, radius in ((2, 4.5), (3, 3.0)):
        offset = rng.uniform(-5, 5, len(shape))
        r2 = sum((g - c - o) ** 2 for g, c, o in zip(grids, centre, offset, strict=True))
        labels[r2 < radius**2] = value
    return labels


def _item(seed: int, shape=(32, 32)):
    """Fixed (contrast A) and moving (contrast B, shifted by up to 2 voxels) with labels."""
    labels = _phantom(seed, shape)
    shift = tuple(np.random.default_rng(seed + 100).integers(-2, 3, len(shape)))
    moved = np.roll(labels, shift, axis=tuple(range(len(shape))))
    fixed = ndimage.gaussian_filter(CONTRAST_A[labels], 0.7)
    moving = ndimage.gaussian_filter(CONTRAST_B[moved], 0.7)
    return fixed, moving, labels, moved


SMALL = {
    "spacings": "8_4",
    "iterations": 20,
    "val_iterations": 20,
    "pool": 4,
    "deform": 1.5,
}


def test_label_groups_merge_the_smallest_labels():
    a = np.repeat(np.arange(13), np.arange(13) + 1)  # label v has v + 1 voxels
    groups = label_groups([a], max_labels=10)
    assert groups[0] == (0,) and len(groups) == 11
    assert [g[0] for g in groups[1:10]] == list(range(4, 13))  # the 9 largest alone
    assert groups[10] == (1, 2, 3)
    assert label_groups([a[a < 5]], 10) == ((0,), (1,), (2,), (3,), (4,))


def test_signed_distance_maps_by_hand():
    labels = np.zeros((9, 20), np.int32)
    labels[:, 5:12] = 2  # a stripe, columns 5-11
    sdm = signed_distance_maps(labels, ((0,), (2,), (7,)), scale=0.01)
    assert sdm.shape == (3, 9, 20) and sdm.dtype == torch.float32
    row = sdm[1, 4]
    # Outside: distance to the stripe (column 4 is 1 away, column 0 is 5); inside: minus
    # the distance to the outside (columns 5 and 11 are 1 away, column 8 is 4).
    expected = {0: 5, 4: 1, 5: -1, 8: -4, 11: -1, 12: 1, 19: 8}
    for col, d in expected.items():
        assert float(row[col]) == pytest.approx(math.tanh(0.01 * d), abs=1e-6), col
    assert torch.allclose(sdm[0], -sdm[1])  # the background is the complement here
    assert torch.equal(sdm[2], torch.ones(9, 20))  # an absent label is far outside


def test_band_mask_and_step_loss():
    labels = np.zeros((24, 24), np.int32)
    labels[6:18, 6:18] = 1
    fixed_sdm = signed_distance_maps(labels, ((0,), (1,)))[None]
    moving_sdm = signed_distance_maps(np.roll(labels, 2, axis=0), ((0,), (1,)))[None]
    mask = band_mask(fixed_sdm, moving_sdm, 0.1)
    assert mask.shape == (1, 1, 24, 24) and bool(mask.all())  # all within ~10 voxels
    assert not bool(band_mask(fixed_sdm, moving_sdm, 0.02)[0, 0, 12, 12])  # 6 voxels in
    # Features that are the SDMs themselves: no loss; the baseline is |D_sdm|^2.
    loss, baseline, d = step_loss(fixed_sdm, moving_sdm, fixed_sdm, moving_sdm, 0.1)
    assert float(loss) == 0.0 and float(baseline) > 0
    assert float(baseline) == pytest.approx(float(d.square().sum(1).mean()), rel=1e-5)
    # Flat features: a zero step, so the loss is the baseline.
    zero = torch.zeros(1, 4, 24, 24)
    loss, baseline2, _ = step_loss(zero, zero, fixed_sdm, moving_sdm, 0.1)
    assert float(loss) == pytest.approx(float(baseline2)) and float(baseline2) == float(baseline)
    # The label-driven step points the way the moving labels must be sampled (+2, axis 0).
    assert float(d[0, 0, 4:8, 8:16].mean()) > 0.1


def test_pairs_from_arrays_and_deformation():
    pairs = pairs_from_arrays([_item(0), _item(1)], names=["a", "b"])
    assert [p.name for p in pairs] == ["a", "b"]
    p = pairs[0]
    assert p.fixed.shape == (1, 1, 32, 32) and p.fixed_sdm.shape == (1, 4, 32, 32)
    assert float(p.fixed.min()) == 0.0 and float(p.fixed.max()) == 1.0
    q = deform_pair(p, 2.0, torch.Generator().manual_seed(0))
    assert q.fixed is p.fixed and not torch.equal(q.moving, p.moving)
    assert torch.equal(q.moving_labels, q.moving_labels.round())
    assert set(q.moving_labels.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert dice_scores(p.fixed_labels, p.fixed_labels) == {1: 1.0, 2: 1.0, 3: 1.0}
    with pytest.raises(ValueError, match="one grid"):
        pairs_from_arrays([(np.zeros((4, 4)), np.zeros((4, 5)), np.zeros((4, 4)), np.zeros(4))])


def test_the_loss_falls_over_thirty_steps():
    pairs = pairs_from_arrays([_item(s) for s in range(6)])
    train, val = pairs[:4], pairs[4:]
    settings = SUITSTrainSettings(steps=30, **SMALL)
    generator = seed_everything(0)
    net = SUITSNet(SUITSConfig(ndim=2))
    trainer = SUITSTrainer(net, train, settings, generator)
    assert sorted(f.descent.step for f in trainer.pool) == [0, 10, 20, 30]  # staggered
    before = trainer.evaluate(val)
    losses = [trainer.step()["loss"] for _ in range(30)]
    after = trainer.evaluate(val)
    assert all(math.isfinite(x) and x > 0 for x in losses)
    assert after["val_loss"] < 0.95 * before["val_loss"], (before, after)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert 0 <= after["score"] <= 1 and after["dice_before"] == before["dice_before"]


def test_training_is_seedable():
    pairs = pairs_from_arrays([_item(s) for s in range(3)])
    settings = SUITSTrainSettings(steps=3, **SMALL)

    def run() -> list[float]:
        generator = seed_everything(5)
        trainer = SUITSTrainer(SUITSNet(SUITSConfig(ndim=2)), pairs, settings, generator)
        return [trainer.step()["loss"] for _ in range(4)]

    assert run() == run()


def test_a_short_training_writes_a_usable_checkpoint(tmp_path):
    pairs = pairs_from_arrays([_item(s) for s in range(4)])
    settings = SUITSTrainSettings(steps=4, validate_every=2, **SMALL)
    out = train_suits_pairs(pairs[:3], pairs[3:], out=tmp_path / "suits.pt", settings=settings)
    assert out.is_file() and (tmp_path / "suits.pt.sha256").is_file()
    assert not (tmp_path / "suits.pt.state").exists()
    meta = torch.load(out, weights_only=True)["metadata"]["training"]
    assert len(meta["history"]) == 2 and meta["training_data"]["val"] == ["pair-003"]
    net = load_suits(out)
    assert net.config.ndim == 2
    fixed, moving, _, _ = _item(7)
    method = get_method("suits:spacings=8_4:iterations=10", models={"suits": str(out)})
    result = method.register(Image(fixed, np.eye(4)), Image(moving, np.eye(4)))
    assert result.transform.ndim == 2 and np.isfinite(result.transform.steps[0].vectors).all()


def test_bad_training_settings():
    with pytest.raises(ValueError, match="pool"):
        SUITSTrainSettings(pool=1, batch=2)
    with pytest.raises(ValueError, match="prealign"):
        SUITSTrainSettings(prealign="rigid")
    with pytest.raises(ValueError, match="spacings"):
        SUITSTrainSettings(spacings="x")


def test_mmreg_train_suits_on_a_bids_dataset(tmp_path):
    from mmreg.bids_app.train import main_train

    root = tmp_path / "bids"
    write_dataset_description(root)
    gt = root / "derivatives" / "ground-truth"
    write_dataset_description(gt)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for i, subject in enumerate(("01", "02")):
        fixed, moving, fixed_labels, moving_labels = _item(i, shape=(20, 22, 18))
        anat = root / f"sub-{subject}" / "anat"
        save_image(Image(fixed.astype(np.float32), affine), anat / f"sub-{subject}_T1w.nii.gz")
        save_image(Image(moving.astype(np.float32), affine), anat / f"sub-{subject}_T2w.nii.gz")
        labels = gt / f"sub-{subject}" / "anat"
        save_image(Image(fixed_labels, affine), labels / f"sub-{subject}_space-T1w_dseg.nii.gz")
        save_image(Image(moving_labels, affine), labels / f"sub-{subject}_space-T2w_dseg.nii.gz")
    out = tmp_path / "m" / "suits.pt"
    argv = ["suits", str(root), "--out", str(out), "--no-progress", "--omp-nthreads", "1"]
    argv += ["--steps", "2", "--validate-every", "1", "--spacings", "6_3", "--iterations", "4"]
    argv += ["--val-iterations", "4", "--pool", "2", "--prealign", "none", "--val-fraction", "0.5"]
    assert main_train(argv) == 0
    payload = torch.load(out, weights_only=True)
    assert payload["config"]["ndim"] == 3
    data = payload["metadata"]["training_data"]
    assert sorted(data["subjects"]["train"] + data["subjects"]["val"]) == ["01", "02"]
    assert data["pairs"] == {"train": 1, "val": 1, "own": 2}  # cross pairs straddle the split
    assert data["label_groups"] == [[0], [1], [2], [3]]
    assert load_suits(out).config.ndim == 3
