"""Training: tiny runs of every variant, determinism, checkpoints, BIDS pair records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mmreg.errors import InputError
from mmreg.imaging.image import Image, save_image
from mmreg.methods.keymorph.train import (
    KeyMorphTrainSettings,
    TrainingSubject,
    load_detector,
    subjects_from_pairs,
    template_points,
    train_keymorph,
)
from mmreg.methods.keymorph.views import BatchMaker
from mmreg.models import load_checkpoint
from mmreg.training import SEED_PROTOCOL, split_items

from factories import second_contrast, smooth_head

torch.set_num_threads(1)

TINY = {
    "batch_size": 2,
    "n_keypoints": 6,
    "input_size": 16,
    "input_mm": 80.0,
    "width": 2,
    "levels": 3,
    "val_every": 2,
    "val_pairs": 1,
    "workers": 0,
}


def _subjects_2d(n: int = 3) -> list[TrainingSubject]:
    affine = np.diag([2.0, 2.0, 1.0, 1.0])
    out = []
    for i in range(n):
        data = smooth_head((36, 40), seed=i)
        labels = (data > 0.45).astype(np.int32) + (data > 0.7)
        out.append(
            TrainingSubject(
                f"s{i}",
                {"T1w": Image(data, affine), "T2w": Image(second_contrast(data), affine)},
                labels=Image(labels, affine),
            )
        )
    return out


@pytest.mark.parametrize("variant", ["pretrain", "unsupervised", "supervised"])
def test_every_variant_trains_and_writes_a_loadable_checkpoint(tmp_path, variant):
    settings = KeyMorphTrainSettings(
        variant=variant, pretrain_steps=1, steps=2, fit="mixed", **TINY
    )
    path = train_keymorph(_subjects_2d(), out=tmp_path / "m.pt", settings=settings, progress=False)
    ckpt = load_checkpoint(path, method="keymorph")
    meta = ckpt.metadata["training"]
    assert meta["settings"]["variant"] == variant
    assert meta["subjects"] == ["s0", "s1"] and meta["validation_subjects"] == ["s2"]
    assert [h["epoch"] for h in meta["history"]] == [2, 3]
    assert meta["stopped_at_step"] == meta["steps"] == 3
    assert meta["anchors"] == ["foreground-kmeans"]
    assert meta["seed"] == 0 and meta["seed_protocol"] == SEED_PROTOCOL
    assert all(np.isfinite(h["val_affine_error_mm"]) for h in meta["history"])
    model, _ = load_detector(path)
    assert model.config.ndim == 2 and model.config.n_keypoints == 6
    assert (tmp_path / "m.pt.sha256").is_file()
    assert not (tmp_path / "m.pt.state").exists()  # a finished run leaves no state


def test_training_is_deterministic(tmp_path):
    settings = KeyMorphTrainSettings(pretrain_steps=2, steps=1, **TINY)
    a = train_keymorph(_subjects_2d(), out=tmp_path / "a.pt", settings=settings, progress=False)
    b = train_keymorph(_subjects_2d(), out=tmp_path / "b.pt", settings=settings, progress=False)
    meta_a = load_checkpoint(a, method="keymorph").metadata
    meta_b = load_checkpoint(b, method="keymorph").metadata
    assert meta_a["weights_sha256"] == meta_b["weights_sha256"]
    other = KeyMorphTrainSettings(pretrain_steps=2, steps=1, **{**TINY, "seed": 1})
    c = train_keymorph(_subjects_2d(), out=tmp_path / "c.pt", settings=other, progress=False)
    assert (
        load_checkpoint(c, method="keymorph").metadata["weights_sha256"]
        != (meta_a["weights_sha256"])
    )
    # The run depends on the set of subjects, not on the order they are listed in.
    listed = _subjects_2d()[::-1]
    d = train_keymorph(listed, out=tmp_path / "d.pt", settings=settings, progress=False)
    meta_d = load_checkpoint(d, method="keymorph").metadata
    assert meta_d["weights_sha256"] == meta_a["weights_sha256"]
    assert meta_d["training"]["validation_subjects"] == meta_a["training"]["validation_subjects"]


def test_the_split_is_by_name_with_the_engine_rule(tmp_path):
    names = ["s3", "s0", "s4", "s1", "s2"]
    made = zip(names, _subjects_2d(5), strict=True)
    subjects = [TrainingSubject(n, s.images, s.labels) for n, s in made]
    settings = KeyMorphTrainSettings(pretrain_steps=1, steps=0, val_fraction=0.4, **TINY)
    path = train_keymorph(subjects, out=tmp_path / "m.pt", settings=settings, progress=False)
    meta = load_checkpoint(path, method="keymorph").metadata["training"]
    train, val = split_items(names, 0.4, seed=0)
    assert meta["subjects"] == train and meta["validation_subjects"] == val and len(val) == 2


class _Interrupted(Exception):
    pass


def _interrupt_at(monkeypatch, step: int) -> list[int]:
    """Make rendering raise at 0-based ``step`` (as a crash or Ctrl-C would); the steps seen."""
    seen: list[int] = []
    make_batch = BatchMaker.make_batch

    def failing(self, index):
        seen.append(index)
        if index == step:
            raise _Interrupted
        return make_batch(self, index)

    monkeypatch.setattr(BatchMaker, "make_batch", failing)
    return seen


def test_an_interrupted_run_resumes_from_its_state_file(tmp_path, monkeypatch, caplog):
    settings = KeyMorphTrainSettings(pretrain_steps=4, steps=2, variant="supervised", **TINY)
    whole = train_keymorph(
        _subjects_2d(), out=tmp_path / "a.pt", settings=settings, progress=False
    )
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 4)
        with pytest.raises(_Interrupted):
            train_keymorph(
                _subjects_2d(), out=tmp_path / "b.pt", settings=settings, progress=False
            )
    assert (tmp_path / "b.pt.state").is_file() and not (tmp_path / "b.pt").exists()
    # Started again (another time budget is the same run): steps 5 and 6 only.
    again = KeyMorphTrainSettings(
        pretrain_steps=4, steps=2, variant="supervised", **{**TINY, "max_minutes": 60.0}
    )
    seen = _interrupt_at(monkeypatch, -1)
    with caplog.at_level("INFO", logger="mmreg.train.keymorph"):
        path = train_keymorph(
            _subjects_2d(), out=tmp_path / "b.pt", settings=again, progress=False
        )
    assert seen == [4, 5]
    assert "resuming from" in caplog.text
    assert not (tmp_path / "b.pt.state").exists()
    resumed = load_checkpoint(path, method="keymorph").metadata
    reference = load_checkpoint(whole, method="keymorph").metadata
    assert resumed["weights_sha256"] == reference["weights_sha256"]
    assert resumed["training"]["history"] == reference["training"]["history"]


def _training(path: Path) -> dict:
    return load_checkpoint(path, method="keymorph").metadata["training"]


def test_a_run_stopped_by_max_minutes_continues_when_started_again(tmp_path):
    out = tmp_path / "m.pt"
    short = KeyMorphTrainSettings(pretrain_steps=3, steps=1, **{**TINY, "max_minutes": 1e-6})
    train_keymorph(_subjects_2d(), out=out, settings=short, progress=False)
    assert _training(out)["stopped_at_step"] == 1 and (tmp_path / "m.pt.state").is_file()
    # The state of another run (another seed) is not continued: that run starts afresh.
    other = KeyMorphTrainSettings(pretrain_steps=3, steps=1, **{**TINY, "seed": 1})
    shutil.copy(tmp_path / "m.pt.state", tmp_path / "o.pt.state")
    train_keymorph(_subjects_2d(), out=tmp_path / "o.pt", settings=other, progress=False)
    assert [h["epoch"] for h in _training(tmp_path / "o.pt")["history"]] == [2, 4]
    # The same run without a time limit goes on after step 1.
    whole = KeyMorphTrainSettings(pretrain_steps=3, steps=1, **TINY)
    train_keymorph(_subjects_2d(), out=out, settings=whole, progress=False)
    training = _training(out)
    assert [h["epoch"] for h in training["history"]] == [1, 2, 4]
    assert training["stopped_at_step"] == 4 and not (tmp_path / "m.pt.state").exists()


def test_a_worker_process_renders_the_same_batches(tmp_path):
    """Views depend only on (seed, step): rendering them in a worker changes nothing."""
    settings = KeyMorphTrainSettings(pretrain_steps=2, steps=1, **TINY)
    a = train_keymorph(_subjects_2d(), out=tmp_path / "a.pt", settings=settings, progress=False)
    forked = KeyMorphTrainSettings(pretrain_steps=2, steps=1, **{**TINY, "workers": 1})
    b = train_keymorph(_subjects_2d(), out=tmp_path / "b.pt", settings=forked, progress=False)
    digest = [load_checkpoint(p, method="keymorph").metadata["weights_sha256"] for p in (a, b)]
    assert digest[0] == digest[1]


def test_fine_tuning_from_init_keeps_the_architecture(tmp_path):
    base = KeyMorphTrainSettings(pretrain_steps=1, steps=0, **TINY)
    first = train_keymorph(_subjects_2d(), out=tmp_path / "a.pt", settings=base, progress=False)
    tuned = KeyMorphTrainSettings(
        pretrain_steps=0, steps=1, init=str(first), **{**TINY, "n_keypoints": 9}
    )
    path = train_keymorph(_subjects_2d(), out=tmp_path / "b.pt", settings=tuned, progress=False)
    ckpt = load_checkpoint(path, method="keymorph")
    assert ckpt.config["detector"]["n_keypoints"] == 6  # the initial model's, not 9
    assert ckpt.metadata["training"]["anchors"] == ["initial-model"]
    assert (
        ckpt.metadata["training"]["init_sha256"]
        == load_checkpoint(first, method="keymorph").sha256
    )


def test_settings_validation():
    with pytest.raises(ValueError, match="variant"):
        KeyMorphTrainSettings(variant="magic")
    with pytest.raises(ValueError, match="training step"):
        KeyMorphTrainSettings(pretrain_steps=0, steps=0)
    with pytest.raises(ValueError, match="n_keypoints"):
        KeyMorphTrainSettings(n_keypoints=600)
    with pytest.raises(ValueError, match="lambda"):
        KeyMorphTrainSettings(lambda_min=1.0, lambda_max=0.5)
    with pytest.raises(InputError, match="no training subject"):
        train_keymorph([], out=Path("x.pt"), settings=KeyMorphTrainSettings())


def test_template_points_are_spread_over_the_brain():
    pts = template_points(16)
    assert pts.shape == (16, 3)
    # MNI brain: roughly 140 x 170 x 120 mm around (0, -18, 18).
    assert np.all(np.abs(pts.mean(0) - [0.0, -18.0, 15.0]) < 15.0)
    assert np.min(np.linalg.norm(pts[:, None] - pts[None], axis=-1) + 1e9 * np.eye(16)) > 15.0
    assert np.array_equal(pts, template_points(16))


def test_subjects_from_pairs_resample_moving_with_the_truth(tmp_path):
    root = tmp_path / "bids"
    gt = root / "derivatives" / "ground-truth" / "sub-01" / "anat"
    anat = root / "sub-01" / "anat"
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    data = smooth_head((16, 18, 14), seed=0)
    fixed = save_image(Image(data, affine), anat / "sub-01_T1w.nii.gz")
    # The moving scan is the fixed one shifted by 6 mm along x: y = x + 6.
    moved_affine = affine.copy()
    moved_affine[0, 3] += 6.0
    moving = save_image(Image(second_contrast(data), moved_affine), anat / "sub-01_T2w.nii.gz")
    pose = np.eye(4)
    pose[0, 3] = 6.0
    gt.mkdir(parents=True)
    stem = "sub-01_from-T1w_to-T2w_desc-truth_xfm"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), gt / f"{stem}.nii.gz")
    (gt / f"{stem}.json").write_text(
        json.dumps({"Pose": pose.tolist(), "DisplacementField": f"{stem}.nii.gz"})
    )
    (gt / "sub-01_space-T1w_desc-landmarks.tsv").write_text("name\tx\ty\tz\nap\t1\t2\t3\n")
    pairs = [
        {
            "subject": "01",
            "session": None,
            "fixed": str(fixed),
            "moving": str(moving),
            "fixed_label": "T1w",
            "moving_label": "T2w",
            "fixed_landmarks": str(gt / "sub-01_space-T1w_desc-landmarks.tsv"),
            "bids_dir": str(root),
        },
        {  # a pair without a truth transform: its moving image stands alone
            "subject": "01",
            "session": None,
            "fixed": str(fixed),
            "moving": str(moving),
            "fixed_label": "T1w",
            "moving_label": "PDw",
            "bids_dir": str(root),
        },
    ]
    subjects = subjects_from_pairs(pairs)
    assert [s.name for s in subjects] == ["sub-01_PDw", "sub-01"]
    joint = subjects[1]
    assert set(joint.images) == {"T1w", "T2w"}
    assert joint.landmarks == {"ap": [1.0, 2.0, 3.0]}
    t2 = joint.images["T2w"]
    # Resampled into the T1w world, the T2w is the contrast-mapped T1w itself.
    inner = (slice(3, -3),) * 3
    assert np.allclose(t2.data[inner], second_contrast(data)[inner], atol=1e-4)
