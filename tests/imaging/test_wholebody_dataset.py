"""Whole-body demo dataset: BIDS layout, ground truth, mmreg's query, BIDS validation."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mmreg.bids_app.config import Config
from mmreg.bids_app.query import find_pairs
from mmreg.imaging.groundtruth import read_label_names, read_landmarks
from mmreg.imaging.image import load_image, load_labels
from mmreg.imaging.phantoms.bids_writer import subject_seed
from mmreg.imaging.phantoms.wholebody import (
    LANDMARK_NAMES,
    WHOLEBODY_LABELS,
    WholeBodySettings,
    generate_wholebody_subject,
)
from mmreg.imaging.phantoms.wholebody_dataset import (
    FILES,
    FIXED_FILTER,
    MOVING_FILTER,
    MR_SLICE_SPACE,
    mr_slice_settings,
    write_wholebody_dataset,
)
from mmreg.imaging.slice_synthesis import synthesize_coronal_slice
from mmreg.imaging.transform import Transform

SMALL = WholeBodySettings(
    mr_spacing_mm=4.4, mr_size=(112, 251), dxa_spacing_mm=4.4, dxa_size=(150, 400)
)
SPACES = ("DXA", "T1w", MR_SLICE_SPACE)
#: Warnings the validator gives the brain demo too: metadata that a phantom has none of.
ACCEPTED_WARNINGS = {"SIDECAR_KEY_RECOMMENDED", "JSON_KEY_RECOMMENDED", "TOO_FEW_AUTHORS"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wholebody") / "bids"
    return write_wholebody_dataset(root, n_subjects=2, seed=7, settings=SMALL)


def _tsv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines(), delimiter="\t"))


def _gt(demo: Path, sub: str) -> Path:
    return demo / "derivatives" / "ground-truth" / sub / "anat"


def test_raw_dataset_layout(demo: Path) -> None:
    desc = json.loads((demo / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.10.0" and desc["DatasetType"] == "raw"
    assert (demo / "README").read_text().strip()
    rows = _tsv(demo / "participants.tsv")
    assert [r["participant_id"] for r in rows] == ["sub-01", "sub-02"]
    assert [int(r["seed"]) for r in rows] == [subject_seed(7, 1), subject_seed(7, 2)]
    # Only what BIDS cannot express is ignored: the DXA images.
    assert (demo / ".bidsignore").read_text().split() == ["*_DXA.nii.gz", "*_DXA.json"]
    for sub in ("sub-01", "sub-02"):
        names = sorted(p.name for p in (demo / sub / "anat").iterdir())
        assert names == sorted(
            f"{sub}_{s}.{e}" for s in FILES.values() for e in ("nii.gz", "json")
        )
        fat = load_image(demo / sub / "anat" / f"{sub}_{FILES['fat']}.nii.gz", ndim=3)
        water = load_image(demo / sub / "anat" / f"{sub}_{FILES['water']}.nii.gz", ndim=3)
        np.testing.assert_allclose(fat.affine, water.affine)
        bone = load_image(demo / sub / "anat" / f"{sub}_{FILES['bone']}.nii.gz", ndim=2)
        tissue = load_image(demo / sub / "anat" / f"{sub}_{FILES['tissue']}.nii.gz", ndim=2)
        assert bone.shape == tissue.shape == SMALL.dxa_size
        np.testing.assert_allclose(bone.grid.voxel_to_world([[0, 0], [5, 9]])[:, 2], 0.0)


def test_ground_truth_layout(demo: Path) -> None:
    gt = demo / "derivatives" / "ground-truth"
    desc = json.loads((gt / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "mmreg"
    assert read_label_names(gt / "dseg.tsv") == WHOLEBODY_LABELS
    for sub in ("sub-01", "sub-02"):
        anat = _gt(demo, sub)
        references = {
            "DXA": load_image(demo / sub / "anat" / f"{sub}_{FILES['bone']}.nii.gz"),
            "T1w": load_image(demo / sub / "anat" / f"{sub}_{FILES['fat']}.nii.gz"),
            MR_SLICE_SPACE: load_image(
                anat / f"{sub}_acq-dixon_rec-fat_space-{MR_SLICE_SPACE}_T1w.nii.gz"
            ),
        }
        for space in SPACES:
            labels = load_labels(anat / f"{sub}_space-{space}_dseg.nii.gz")
            assert labels.shape == references[space].shape, space
            np.testing.assert_allclose(labels.affine, references[space].affine, atol=1e-4)
            assert set(np.unique(labels.data)) == set(WHOLEBODY_LABELS), space
            landmarks = read_landmarks(anat / f"{sub}_space-{space}_desc-landmarks.tsv")
            assert list(landmarks) == list(LANDMARK_NAMES)
            if space != "T1w":
                assert all(v[2] == 0.0 for v in landmarks.values())  # 2D: z = 0
        assert references[MR_SLICE_SPACE].shape == mr_slice_settings().size


def test_true_transform_maps_dxa_landmarks_onto_the_slice(demo: Path) -> None:
    for sub in ("sub-01", "sub-02"):
        anat = _gt(demo, sub)
        stem = f"{sub}_from-DXA_to-{MR_SLICE_SPACE}_desc-truth_xfm"
        xfm = Transform.read(anat / f"{stem}.txt", ndim=2)
        dxa = read_landmarks(anat / f"{sub}_space-DXA_desc-landmarks.tsv")
        mr = read_landmarks(anat / f"{sub}_space-{MR_SLICE_SPACE}_desc-landmarks.tsv")
        pts = np.array([dxa[n] for n in LANDMARK_NAMES])
        want = np.array([mr[n] for n in LANDMARK_NAMES])
        # Exact on the trunk; the humeral heads move with the shoulders between scans.
        trunk = [i for i, n in enumerate(LANDMARK_NAMES) if not n.startswith("humeral")]
        np.testing.assert_allclose(xfm.map_points(pts)[trunk], want[trunk], atol=1e-3)
        assert np.max(np.linalg.norm(xfm.map_points(pts) - want, axis=1)) < 15.0
        assert np.max(np.linalg.norm(pts - want, axis=1)) > 30.0  # not the identity
        meta = json.loads((anat / f"{stem}.json").read_text())
        np.testing.assert_allclose(np.asarray(meta["Matrix"]), xfm.as_affine(), atol=1e-6)


def test_dataset_matches_the_generator(demo: Path) -> None:
    subject = generate_wholebody_subject(subject_seed(7, 2), settings=SMALL)
    bone = load_image(demo / "sub-02" / "anat" / f"sub-02_{FILES['bone']}.nii.gz")
    np.testing.assert_allclose(bone.data, subject.dxa_bone.data, rtol=1e-6)
    fat = load_image(demo / "sub-02" / "anat" / f"sub-02_{FILES['fat']}.nii.gz")
    np.testing.assert_allclose(fat.data, np.rint(subject.mr_fat.data), atol=0.5)
    got = read_landmarks(_gt(demo, "sub-02") / "sub-02_space-T1w_desc-landmarks.tsv")
    want = subject.landmarks_mr
    np.testing.assert_allclose([got[n] for n in want], list(want.values()), atol=1e-3)


def test_slice_ground_truth_is_what_mmreg_makes_from_the_files(demo: Path) -> None:
    anat, gt = demo / "sub-01" / "anat", _gt(demo, "sub-01")
    fat = load_image(anat / f"sub-01_{FILES['fat']}.nii.gz")
    water = load_image(anat / f"sub-01_{FILES['water']}.nii.gz")
    out = synthesize_coronal_slice([fat, water], settings=mr_slice_settings())
    assert out.path.found
    labels = out.sample(load_labels(gt / "sub-01_space-T1w_dseg.nii.gz"))
    written = load_labels(gt / f"sub-01_space-{MR_SLICE_SPACE}_dseg.nii.gz")
    assert np.mean(labels.data == written.data) > 0.999
    image = load_image(gt / f"sub-01_acq-dixon_rec-fat_space-{MR_SLICE_SPACE}_T1w.nii.gz")
    np.testing.assert_allclose(image.data, out.images[0].data, rtol=1e-4, atol=1e-3)


def test_mmreg_query_finds_the_pairs_and_ground_truth(demo: Path, tmp_path: Path) -> None:
    config = Config(
        bids_dir=demo,
        output_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        fixed=FIXED_FILTER,
        moving=(MOVING_FILTER,),
        ground_truth=demo / "derivatives" / "ground-truth",
    )
    pairs, missing = find_pairs(config)
    assert missing == [] and [p.subject for p in pairs] == ["01", "02"]
    for pair in pairs:
        assert pair.fixed.endswith(f"_{FILES['bone']}.nii.gz")
        assert pair.moving.endswith(f"_{FILES['fat']}.nii.gz")
        assert pair.fixed_dseg.endswith("_space-DXA_dseg.nii.gz")
        assert pair.moving_dseg.endswith("_space-T1w_dseg.nii.gz")
        assert pair.fixed_landmarks.endswith("_space-DXA_desc-landmarks.tsv")
        assert pair.moving_landmarks.endswith("_space-T1w_desc-landmarks.tsv")


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_wholebody_dataset(tmp_path / "x", n_subjects=0, seed=0)
    timings: dict[str, list[float]] = {}
    write_wholebody_dataset(
        tmp_path / "one", n_subjects=1, seed=1, settings=SMALL, timings=timings
    )
    assert len(timings["generate_s"]) == len(timings["write_s"]) == 1


def _validate(path: Path) -> list[dict]:
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        pytest.skip("bids-validator-deno not installed")
    proc = subprocess.run(
        [exe, str(path), "--format", "json"], capture_output=True, text=True, timeout=300
    )
    return json.loads(proc.stdout)["issues"]["issues"]


@pytest.mark.parametrize("sub_path", ["", "derivatives/ground-truth"], ids=["raw", "derivatives"])
def test_bids_validator_accepts_the_dataset(demo: Path, sub_path: str) -> None:
    issues = _validate(demo / sub_path)
    assert [i for i in issues if i["severity"] == "error"] == []
    assert {i["code"] for i in issues} <= ACCEPTED_WARNINGS


def test_bidsignore_is_needed_for_the_dxa_only(demo: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bids"
    shutil.copytree(demo, copy, ignore=shutil.ignore_patterns("derivatives"))
    (copy / ".bidsignore").unlink()
    errors = [i for i in _validate(copy) if i["severity"] == "error"]
    assert errors
    assert all("_DXA." in str(i.get("location", "")) for i in errors if i.get("location"))
