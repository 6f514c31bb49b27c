"""segguided: losses by hand, the four training stages on a small 2D dataset, the method and
its derivatives through the participant level."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmreg.bids_app.cli import main
from mmreg.bids_app.train import main_train
from mmreg.imaging.image import Image, load_labels, save_image
from mmreg.methods.segguided.grid import one_hot, working_grid
from mmreg.methods.segguided.losses import gradicon_penalty, random_deformation, soft_dice
from mmreg.methods.segguided.model import SegGuidedConfig
from mmreg.methods.segguided.train import SegGuidedTrainSettings

AFFINE = np.diag([2.0, 2.0, 1.0, 1.0])


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2).astype(np.int16)


def _write_dataset(root, subjects: int = 4, *, broken_other_labels: bool = False) -> None:
    """2D 'heads': a bright disc (label 1) in a ring, placed at random; the T2w has other
    intensities and noise and is shifted by 5 voxels up or down (its labels with it).
    Positions vary in both modalities, as in real scans, so no position tells the two
    domains apart. (How well the adaptation copes with hard contrasts is measured on real
    anatomy by benchmarks/bench_segguided.py; this checks the machinery in seconds.)"""
    from factories import write_dataset_description

    write_dataset_description(root)
    gt = root / "derivatives" / "ground-truth"
    write_dataset_description(gt)
    rng = np.random.default_rng(0)
    for i in range(subjects):
        sub = f"{i + 1:02d}"
        radius = 6.0 + i
        centre = (20 + int(rng.integers(-3, 4)), 20 + int(rng.integers(-3, 4)))
        shift = 5 if i % 2 else -5
        labels = _disc((40, 40), centre, radius)
        body = _disc((40, 40), centre, radius + 8)
        t1 = (0.4 * body + 0.6 * labels + 0.05 * rng.standard_normal((40, 40))) * 100
        labels_t2 = np.roll(labels, shift, axis=0)
        t2 = np.roll(0.2 * body + 0.8 * labels, shift, axis=0) * 100
        t2 = t2 * (1 + 0.1 * rng.standard_normal((40, 40)))
        anat, truth = root / f"sub-{sub}" / "anat", gt / f"sub-{sub}" / "anat"
        save_image(Image(t1.astype(np.float32), AFFINE), anat / f"sub-{sub}_T1w.nii.gz")
        save_image(Image(t2.astype(np.float32), AFFINE), anat / f"sub-{sub}_T2w.nii.gz")
        save_image(Image(labels, AFFINE), truth / f"sub-{sub}_space-T1w_dseg.nii.gz")
        other = truth / f"sub-{sub}_space-T2w_dseg.nii.gz"
        if broken_other_labels:  # never read: training must not notice
            other.parent.mkdir(parents=True, exist_ok=True)
            other.write_bytes(b"not a nifti")
        else:
            save_image(Image(labels_t2, AFFINE), other)


TRAIN = ["--no-progress", "--omp-nthreads", "1", "--size", "32", "--spacing", "2.5"]
TRAIN += ["--source-steps", "200", "--adapt-steps", "200", "--register-steps", "150"]
TRAIN += ["--validate-every", "20", "--prealign", "none", "--augment-pairs", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("sg") / "bids"
    _write_dataset(root, broken_other_labels=True)
    out = root.parent / "m" / "segguided.pt"
    argv = ["segguided", str(root), "--out", str(out), "--labels-from", "T1w", *TRAIN]
    assert main_train(argv) == 0
    return root, out


# ---------------------------------------------------------------- by hand


def test_soft_dice_by_hand():
    a = torch.zeros(1, 2, 4, 4)
    a[0, 1, :2] = 1.0  # 8 foreground pixels
    b = torch.zeros(1, 2, 4, 4)
    b[0, 1, 1:3] = 1.0  # 8, of which 4 shared
    a[0, 0], b[0, 0] = 1 - a[0, 1], 1 - b[0, 1]
    assert float(soft_dice(a, b)) == pytest.approx(2 * 4 / 16, abs=1e-4)
    assert float(soft_dice(a, a)) == pytest.approx(1.0, abs=1e-4)


def test_gradicon_penalty_sees_inconsistent_fields():
    g = torch.Generator().manual_seed(0)
    u = random_deformation((24, 24), 2.0, g)
    assert float(gradicon_penalty(u, -u)) > 0.0  # -u is not the inverse of a non-constant u
    assert float(gradicon_penalty(u, torch.zeros_like(u))) > float(gradicon_penalty(u, -u))
    shift = torch.full((1, 2, 24, 24), 2.0)
    assert float(gradicon_penalty(shift, -shift)) == pytest.approx(0.0, abs=1e-9)


def test_working_grid_and_one_hot():
    grid = working_grid(Image(np.zeros((40, 40), np.float32), AFFINE).grid, (32, 32), 2.5)
    assert grid.spacing == (2.5, 2.5)
    centre = grid.voxel_to_world([[15.5, 15.5]])[0]
    assert np.allclose(centre[:2], [39.0, 39.0])  # the 40 x 2 mm image's centre
    y = one_hot(np.array([[0, 1], [2, 7]]), ((0,), (1,), (2, 7)))
    assert y.shape == (1, 3, 2, 2) and y[0, 2].tolist() == [[0, 0], [1, 1]]


def test_bad_settings_and_configs():
    with pytest.raises(ValueError, match="stages"):
        SegGuidedTrainSettings(stages="5")
    with pytest.raises(ValueError, match="augment"):
        SegGuidedTrainSettings(augment="rotate")
    with pytest.raises(ValueError, match="multiple"):
        SegGuidedConfig(ndim=2, n_classes=2, shape=(30, 30), spacing=1.0)


# ---------------------------------------------------------------- training


def test_training_learns_from_one_modality_only(trained):
    _, out = trained
    payload = torch.load(out, weights_only=True)
    config, meta = payload["config"], payload["metadata"]["training"]
    assert config["labelled_side"] == "fixed" and config["labelled_suffix"] == "T1w"
    assert config["groups"] == [[0], [1]]
    assert set(meta["stage_wall_time_s"]) == {"augment", "source", "adapt", "register"}
    data = meta["training_data"]
    assert data["labels_from"] == "T1w"
    assert data["samples"] == len(data["subjects"]["with_labels"]) + 2  # 2 registered
    # S_S learned to segment its modality (validation Dice of the held-out subject).
    assert max(h["val_dice"] for h in meta["history"]["source"]) > 0.7


def test_missing_labels_from_is_a_usage_error(tmp_path):
    root = tmp_path / "bids"
    _write_dataset(root, subjects=2)
    out = tmp_path / "m.pt"
    assert main(["train", "segguided", str(root), "--out", str(out), *TRAIN]) == 64
    assert main(["train", "segguided", str(root), "--out", str(out), "--labels-from", "PDw"]) == 64
    assert not out.exists()


def test_stages_are_reused_and_rerun_on_request(trained, tmp_path, capfd):
    root, out = trained
    again = tmp_path / "again.pt"
    import shutil

    # Stage results live beside the model: a copy of them is reused for another output.

    shutil.copytree(out.with_name(out.name + ".stages"), again.with_name(again.name + ".stages"))
    argv = ["segguided", str(root), "--out", str(again), "--labels-from", "T1w", *TRAIN]
    assert main_train([*argv, "--stages", "4"]) == 0
    text = capfd.readouterr().err
    assert "stage 1 (augment): reusing" in text and "stage 3 (adapt): reusing" in text
    assert "stage 4 (register): reusing" not in text
    first, second = torch.load(out, weights_only=True), torch.load(again, weights_only=True)
    key = next(k for k in first["state_dict"] if k.startswith("seg_source."))
    assert torch.equal(first["state_dict"][key], second["state_dict"][key])


# ---------------------------------------------------------------- the method


def test_segguided_registers_and_writes_segmentations(trained, tmp_path):
    _, model = trained
    out = tmp_path / "out"
    # A fresh copy of the dataset, with the T2w labels readable this time, for scoring.
    clean = tmp_path / "clean"
    _write_dataset(clean, subjects=4)
    status = main(
        [
            str(clean),
            str(out),
            "participant",
            "--participant-label",
            "04",
            "--methods",
            "identity,segguided",
            "--model",
            f"segguided={model}",
            "--prealign",
            "none",  # the 5-voxel shift is left for the methods
            "--work-dir",
            str(tmp_path / "work"),
        ]
    )
    assert status == 0
    import pandas as pd

    rows = pd.read_csv(out / "sub-04" / "sub-04_evaluation.csv").set_index("method")
    assert rows.loc["segguided", "dice_mean"] > rows.loc["identity", "dice_mean"] + 0.05
    assert rows.loc["segguided", "neg_jacobian_pct"] <= 0.5
    anat = out / "sub-04" / "anat"
    for space in ("T1w", "T2w"):
        path = anat / f"sub-04_from-T2w_to-T1w_space-{space}_desc-segguided_dseg.nii.gz"
        assert path.is_file() and path.with_name(path.name[:-7] + ".json").is_file()
        assert path.with_name(path.name[:-7] + ".tsv").read_text() == "index\tname\n1\tlabel-1\n"
        predicted = np.asarray(load_labels(path).data)
        truth = np.asarray(
            load_labels(
                clean
                / "derivatives"
                / "ground-truth"
                / "sub-04"
                / "anat"
                / f"sub-04_space-{space}_dseg.nii.gz"
            ).data
        )
        dice = 2 * ((predicted == 1) & (truth == 1)).sum() / ((predicted == 1).sum() + truth.sum())
        assert dice > 0.6, (space, dice)
