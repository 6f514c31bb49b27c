"""Never overwrite what mmreg did not write; check outputs and options up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmreg.bids_app.cli import main


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_demo_refuses_an_existing_dataset(good_dataset, capsys):
    out = good_dataset.parent  # --out/bids is the user's dataset
    (good_dataset / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    before = _snapshot(good_dataset)
    assert main(["demo", "--out", str(out), "--subjects", "1"]) == 64
    assert "never replaces" in capsys.readouterr().err
    assert _snapshot(good_dataset) == before


def test_output_dir_with_someone_elses_files_is_left_alone(good_dataset, tmp_path, capsys):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    (out / "dataset_description.json").write_text(json.dumps({"Name": "my derivatives"}))
    before = _snapshot(out)
    argv = [str(good_dataset), str(out), "participant", "--methods", "identity"]
    assert main(argv) == 64
    assert "my derivatives" in capsys.readouterr().err
    assert _snapshot(out) == before
    (out / "dataset_description.json").unlink()
    assert main(argv) == 64  # plain foreign files too
    assert (out / "README.md").read_text() == "my notes\n"


def test_ground_truth_folder_is_not_an_output_dir(good_dataset, capsys):
    truth = good_dataset / "derivatives" / "ground-truth"
    truth.mkdir(parents=True)
    description = {"Name": "truth", "DatasetType": "derivative", "GeneratedBy": [{"Name": "me"}]}
    (truth / "dataset_description.json").write_text(json.dumps(description))
    before = _snapshot(truth)
    assert main([str(good_dataset), str(truth), "participant", "--methods", "identity"]) == 64
    assert _snapshot(truth) == before


def test_own_output_dir_is_reused(good_dataset, tmp_path):
    out = tmp_path / "out"
    argv = [str(good_dataset), str(out), "participant", "--methods", "identity"]
    assert main([*argv, "--worker", "debug"]) == 0
    assert main([*argv, "--worker", "debug"]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resolution", "0.05"], "between 0.1 and 20 mm"),
        (["--resolution", "500"], "between 0.1 and 20 mm"),
        (["--work-dir", "FILE"], "is not a folder"),
    ],
)
def test_bad_options_are_checked_before_running(good_dataset, tmp_path, capsys, extra, message):
    (tmp_path / "FILE").write_text("x")
    extra = [str(tmp_path / "FILE") if e == "FILE" else e for e in extra]
    out = tmp_path / "out"
    assert main([str(good_dataset), str(out), "participant", *extra]) == 64
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_output_dir_that_is_a_file(good_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("x")
    assert main([str(good_dataset), str(out), "participant"]) == 64
    assert "not a folder" in capsys.readouterr().err
    assert out.read_text() == "x"
