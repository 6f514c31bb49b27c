"""Brain phantom dataset (the brain demo): BIDS layout, ground-truth files and validation."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mmreg.imaging.image import load_image, load_labels
from mmreg.imaging.phantoms.bids_writer import subject_seed
from mmreg.imaging.phantoms.brain import BRAIN_LABELS, MNI_LANDMARKS, generate_brain_subject
from mmreg.imaging.phantoms.brain_dataset import write_demo_dataset

MODS = ("T1w", "T2w", "PDw")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "bids", n_subjects=2, seed=7)


def _tsv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines(), delimiter="\t"))


def test_raw_dataset_layout(demo: Path) -> None:
    desc = json.loads((demo / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.10.0" and desc["DatasetType"] == "raw"
    assert desc["Name"] and desc["License"] and desc["Authors"]
    assert (demo / "README").read_text().strip()
    rows = _tsv(demo / "participants.tsv")
    assert [r["participant_id"] for r in rows] == ["sub-01", "sub-02"]
    assert [int(r["seed"]) for r in rows] == [subject_seed(7, 1), subject_seed(7, 2)]
    assert set(json.loads((demo / "participants.json").read_text())) == {
        "participant_id",
        "seed",
    }
    for sub in ("sub-01", "sub-02"):
        files = sorted(p.name for p in (demo / sub / "anat").iterdir())
        assert files == sorted(f"{sub}_{m}.{e}" for m in MODS for e in ("nii.gz", "json"))
        t2 = load_image(demo / sub / "anat" / f"{sub}_T2w.nii.gz")
        pd = load_image(demo / sub / "anat" / f"{sub}_PDw.nii.gz")
        np.testing.assert_allclose(t2.affine, pd.affine)


def test_ground_truth_layout(demo: Path) -> None:
    gt = demo / "derivatives" / "ground-truth"
    desc = json.loads((gt / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "mmreg"
    table = _tsv(gt / "dseg.tsv")
    assert {int(r["index"]): r["name"] for r in table} == BRAIN_LABELS
    for sub in ("sub-01", "sub-02"):
        anat = gt / sub / "anat"
        for mod in MODS:
            labels = load_labels(anat / f"{sub}_space-{mod}_dseg.nii.gz")
            image = load_image(demo / sub / "anat" / f"{sub}_{mod}.nii.gz")
            assert labels.shape == image.shape
            np.testing.assert_allclose(labels.affine, image.affine)
            assert set(np.unique(labels.data)) == set(BRAIN_LABELS)
            rows = _tsv(anat / f"{sub}_space-{mod}_desc-landmarks.tsv")
            assert list(rows[0]) == ["name", "x", "y", "z"]
            assert [r["name"] for r in rows] == list(MNI_LANDMARKS)
        for mod in MODS[1:]:
            stem = f"{sub}_from-T1w_to-{mod}_desc-truth_xfm"
            xfm = json.loads((anat / f"{stem}.json").read_text())
            assert np.asarray(xfm["Pose"]).shape == (4, 4)
            assert (anat / xfm["DisplacementField"]).is_file()


def test_dataset_matches_the_generator(demo: Path) -> None:
    subject = generate_brain_subject(subject_seed(7, 2))
    t1 = load_image(demo / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    np.testing.assert_allclose(t1.data, np.rint(subject.t1w.data), atol=0.5)
    rows = _tsv(demo / "derivatives/ground-truth/sub-02/anat/sub-02_space-PDw_desc-landmarks.tsv")
    got = np.array([[float(r[c]) for c in "xyz"] for r in rows])
    want = np.array(list(subject.landmarks_moving.values()))
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_subject_seeds_are_deterministic_and_distinct() -> None:
    assert subject_seed(7, 1) == subject_seed(7, 1)
    seeds = {subject_seed(s, k) for s in range(3) for k in range(1, 5)}
    assert len(seeds) == 12
    with pytest.raises(ValueError):
        write_demo_dataset(Path("unused"), n_subjects=0, seed=0)


def _validate(path: Path) -> dict:
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        pytest.skip("bids-validator-deno not installed")
    proc = subprocess.run(
        [exe, str(path), "--format", "json"], capture_output=True, text=True, timeout=300
    )
    return json.loads(proc.stdout)


@pytest.mark.parametrize("sub_path", ["", "derivatives/ground-truth"], ids=["raw", "derivatives"])
def test_bids_validator_finds_no_errors(demo: Path, sub_path: str) -> None:
    report = _validate(demo / sub_path)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == []
