"""Annotation transfer DXA -> MR slice and ``mmreg train unet-transfer``."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mmreg.bids_app import train as train_cli
from mmreg.errors import InputError, UsageError
from mmreg.imaging.image import Grid, Image, save_image
from mmreg.imaging.phantoms.wholebody import WholeBodySettings
from mmreg.imaging.phantoms.wholebody_dataset import write_wholebody_dataset
from mmreg.imaging.transform import Transform
from mmreg.segmentation import unet_transfer as ut
from mmreg.segmentation.evaluate import evaluate_subjects, summarise, write_rows
from mmreg.segmentation.train import dice_per_class
from mmreg.segmentation.transfer import (
    inverse_transform,
    load_mr_slice,
    transfer_labels,
    transfer_subject,
)

TINY = {"epochs": 1, "width": 4, "depth": 2, "batch_size": 2, "prealign": "none"}


def _rigid(angle_deg: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    m[:2, 3] = shift
    return m


# --- geometry ----------------------------------------------------------------------------------


def test_inverse_of_linear_and_deformable_maps():
    grid = Grid((30, 40), np.diag([2.0, 2.0, 1.0, 1.0]))
    points = grid.world_coordinates().reshape(-1, 3)[::37]
    rigid = Transform.from_affine(_rigid(5.0, (7.0, -3.0)), ndim=2)
    back = inverse_transform(rigid, grid).map_points(rigid.map_points(points))
    np.testing.assert_allclose(back, points, atol=1e-9)
    # A smooth bump after the rotation: solved point by point on the grid.
    field = np.zeros((*grid.shape, 3))
    x = grid.world_coordinates()
    field[..., 0] = 3.0 * np.exp(-((x[..., 0] - 30) ** 2 + (x[..., 1] - 40) ** 2) / 200.0)
    warp = rigid.then(Transform.from_field(grid, field))
    inv = inverse_transform(warp, grid)
    assert not inv.is_linear
    np.testing.assert_allclose(warp.map_points(inv.map_points(points)), points, atol=1e-3)


def test_labels_move_with_a_hand_made_transform():
    # Fixed (DXA) labels: a square at voxels 5..9 (1 mm grid). The map sends fixed point
    # p to moving point p + (10, -2) mm, so on the moving grid the square sits at 15..19
    # in x and 3..7 in y.
    labels = np.zeros((30, 20), np.int32)
    labels[5:10, 5:10] = 2
    grid = Grid((30, 20), np.eye(4))
    shift = Transform.from_affine(_rigid(0.0, (10.0, -2.0)), ndim=2)
    moved = transfer_labels(Image(labels), shift, grid, source="fixed")
    assert moved.data.dtype == np.int32
    assert set(np.unique(moved.data)) == {0, 2}
    rows, cols = np.nonzero(moved.data)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (15, 19, 3, 7)
    # Labels of the moving image are pulled straight onto the fixed grid: back again.
    again = transfer_labels(moved, shift, grid, source="moving")
    np.testing.assert_array_equal(again.data, labels)
    # A 90-degree turn about the origin: fixed (x, y) -> moving (-y, x).
    square = Grid(
        (21, 21), np.array([[1.0, 0, 0, -10], [0, 1, 0, -10], [0, 0, 1, 0], [0, 0, 0, 1]])
    )
    dot = np.zeros((21, 21), np.int32)
    dot[13, 10] = 1  # world (3, 0)
    turned = transfer_labels(
        Image(dot, square.affine), Transform.from_affine(_rigid(90.0, (0, 0)), ndim=2), square
    )
    assert np.argwhere(turned.data).tolist() == [[10, 13]]  # world (0, 3)


# --- tiny 2D subjects --------------------------------------------------------------------------


def _subject(root: Path, sid: str, seed: int, *, broken: bool = False) -> dict:
    """A 2D 'DXA' and a 2D Dixon 'MR slice' (fat, water files) with labels, same world."""
    rng = np.random.default_rng(seed)
    affine = np.diag([2.0, 2.0, 1.0, 1.0])
    labels = np.zeros((24, 40), np.int32)
    r, c = rng.integers(4, 10), rng.integers(4, 18)
    labels[r : r + 8, c : c + 14] = 1
    labels[r + 2 : r + 6, c + 16 : c + 20] = 2
    anat = root / f"sub-{sid}" / "anat"
    gt = root / "derivatives" / "ground-truth" / f"sub-{sid}" / "anat"
    noise = lambda: 0.05 * rng.standard_normal(labels.shape)  # noqa: E731
    dxa = anat / f"sub-{sid}_rec-bone_DXA.nii.gz"
    save_image(Image((labels > 0) + 0.5 + noise(), affine), dxa)
    fat = anat / f"sub-{sid}_acq-dixon_rec-fat_T1w.nii.gz"
    water = anat / f"sub-{sid}_acq-dixon_rec-water_T1w.nii.gz"
    save_image(Image((labels == 1) + 0.3 + noise(), affine), fat)
    save_image(Image((labels == 2) + 0.2 + noise(), affine), water)
    if broken:
        fat.write_bytes(b"not a nifti file")
    save_image(Image(labels, affine), gt / f"sub-{sid}_space-DXA_dseg.nii.gz")
    save_image(Image(labels, affine), gt / f"sub-{sid}_space-T1w_dseg.nii.gz")
    (root / "derivatives" / "ground-truth" / "dseg.tsv").write_text(
        "index\tname\n0\tbackground\n1\tspine\n2\tpelvis\n"
    )
    return {
        "subject": sid,
        "session": None,
        "fixed": str(dxa),
        "moving": str(fat),
        "fixed_label": "DXA",
        "moving_label": "T1w",
        "fixed_dseg": str(gt / f"sub-{sid}_space-DXA_dseg.nii.gz"),
        "moving_dseg": str(gt / f"sub-{sid}_space-T1w_dseg.nii.gz"),
    }


@pytest.fixture
def records(tmp_path) -> list[dict]:
    return [_subject(tmp_path, f"0{i}", seed=i) for i in range(1, 5)]


def test_mr_slice_channels_are_fat_then_water_whichever_file_is_named(records):
    fat = load_mr_slice(records[0]["moving"])
    water = load_mr_slice(records[0]["moving"].replace("rec-fat", "rec-water"))
    assert fat.roles == water.roles == ("fat", "water")
    assert (fat.registered, water.registered) == (0, 1)
    np.testing.assert_array_equal(fat.channels, water.channels)


def test_transfer_with_identity_reproduces_the_labels(records):
    item = transfer_subject(records[0], "identity", prealign_mode="none")
    assert item.subject == "01" and item.extras["method"] == "identity"
    np.testing.assert_array_equal(item.labels, item.truth)


def test_training_writes_a_safe_checkpoint_and_skips_a_failing_subject(records, tmp_path, caplog):
    records.append(_subject(tmp_path, "09", seed=9, broken=True))
    settings = ut.UNetTransferSettings(method="identity", val_fraction=0.25, seed=1, **TINY)
    out = tmp_path / "unet.pt"
    with caplog.at_level(logging.WARNING):
        assert ut.train_unet_transfer(records, out=out, settings=settings, progress=False) == out
    assert "sub-09 skipped" in caplog.text
    payload = torch.load(io.BytesIO(out.read_bytes()), weights_only=True)
    assert set(payload) == {"config", "state_dict", "metadata"}
    assert payload["config"]["channels"] == ["fat", "water"]
    meta = payload["metadata"]
    assert meta["method"] == "unet-transfer"
    training = meta["training"]
    assert training["transfer_method"] == "identity"
    assert [s["subject"] for s in training["skipped"]] == ["09"]
    assert sorted(training["train_subjects"] + training["val_subjects"]) == [
        "01",
        "02",
        "03",
        "04",
    ]
    assert len(training["val_subjects"]) == 1 and len(training["history"]) == 1
    assert training["seed"] == 1 and training["seed_protocol"].startswith("mmreg-seed-")
    assert not (tmp_path / "unet.pt.state").exists()  # the resumable state is gone
    assert meta["label_names"] == {"0": "background", "1": "spine", "2": "pelvis"}
    # Identity transfer of identical labels: the transferred labels are the truth.
    assert training["val_truth"]["transferred_dice"]["mean"] == 1.0
    assert set(training["val_truth"]["unet_dice"]) == {"spine", "pelvis", "mean"}
    segmenter = ut.load_unet_transfer(out)
    assert segmenter.config.n_classes == 3 and segmenter.channels == ("fat", "water")
    # Same seed, same weights (the file differs: wall times are in the metadata).
    again = tmp_path / "again.pt"
    ut.train_unet_transfer(records, out=again, settings=settings, progress=False)
    repeat = ut.load_unet_transfer(again).metadata
    assert repeat["weights_sha256"] == meta["weights_sha256"]
    assert repeat["training"]["history"] == training["history"]


def test_no_transferable_subject_is_an_input_error(tmp_path):
    records = [_subject(tmp_path, "01", seed=1, broken=True)]
    settings = ut.UNetTransferSettings(method="identity", **TINY)
    with pytest.raises(InputError, match="no subject could be transferred"):
        ut.train_unet_transfer(records, out=tmp_path / "m.pt", settings=settings, progress=False)


def test_a_segmenter_learns_the_tiny_task_and_is_scored(records, tmp_path):
    subjects, _ = ut.collect_subjects(
        records, method="identity", prealign_mode="none", progress=False
    )
    settings = ut.UNetTransferSettings(
        method="identity", epochs=25, width=8, depth=2, batch_size=2, seed=0, val_fraction=0.25
    )
    segmenter, summary = ut.fit_unet_transfer(
        subjects, settings, label_names={1: "spine", 2: "pelvis"}, progress=False
    )
    assert summary["val_truth"]["unet_dice"]["mean"] > 0.8
    rows = evaluate_subjects(records, segmenter, progress=False, predictions=tmp_path / "pred")
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert min(r["dice_mean"] for r in rows) > 0.8
    assert len(list((tmp_path / "pred").glob("*_dseg.nii.gz"))) == 4
    csv = write_rows(rows, tmp_path / "eval.csv").read_text().splitlines()
    assert csv[0].startswith("subject,session,status,error,truth,runtime_s,dice_mean,dice_spine")
    assert summarise(rows)["n_ok"] == 4
    # A working grid coarser than the slice: predictions still come on the slice grid.
    coarse = ut.UNetTransferSettings(method="identity", spacing_mm=4.0, **TINY)
    segmenter, summary = ut.fit_unet_transfer(subjects, coarse, progress=False)
    assert summary["spacing_mm"] == 4.0
    assert segmenter.predict(subjects[0].mr).shape == subjects[0].mr.grid.shape


def test_a_missing_truth_fails_only_that_row(records, tmp_path):
    subjects, _ = ut.collect_subjects(records[:2], method="identity", progress=False)
    segmenter, _ = ut.fit_unet_transfer(subjects, ut.UNetTransferSettings(**TINY), progress=False)
    Path(records[1]["moving_dseg"]).unlink()
    rows = evaluate_subjects(records[:2], segmenter, progress=False)
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "no ground-truth" in rows[1]["error"]


# --- settings and the CLI target ---------------------------------------------------------------


def test_cli_target_parses_its_settings():
    target = train_cli.TARGETS["unet-transfer"]
    settings_cls, function = target.load()
    assert settings_cls is ut.UNetTransferSettings and function is ut.train_unet_transfer
    parser = train_cli.build_train_parser(target, settings_cls)
    args = parser.parse_args(
        ["bids", "--out", "m.pt", "--method", "sitk-rigid", "--epochs", "3", "--no-augment"]
    )
    settings = train_cli.settings_from_args(settings_cls, args)
    assert (settings.method, settings.epochs, settings.augment) == ("sitk-rigid", 3, False)
    assert settings.model == "" and settings.prealign == "com"
    with pytest.raises(UsageError, match="unknown method"):
        train_cli.settings_from_args(
            settings_cls, parser.parse_args(["bids", "--out", "m.pt", "--method", "nope"])
        )
    with pytest.raises(UsageError):
        parser.parse_args(["bids", "--out", "m.pt", "--prealign", "sideways"])


def test_model_option_is_checked_before_any_work(tmp_path, monkeypatch):
    assert ut.parse_model_option("", "sitk-rigid") == {}
    with pytest.raises(UsageError, match="no selected method uses"):
        ut.parse_model_option("contrastive=x.pt", "sitk-rigid")
    with pytest.raises(UsageError, match="FAMILY=PATH"):
        ut.parse_model_option("refine.pt", "contrastive-refine")
    with pytest.raises(UsageError, match="file not found"):
        ut.parse_model_option(f"contrastive-refine={tmp_path / 'no.pt'}", "contrastive-refine")
    weights = tmp_path / "refine.pt"
    weights.write_bytes(b"x")
    assert ut.parse_model_option(f"contrastive-refine={weights}", "contrastive-refine") == {
        "contrastive-refine": str(weights.resolve())
    }
    monkeypatch.setattr("mmreg.models.MODEL_DIR", tmp_path / "none")
    with pytest.raises(InputError, match="no shipped weights"):
        ut.parse_model_option("", "contrastive-refine")


def test_train_help_lists_the_target(capsys):
    assert train_cli.main_train(["--help"]) == 0
    assert "unet-transfer" in capsys.readouterr().out


# --- the real whole-body path (small phantom) --------------------------------------------------

SMALL = WholeBodySettings(
    mr_spacing_mm=4.4, mr_size=(112, 251), dxa_spacing_mm=4.4, dxa_size=(150, 400)
)


@pytest.fixture(scope="module")
def wholebody(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wb") / "bids"
    return write_wholebody_dataset(root, n_subjects=1, seed=30_000_001, settings=SMALL)


def test_true_transform_moves_the_dxa_spine_onto_the_mr_slice_spine(wholebody, tmp_path):
    target = train_cli.TARGETS["unet-transfer"]
    args = train_cli.build_train_parser(target, ut.UNetTransferSettings).parse_args(
        [str(wholebody), "--out", str(tmp_path / "m.pt")]
    )
    records = train_cli.training_pairs(target, args)
    gt = Path(records[0]["fixed_dseg"]).parent
    truth = Transform.read(next(gt.glob("*_from-DXA_to-midcoronal_desc-truth_xfm.txt")), ndim=2)
    item = transfer_subject(records[0], truth)
    assert item.mr.roles == ("fat", "water") and item.mr.coronal is not None
    assert item.truth is not None and item.truth.shape == item.labels.shape
    spine, pelvis, cavity = dice_per_class(item.labels, item.truth, 4)
    # The DXA pelvis is a projection of the whole bone; the slice cuts through it.
    assert spine > 0.85 and cavity > 0.8 and pelvis < spine
    # Against the projection footprint of the MR's 3D labels, the same kind of object as
    # the DXA labels, the pelvis agrees as well as the rest.
    assert item.footprint is not None and item.footprint.shape == item.labels.shape
    spine_f, pelvis_f, cavity_f = dice_per_class(item.labels, item.footprint, 4)
    assert min(spine_f, pelvis_f, cavity_f) > 0.9 and pelvis_f > pelvis + 0.3
    # Unseen subjects are read from the MR alone: the same slice, channels and truth.
    alone = load_mr_slice(records[0]["moving"].replace("rec-fat", "rec-water"))
    assert alone.roles == ("fat", "water") and alone.grid.shape == item.mr.grid.shape
    np.testing.assert_allclose(alone.grid.affine, item.mr.grid.affine)
    np.testing.assert_allclose(alone.channels, item.mr.channels)
    identity = transfer_subject(records[0], "identity", prealign_mode="none")
    assert dice_per_class(identity.labels, identity.truth, 4)[0] < spine


def test_mmreg_train_unet_transfer_end_to_end(wholebody, tmp_path):
    out = tmp_path / "unet.pt"
    argv = [str(wholebody), "--out", str(out), "--method", "identity", "--prealign", "none"]
    argv += ["--epochs", "1", "--width", "4", "--depth", "2", "--spacing-mm", "8.8"]
    argv += ["--val-fraction", "0", "--no-progress", "--omp-nthreads", "1"]
    assert train_cli.main_train(["unet-transfer", *argv]) == 0
    segmenter = ut.load_unet_transfer(out)
    training = segmenter.metadata["training"]
    assert training["transfer_method"] == "identity" and training["train_subjects"] == ["01"]
    assert segmenter.spacing_mm == 8.8 and segmenter.config.n_classes == 4
    assert segmenter.label_names[1] == "spine"
