"""``mmreg train``: targets, options from settings dataclasses, training pairs from BIDS."""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mmreg.bids_app import cli, train
from mmreg.imaging.image import Image, save_image

from factories import second_contrast, smooth_head, write_dataset_description, write_pair


@dataclasses.dataclass(frozen=True)
class FakeSettings:
    epochs: int = dataclasses.field(default=3, metadata={"help": "passes over the data"})
    learning_rate: float = 1e-3
    variant: str = dataclasses.field(
        default="unsupervised", metadata={"choices": ("unsupervised", "supervised")}
    )
    augment: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")


CALLS: list[dict] = []


def fake_train(pairs, *, out, settings, device, progress):
    CALLS.append({"pairs": pairs, "settings": settings, "device": device})
    out.write_text("model")
    return out


@pytest.fixture
def fake_target(monkeypatch):
    module = types.ModuleType("fake_train_target")
    module.FakeSettings, module.fake_train = FakeSettings, fake_train
    monkeypatch.setitem(sys.modules, "fake_train_target", module)
    target = train.TrainTarget(
        name="fake",
        description="a fake target",
        settings="fake_train_target:FakeSettings",
        function="fake_train_target:fake_train",
    )
    monkeypatch.setitem(train.TARGETS, "fake", target)
    CALLS.clear()
    return target


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "bids"
    write_dataset_description(root)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    for i, subject in enumerate(("01", "02")):
        head = smooth_head((16, 18, 14), seed=i)
        write_pair(
            root, subject, fixed=Image(head, affine), moving=Image(second_contrast(head), affine)
        )
        gt = root / "derivatives" / "ground-truth" / f"sub-{subject}" / "anat"
        labels = Image((head > 0.5).astype(np.int32), affine)
        save_image(labels, gt / f"sub-{subject}_space-T1w_dseg.nii.gz")
    write_dataset_description(root / "derivatives" / "ground-truth")
    return root


def test_settings_become_options_and_pairs_carry_ground_truth(fake_target, dataset, tmp_path):
    out = tmp_path / "model.pt"
    argv = [
        "train",
        "fake",
        str(dataset),
        "--out",
        str(out),
        "--epochs",
        "5",
        "--learning-rate",
        "0.5",
        "--variant",
        "supervised",
        "--no-augment",
        "--participant-label",
        "02",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    [call] = CALLS
    assert call["settings"] == FakeSettings(
        epochs=5, learning_rate=0.5, variant="supervised", augment=False
    )
    assert call["device"] == "cpu"
    [pair] = call["pairs"]
    assert pair["subject"] == "02"
    assert pair["fixed"].endswith("sub-02_T1w.nii.gz")
    assert pair["moving"].endswith("sub-02_T2w.nii.gz")
    assert pair["fixed_dseg"].endswith("sub-02_space-T1w_dseg.nii.gz")
    assert out.read_text() == "model"


@pytest.mark.parametrize(
    "extra",
    [["--epochs", "0"], ["--variant", "other"], ["--epochs", "x"], []],
)
def test_bad_settings_exit_64(fake_target, dataset, tmp_path, extra, capsys):
    argv = ["train", "fake", str(dataset), *extra]
    if extra:
        argv += ["--out", str(tmp_path / "m.pt")]
    assert cli.main(argv) == 64
    assert "Traceback" not in capsys.readouterr().err
    assert CALLS == []


def test_unknown_target_and_listing(capsys):
    assert cli.main(["train", "nope", "x"]) == 64
    assert "unknown target 'nope'" in capsys.readouterr().err
    assert cli.main(["train", "--help"]) == 0
    assert "keymorph" in capsys.readouterr().out


def test_no_pairs_exit_18(fake_target, dataset, tmp_path):
    argv = [
        "train",
        "fake",
        str(dataset),
        "--out",
        str(tmp_path / "m.pt"),
        "--moving",
        "suffix=FLAIR",
    ]
    assert cli.main(argv) == 18


def test_either_target_trains_on_labelled_single_images_with_suffix(
    fake_target, dataset, tmp_path, monkeypatch
):
    from mmreg.records import LabelledImage

    monkeypatch.setitem(train.TARGETS, "fake", dataclasses.replace(fake_target, inputs="either"))
    out = tmp_path / "model.pt"
    argv = ["train", "fake", str(dataset), "--out", str(out), "--suffix", "T1w", "--no-progress"]
    assert cli.main(argv) == 0
    [call] = CALLS
    images = call["pairs"]
    assert [type(i) for i in images] == [LabelledImage, LabelledImage]
    assert [i.subject for i in images] == ["01", "02"]
    assert all(i.suffix == "T1w" and i.path.endswith("_T1w.nii.gz") for i in images)
    assert images[1].dseg.endswith("sub-02_space-T1w_dseg.nii.gz")
    # Without --suffix the same target takes pairs.
    CALLS.clear()
    assert cli.main(["train", "fake", str(dataset), "--out", str(out), "--no-progress"]) == 0
    assert CALLS[0]["pairs"][0]["moving"].endswith("_T2w.nii.gz")
