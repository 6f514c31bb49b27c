"""The command line: parsing, validation, exit codes, hand-over to ``run``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

import mmreg
from mmreg.bids_app import cli, run
from mmreg.errors import RegistrationError


def make_dataset(root: Path, files: list[str], *, description: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if description:
        (root / "dataset_description.json").write_text(
            json.dumps({"Name": "t", "BIDSVersion": "1.10.0"})
        )
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.eye(4)), path)
    return root


@pytest.fixture
def bids(tmp_path: Path) -> Path:
    files = [
        f"sub-{s}/anat/sub-{s}_{m}.nii.gz" for s in ("01", "02") for m in ("T1w", "T2w", "US")
    ]
    return make_dataset(tmp_path / "bids", files)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Replace the run functions; record what the CLI hands over."""
    seen: list[tuple[str, Any]] = []

    def participant(config: Any, pairs: Any, missing: Any = ()) -> int:
        seen.append(("participant", (config, pairs, missing)))
        return 0

    def group(config: Any) -> int:
        seen.append(("group", config))
        return 0

    def demo(**kwargs: Any) -> int:
        seen.append(("demo", kwargs))
        return 0

    monkeypatch.setattr(run, "run_participant", participant)
    monkeypatch.setattr(run, "run_group", group)
    monkeypatch.setattr(run, "run_demo", demo, raising=False)
    return seen


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mmreg {mmreg.__version__}"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "BIDS_DIR" in capsys.readouterr().out
    assert cli.main(["demo", "--help"]) == 0
    assert cli.main(["train", "--help"]) == 0


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--bogus"],
        ["a", "b", "everything"],
        ["{bids}", "{out}", "participant", "--nprocs", "0"],
        ["{bids}", "{out}", "participant", "--resolution", "-1"],
        ["{bids}", "{out}", "participant", "--methods", "no-such-method"],
        ["{bids}", "{out}", "participant", "--methods", "ants-affine+nope"],
        ["{bids}", "{out}", "participant", "--fixed", "suffix"],
        ["{bids}", "{out}", "participant", "--moving", "sub=01"],
        ["{bids}", "{out}", "participant", "--moving", "suffix=../x"],
        ["{bids}", "{out}", "participant", "--participant-label", "../01"],
        ["{bids}", "{bids}", "participant"],
        ["{bids}", "{bids}/out", "participant"],
        ["{bids}", "{bids}/derivatives", "participant"],
        ["{bids}", "{out}", "participant", "--work-dir", "{bids}/work"],
        ["{bids}", "{out}", "participant", "--participant-label", "77"],
        ["demo"],
        ["demo", "--out", "{out}", "--methods", "nope"],
        ["train", "keymorph"],
    ],
)
def test_usage_errors_exit_64(
    argv: list[str], bids: Path, calls: list, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(bids=bids, out=bids.parent / "out") for a in argv]
    assert cli.main(argv) == 64
    err = capsys.readouterr().err
    assert "mmreg: error:" in err and "Traceback" not in err
    assert calls == []


def test_missing_input_exit_66(tmp_path: Path, bids: Path, calls: list) -> None:
    assert cli.main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"]) == 66
    argv = [str(bids), str(tmp_path / "out"), "participant", "--ground-truth", str(tmp_path)]
    assert cli.main([*argv[:-1], str(tmp_path / "no-gt")]) == 66
    assert calls == []


def test_not_bids_exit_16(tmp_path: Path, calls: list, capsys: pytest.CaptureFixture) -> None:
    plain = make_dataset(tmp_path / "plain", ["sub-01/anat/sub-01_T1w.nii.gz"], description=False)
    assert cli.main([str(plain), str(tmp_path / "out"), "participant"]) == 16
    assert "dataset_description.json" in capsys.readouterr().err
    assert cli.main([str(plain), str(tmp_path / "out"), "group"]) == 16


def test_no_match_exit_18(bids: Path, calls: list, capsys: pytest.CaptureFixture) -> None:
    out = bids.parent / "out"
    assert cli.main([str(bids), str(out), "participant", "--moving", "suffix=FLAIR"]) == 18
    assert "suffix=FLAIR" in capsys.readouterr().err
    assert calls == []


def test_participant_hand_over(bids: Path, calls: list) -> None:
    out = bids / "derivatives" / "mmreg"
    argv = [
        str(bids),
        str(out),
        "participant",
        "--participant-label",
        "sub-01",
        "02",
        "--moving",
        "suffix=T2w",
        "--moving",
        "suffix=US",
        "--methods",
        "ants-affine,sitk-rigid",
        "--methods",
        "identity",
        "--random-seed",
        "7",
        "--nprocs",
        "2",
        "--worker",
        "debug",
        "--mask",
        "--prealign",
        "moments",
    ]
    assert cli.main(argv) == 0
    [(level, (config, pairs, missing))] = calls
    assert level == "participant"
    assert config.output_dir == str(out.resolve())
    assert config.work_dir == str(out.resolve() / "work")
    assert config.participant_labels == ("01", "02")
    assert config.moving == ({"suffix": "T2w"}, {"suffix": "US"})
    assert config.methods == ("ants-affine", "sitk-rigid", "identity")
    assert (config.random_seed, config.nprocs, config.worker) == (7, 2, "debug")
    assert (config.mask, config.prealign, config.ground_truth) == (True, "moments", None)
    assert [(p.subject, p.moving_label) for p in pairs] == [
        ("01", "T2w"),
        ("01", "US"),
        ("02", "T2w"),
        ("02", "US"),
    ]
    assert missing == []


def test_default_ground_truth_and_exit_status_passed_through(
    bids: Path, calls: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    gt = bids / "derivatives" / "ground-truth"
    gt.mkdir(parents=True)
    monkeypatch.setattr(run, "run_participant", lambda c, p, m=(): 65)
    assert cli.main([str(bids), str(bids.parent / "out"), "participant"]) == 65
    monkeypatch.setattr(run, "run_participant", lambda c, p, m=(): calls.append(c) or 0)
    assert cli.main([str(bids), str(bids.parent / "out"), "participant"]) == 0
    assert calls[-1].ground_truth == str(gt.resolve())
    assert calls[-1].methods == cli.default_methods()


def test_group_hand_over(bids: Path, calls: list) -> None:
    assert cli.main([str(bids), str(bids.parent / "out"), "group"]) == 0
    [(level, config)] = calls
    assert level == "group" and config.analysis_level == "group"


def test_demo_hand_over(tmp_path: Path, calls: list) -> None:
    argv = [
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--subjects",
        "2",
        "--seed",
        "3",
        "--dataset",
        "wholebody",
        "--max-rotation",
        "20",
        "--methods",
        "ants-affine",
    ]
    assert cli.main(argv) == 0
    [(level, kwargs)] = calls
    assert level == "demo"
    assert kwargs["out"] == (tmp_path / "demo").resolve()
    assert (kwargs["subjects"], kwargs["seed"], kwargs["dataset"]) == (2, 3, "wholebody")
    assert (kwargs["max_rotation"], kwargs["methods"]) == (20.0, ("ants-affine",))


def test_errors_from_run_are_one_line(
    bids: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(config: Any, pairs: Any, missing: Any = ()) -> int:
        raise RegistrationError("it broke\nbadly")

    monkeypatch.setattr(run, "run_participant", failing)
    assert cli.main([str(bids), str(bids.parent / "out"), "participant"]) == 70
    assert capsys.readouterr().err.strip().splitlines()[-1] == "mmreg: error: it broke badly"

    def buggy(config: Any, pairs: Any, missing: Any = ()) -> int:
        raise KeyError("x")

    monkeypatch.setattr(run, "run_participant", buggy)
    assert cli.main([str(bids), str(bids.parent / "out"), "participant"]) == 70
    err = capsys.readouterr().err
    assert "internal error" in err and "Traceback" not in err


def test_module_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mmreg.bids_app", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"mmreg {mmreg.__version__}"
    proc = subprocess.run(
        [sys.executable, "-m", "mmreg.bids_app", "x", "y", "participant", "--nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 64 and "Traceback" not in proc.stderr


def test_task_slots_fit_the_cpus(monkeypatch, caplog):
    monkeypatch.setattr(cli, "usable_cpus", lambda: 8)
    assert cli.task_slots(None, 1) == 8
    assert cli.task_slots(None, 3) == 2
    assert cli.task_slots(None, 16) == 1
    assert cli.task_slots(2, 4) == 2 and "oversubscribed" not in caplog.text
    assert cli.task_slots(4, 4) == 4
    assert "4 x --omp-nthreads 4 = 16 threads on 8 usable CPU(s)" in caplog.text


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        ("ants-syn:bogus=1", "takes no parameters"),
        ("keymorph-tps:lambda=abc", "lambda"),
        ("suits", "no shipped weights for suits"),
    ],
)
def test_methods_parameters_and_weights_are_checked_before_anything_is_created(
    bids: Path, calls: list, capsys: pytest.CaptureFixture[str], methods: str, message: str
) -> None:
    out = bids.parent / "out"
    assert cli.main([str(bids), str(out), "participant", "--methods", methods]) == 64
    err = capsys.readouterr().err
    assert message in err and "indexing" not in err
    assert not out.exists() and calls == []
