"""The 2D U-Net, its loss and its training loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmreg.segmentation.train import (
    SegmenterTrainSettings,
    dice_per_class,
    predict,
    soft_dice_loss,
    train_segmenter,
)
from mmreg.segmentation.unet import UNet2d, UNetConfig


@pytest.mark.parametrize("shape", [(32, 32), (37, 21), (8, 8)])
def test_output_keeps_any_input_size(shape):
    net = UNet2d(in_channels=2, n_classes=3, width=4, depth=3)
    assert net(torch.zeros(2, 2, *shape)).shape == (2, 3, *shape)


def test_soft_dice_by_hand():
    # Two pixels, two classes; probabilities from logits chosen for softmax = (0.5, 0.5)
    # and (0, 1) (a huge logit gap). Target: pixel 0 background, pixel 1 class 1.
    logits = torch.tensor([[[[0.0, -50.0]], [[0.0, 50.0]]]])
    target = torch.tensor([[[0, 1]]])
    # class 1: P = (0.5, 1), T = (0, 1): 2 * 1 / (1.5 + 1) = 0.8 -> loss 0.2
    assert float(soft_dice_loss(logits, target)) == pytest.approx(0.2, abs=1e-5)
    perfect = torch.tensor([[[[50.0, -50.0]], [[-50.0, 50.0]]]])
    assert float(soft_dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-5)


def test_hard_dice_by_hand():
    pred = np.array([[0, 1, 1, 2]])
    truth = np.array([[0, 1, 2, 2]])
    # class 1: 2*1/(2+1); class 2: 2*1/(1+2); class 3: absent from both
    got = dice_per_class(pred, truth, n_classes=4)
    assert got[:2] == pytest.approx([2 / 3, 2 / 3])
    assert math.isnan(got[2])


def _squares(n: int, seed: int):
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        lab = np.zeros((24, 24), np.int64)
        r, c = rng.integers(2, 12, size=2)
        lab[r : r + 10, c : c + 10] = 1
        img = (lab + 0.2 * rng.standard_normal(lab.shape)).astype(np.float32)[None]
        images.append(img)
        labels.append(lab)
    return images, labels


def test_training_learns_and_is_deterministic():
    images, labels = _squares(8, seed=0)
    settings = SegmenterTrainSettings(epochs=15, width=4, depth=2, batch_size=4, seed=3)
    a = train_segmenter(images, labels, n_classes=2, settings=settings, progress=False)
    b = train_segmenter(images, labels, n_classes=2, settings=settings, progress=False)
    assert a.best_val_dice > 0.8
    assert a.history == b.history
    test_images, test_labels = _squares(3, seed=1)
    dice = [
        dice_per_class(predict(a.model, x), y, 2)[0]
        for x, y in zip(test_images, test_labels, strict=True)
    ]
    assert min(dice) > 0.8
    assert a.config == UNetConfig(in_channels=1, n_classes=2, width=4, depth=2)


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"val_fraction": 1.0}, {"batch_size": 0}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        SegmenterTrainSettings(**kwargs)


def test_an_interrupted_training_resumes_from_its_state_file(tmp_path, monkeypatch):
    import mmreg.segmentation.train as seg_train

    images, labels = _squares(8, seed=0)
    settings = SegmenterTrainSettings(epochs=4, width=4, depth=2, batch_size=4, seed=3)
    full = train_segmenter(images, labels, n_classes=2, settings=settings, progress=False)
    state = tmp_path / "unet.pt.state"
    calls = []

    def predict_until_epoch_3(model, image, *, device="cpu"):
        calls.append(1)
        if len(calls) > 2 * 2:  # two validation items per epoch
            raise KeyboardInterrupt
        return predict(model, image, device=device)

    monkeypatch.setattr(seg_train, "predict", predict_until_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(
            images, labels, n_classes=2, settings=settings, progress=False, state_path=state
        )
    monkeypatch.undo()
    assert state.is_file()
    resumed = train_segmenter(
        images, labels, n_classes=2, settings=settings, progress=False, state_path=state
    )
    assert resumed.history == full.history
    assert resumed.best_epoch == full.best_epoch
    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
