"""Contrasts synthesised from label maps, brain extraction, and training on labelled images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmreg.errors import InputError
from mmreg.imaging.image import Image, save_image
from mmreg.methods.keymorph.synth import SynthSettings, class_map, skull_strip, synth_intensity
from mmreg.methods.keymorph.train import (
    KeyMorphTrainSettings,
    TrainingSubject,
    subjects_from_images,
    train_keymorph,
)
from mmreg.models import load_checkpoint
from mmreg.records import LabelledImage

from factories import second_contrast, smooth_head

torch.set_num_threads(1)

IDENTITY_LUT = (np.array([0.0, 1.0]), np.array([0.0, 1.0]))


def test_class_map_clusters_the_unlabelled_head_darkest_first():
    # Brain labels 4 and 9; outside them air (0.0), a dark tissue (0.2) and a bright one (0.8).
    image = np.array([0.0, 0.0, 0.2, 0.21, 0.8, 0.82, 0.5, 0.6, 0.3])
    labels = np.array([0, 0, 0, 0, 0, 0, 4, 4, 9])
    classes, ref = class_map(image, labels, n_head=2)
    assert classes.tolist() == [0, 0, 3, 3, 4, 4, 1, 1, 2]
    # Medians: label 4 -> 0.55, label 9 -> 0.3, dark head 0.205, bright head 0.81.
    assert np.allclose(ref, [0.0, 0.55, 0.3, 0.205, 0.81])


def test_class_map_without_background_label_keeps_zero_for_air():
    classes, ref = class_map(np.array([0.4, 0.6]), np.array([2, 5]), n_head=3)
    assert classes.tolist() == [1, 2] and len(ref) == 6  # air + two labels + three head classes
    with pytest.raises(ValueError, match="shape"):
        class_map(np.zeros(3), np.zeros(4), n_head=1)


def test_synth_intensity_follows_the_lut_of_the_references():
    classes = torch.tensor([0, 1, 1, 2, 3])
    image = torch.tensor([0.0, 0.4, 0.6, 0.5, 0.9])
    reference = torch.tensor([0.0, 0.5, 0.5, 0.9])
    plain = SynthSettings(jitter=0.0, texture=0.0, random_prob=0.0)
    out = synth_intensity(classes, image, reference, np.random.default_rng(0), plain, IDENTITY_LUT)
    # Identity table, no jitter, no texture: each class at its reference; air stays 0.
    assert torch.allclose(out, torch.tensor([0.0, 0.5, 0.5, 0.5, 0.9]))
    inverted = (np.array([0.0, 1.0]), np.array([1.0, 0.0]))
    out = synth_intensity(classes, image, reference, np.random.default_rng(0), plain, inverted)
    assert torch.allclose(out, torch.tensor([0.0, 0.5, 0.5, 0.5, 0.1]))
    # Texture keeps the real within-class variation, scaled (here by a factor in [-1, 1]).
    textured = SynthSettings(jitter=0.0, texture=1.0, random_prob=0.0)
    rng = np.random.default_rng(1)
    out = synth_intensity(classes, image, reference, rng, textured, IDENTITY_LUT)
    assert out[0] == 0.0
    assert torch.isclose(out[1] + out[2], torch.tensor(1.0))  # +-d around 0.5
    assert not torch.isclose(out[1], out[2])


def test_skull_strip_zeroes_outside_the_brain_and_may_dilate():
    view = torch.ones(9, 9)
    brain = torch.zeros(9, 9)
    brain[3:6, 3:6] = 1.0
    kept = [int(skull_strip(view, brain, np.random.default_rng(s)).sum()) for s in range(12)]
    assert set(kept) == {9, 25}  # the 3x3 brain, or dilated by one voxel


def test_synth_settings_validation():
    with pytest.raises(ValueError, match="prob"):
        SynthSettings(prob=1.5)
    with pytest.raises(ValueError, match="head_classes"):
        SynthSettings(head_classes=-1)


def _labelled(tmp_path, n=3):
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    items = []
    for i in range(n):
        head = smooth_head((20, 22, 18), seed=i)
        sub = f"0{i + 1}"
        t1 = save_image(Image(head, affine), tmp_path / f"sub-{sub}_T1w.nii.gz")
        lab = save_image(
            Image(((head > 0.55) * (1 + (head > 0.75))).astype(np.int32), affine),
            tmp_path / f"sub-{sub}_space-T1w_dseg.nii.gz",
        )
        items.append(LabelledImage(str(t1), sub, None, "T1w", dseg=str(lab)))
    # A co-registered second contrast of subject 01 joins its subject.
    t2 = save_image(
        Image(second_contrast(smooth_head((20, 22, 18), seed=0)), affine),
        tmp_path / "sub-01_T2w.nii.gz",
    )
    items.append(LabelledImage(str(t2), "01", None, "T2w"))
    return items


def test_subjects_from_images_group_coregistered_contrasts(tmp_path):
    subjects = subjects_from_images(_labelled(tmp_path))
    assert [s.name for s in subjects] == ["sub-01", "sub-02", "sub-03"]
    assert set(subjects[0].images) == {"T1w", "T2w"}
    assert str(subjects[0].labels).endswith("sub-01_space-T1w_dseg.nii.gz")


def test_training_with_synthesis_anchors_on_the_labels(tmp_path):
    tiny = {
        "batch_size": 2,
        "n_keypoints": 6,
        "input_size": 16,
        "input_mm": 90.0,
        "width": 2,
        "levels": 3,
        "val_every": 2,
        "val_pairs": 1,
        "workers": 0,
        "variant": "pretrain",
    }
    settings = KeyMorphTrainSettings(pretrain_steps=2, steps=0, synth_from_labels=True, **tiny)
    subjects = subjects_from_images(_labelled(tmp_path))
    path = train_keymorph(subjects, out=tmp_path / "m.pt", settings=settings, progress=False)
    meta = load_checkpoint(path, method="keymorph").metadata["training"]
    assert meta["anchors"] == ["label-kmeans"]
    assert meta["settings"]["synth_from_labels"] and meta["settings"]["synth"]["prob"] == 0.5
    # Unlabelled subjects cannot be synthesised: a one-line error, not a crash mid-run.
    bare = [TrainingSubject(s.name, s.images) for s in subjects]
    with pytest.raises(InputError, match="needs label maps"):
        train_keymorph(bare, out=tmp_path / "n.pt", settings=settings, progress=False)
    assert not (tmp_path / "n.pt").exists()


def test_max_minutes_stops_with_a_last_validation_and_keeps_the_state(tmp_path):
    settings = KeyMorphTrainSettings(
        pretrain_steps=6,
        steps=0,
        max_minutes=1e-6,
        batch_size=1,
        n_keypoints=6,
        input_size=16,
        input_mm=90.0,
        width=2,
        levels=3,
        val_every=2,
        val_pairs=1,
        workers=0,
    )
    subjects = subjects_from_images(_labelled(tmp_path))
    path = train_keymorph(subjects, out=tmp_path / "m.pt", settings=settings, progress=False)
    meta = load_checkpoint(path, method="keymorph").metadata["training"]
    # Out of time after the first step: validated there, written, resumable.
    assert meta["stopped_at_step"] == 1 and [h["epoch"] for h in meta["history"]] == [1]
    assert (tmp_path / "m.pt.state").is_file()
