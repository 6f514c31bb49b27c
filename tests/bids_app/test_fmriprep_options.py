"""fMRIPrep-style participant options: filter file, sessions, config file, stop on first
crash, BIDS validation, and the help's methods and exit codes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from mmreg.bids_app import cli, derivatives, run, validator
from mmreg.bids_app.config import Config
from mmreg.methods import available_methods

from factories import write_broken_subject
from reliability_data import write_good_dataset


def make_dataset(root: Path, files: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.10.0"})
    )
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), path)
    return root


@pytest.fixture
def bids(tmp_path: Path) -> Path:
    files = [
        f"sub-{s}/anat/sub-{s}_{m}.nii.gz"
        for s in ("01", "02")
        for m in ("acq-mprage_T1w", "acq-fast_T1w", "T2w", "US")
    ]
    return make_dataset(tmp_path / "bids", files)


@pytest.fixture
def sessions(tmp_path: Path) -> Path:
    files = [
        f"sub-{s}/ses-{v}/anat/sub-{s}_ses-{v}_{m}.nii.gz"
        for s in ("01", "02")
        for v in ("1", "2")
        for m in ("T1w", "T2w")
    ]
    # sub-03 has no session 2: it is left out, not failed, when only session 2 is asked for.
    files += [f"sub-03/ses-1/anat/sub-03_ses-1_{m}.nii.gz" for m in ("T1w", "T2w")]
    return make_dataset(tmp_path / "sessions", files)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any, Any]]:
    """Replace the participant run; record the config, pairs and missing pairs."""
    seen: list[tuple[Any, Any, Any]] = []

    def participant(config: Any, pairs: Any, missing: Any = ()) -> int:
        seen.append((config, pairs, missing))
        return 0

    monkeypatch.setattr(run, "run_participant", participant)
    return seen


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def names(pairs: list[Any]) -> list[tuple[str, str, str]]:
    return [(p.subject, Path(p.fixed).name, Path(p.moving).name) for p in pairs]


# ---------------------------------------------------------------------------------------------
# --bids-filter-file


def test_filter_file_with_the_defaults_selects_the_default_pairs(
    tmp_path: Path, calls: list
) -> None:
    bids = make_dataset(
        tmp_path / "plain",
        [f"sub-{s}/anat/sub-{s}_{m}.nii.gz" for s in ("01", "02") for m in ("T1w", "T2w", "US")],
    )
    out = str(tmp_path / "out")
    assert cli.main([str(bids), out, "participant"]) == 0
    spec = {"fixed": {"suffix": "T1w"}, "moving": {"suffix": "T2w"}}
    filters = write_json(tmp_path / "filters.json", spec)
    assert cli.main([str(bids), out, "participant", "--bids-filter-file", str(filters)]) == 0
    (_, default_pairs, default_missing), (config, pairs, missing) = calls
    assert pairs == default_pairs and len(pairs) == 2
    assert missing == default_missing == []
    assert config.fixed == {"suffix": "T1w"} and config.moving == ({"suffix": "T2w"},)


def test_filter_file_long_names_and_a_list_of_moving_queries(
    bids: Path, tmp_path: Path, calls: list
) -> None:
    spec = {
        "fixed": {"suffix": "T1w", "acquisition": "mprage"},
        "moving": [{"suffix": "T2w"}, {"suffix": "US"}],
    }
    filters = write_json(tmp_path / "filters.json", spec)
    argv = [str(bids), str(tmp_path / "out"), "participant", "--bids-filter-file", str(filters)]
    assert cli.main(argv) == 0
    [(config, pairs, missing)] = calls
    assert config.fixed == {"suffix": "T1w", "acquisition": "mprage"}
    assert config.moving == ({"suffix": "T2w"}, {"suffix": "US"})
    assert names(pairs) == [
        (s, f"sub-{s}_acq-mprage_T1w.nii.gz", f"sub-{s}_{m}.nii.gz")
        for s in ("01", "02")
        for m in ("T2w", "US")
    ]
    assert missing == []


def test_command_line_filters_win_key_by_key(bids: Path, tmp_path: Path, calls: list) -> None:
    spec = {"fixed": {"suffix": "T1w", "acquisition": "mprage"}, "moving": {"suffix": "T2w"}}
    filters = write_json(tmp_path / "filters.json", spec)
    argv = [str(bids), str(tmp_path / "out"), "participant", "--bids-filter-file", str(filters)]
    assert cli.main([*argv, "--fixed", "acq=fast", "--moving", "suffix=US"]) == 0
    [(config, pairs, _)] = calls
    # acq replaces acquisition (the same entity); suffix=T1w stays from the file.
    assert config.fixed == {"suffix": "T1w", "acq": "fast"}
    assert config.moving == ({"suffix": "US"},)
    assert {Path(p.fixed).name for p in pairs} == {
        "sub-01_acq-fast_T1w.nii.gz",
        "sub-02_acq-fast_T1w.nii.gz",
    }


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ({"fixed": {"suffix": "T1w"}, "t1w": {"suffix": "T1w"}}, "unknown key(s) 't1w'"),
        ({"moving": {"acqq": "x"}}, "unknown entity 'acqq'"),
        ({"moving": {"suffix": None}}, "must be a label"),
        ({"moving": []}, "empty list"),
        (["fixed"], "expected a JSON object"),
    ],
)
def test_bad_filter_file_exits_64_naming_it(
    bids: Path,
    tmp_path: Path,
    calls: list,
    capsys: pytest.CaptureFixture[str],
    content: Any,
    expected: str,
) -> None:
    filters = write_json(tmp_path / "filters.json", content)
    argv = [str(bids), str(tmp_path / "out"), "participant", "--bids-filter-file", str(filters)]
    assert cli.main(argv) == 64
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mmreg: error:") and str(filters) in err and expected in err
    assert calls == []


def test_missing_filter_file_exits_64(bids: Path, tmp_path: Path, calls: list) -> None:
    argv = [str(bids), str(tmp_path / "out"), "participant"]
    assert cli.main([*argv, "--bids-filter-file", str(tmp_path / "nope.json")]) == 64


# ---------------------------------------------------------------------------------------------
# --session-label


def test_session_label_restricts_the_pairs(sessions: Path, tmp_path: Path, calls: list) -> None:
    argv = [str(sessions), str(tmp_path / "out"), "participant", "--session-label", "ses-2"]
    assert cli.main(argv) == 0
    [(config, pairs, missing)] = calls
    assert config.session_labels == ("2",)
    assert [(p.subject, p.session) for p in pairs] == [("01", "2"), ("02", "2")]
    assert missing == []  # sub-03 has no session 2: not a failure


def test_session_labels_several(sessions: Path, tmp_path: Path, calls: list) -> None:
    argv = [str(sessions), str(tmp_path / "out"), "participant", "--session-label", "1", "2"]
    assert cli.main(argv) == 0
    [(_, pairs, _)] = calls
    assert len(pairs) == 5


def test_session_label_matching_nothing_exits_18(
    sessions: Path, tmp_path: Path, calls: list, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(sessions), str(tmp_path / "out"), "participant", "--session-label", "2", "3"]
    assert cli.main(argv) == 18
    err = capsys.readouterr().err
    assert "--session-label" in err and "3" in err and "sessions present: 1, 2" in err
    assert calls == []


def test_session_label_with_a_fixed_session(sessions: Path, tmp_path: Path, calls: list) -> None:
    argv = [str(sessions), str(tmp_path / "out"), "participant", "--session-label", "2"]
    assert cli.main([*argv, "--fixed", "ses=1"]) == 0
    [(_, pairs, _)] = calls
    assert [(p.session, Path(p.fixed).name) for p in pairs] == [
        ("2", "sub-01_ses-1_T1w.nii.gz"),
        ("2", "sub-02_ses-1_T1w.nii.gz"),
    ]


def test_invalid_session_label_exits_64(
    sessions: Path, tmp_path: Path, calls: list, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(sessions), str(tmp_path / "out"), "participant", "--session-label", "../1"]
    assert cli.main(argv) == 64
    assert "invalid session label" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# --config-file


def test_saved_config_reruns_to_the_same_config(bids: Path, tmp_path: Path, calls: list) -> None:
    out = tmp_path / "out"
    argv = [
        str(bids),
        str(out),
        "participant",
        "--participant-label",
        "02",
        "--fixed",
        "acq=mprage",
        "--moving",
        "suffix=T2w",
        "--moving",
        "suffix=US",
        "--methods",
        "identity,sitk-rigid+ants-affine",
        "--random-seed",
        "11",
        "--resolution",
        "3.5",
        "--prealign",
        "moments",
        "--mask",
        "--max-pairs",
        "1",
        "--worker",
        "debug",
        "--omp-nthreads",
        "1",
        "--stop-on-first-crash",
        "--skip-bids-validation",
    ]
    assert cli.main(argv) == 0
    first = calls[-1][0]
    # What run.py writes first: the derivatives description and the run's config.
    derivatives.write_dataset_description(out, source=bids)
    saved = first.save(out / "logs" / first.run_id / "config.json")
    assert cli.main([str(bids), str(out), "participant", "--config-file", str(saved)]) == 0
    second = calls[-1][0]

    def fields(config: Config) -> dict[str, Any]:
        return {k: v for k, v in config.to_dict().items() if k != "run_id"}

    assert fields(second) == fields(first)
    assert second.run_id != first.run_id
    assert second.methods == ("identity", "sitk-rigid+ants-affine")
    assert (second.random_seed, second.resolution, second.prealign) == (11, 3.5, "moments")
    assert second.fixed == {"acq": "mprage"}
    assert calls[-1][1] == calls[0][1]  # the same pairs


def test_command_line_wins_over_the_config_file(bids: Path, tmp_path: Path, calls: list) -> None:
    out = tmp_path / "out"
    saved = Config(
        bids_dir=str(bids),
        output_dir=str(out),
        fixed={"suffix": "T1w", "acq": "mprage"},
        moving=({"suffix": "T2w"},),
        methods=("identity",),
        random_seed=3,
        resolution=4.0,
        mask=True,
    ).save(tmp_path / "config.json")
    other_out = tmp_path / "other"
    argv = [str(bids), str(other_out), "participant", "--config-file", str(saved)]
    assert cli.main([*argv, "--random-seed", "5", "--no-mask", "--moving", "suffix=US"]) == 0
    config = calls[-1][0]
    assert (config.random_seed, config.mask, config.resolution) == (5, False, 4.0)
    assert config.methods == ("identity",)
    assert config.fixed == {"suffix": "T1w", "acq": "mprage"}
    assert config.moving == ({"suffix": "US"},)
    # The saved run's default folders follow the new OUTPUT_DIR.
    assert config.output_dir == str(other_out.resolve())
    assert config.work_dir == str(other_out.resolve() / "work")


@pytest.mark.parametrize(
    "content", ["{broken", json.dumps({"bids_dir": "x", "output_dir": "y", "typo": 1})]
)
def test_bad_config_file_exits_64(
    bids: Path,
    tmp_path: Path,
    calls: list,
    capsys: pytest.CaptureFixture[str],
    content: str,
) -> None:
    path = write_json(tmp_path / "config.json", content)
    argv = [str(bids), str(tmp_path / "out"), "participant", "--config-file", str(path)]
    assert cli.main(argv) == 64
    assert f"--config-file {path}" in capsys.readouterr().err
    assert cli.main([*argv[:-1], str(tmp_path / "missing.json")]) == 64
    assert calls == []


def test_explicit_options_are_told_from_defaults() -> None:
    argv = ["b", "o", "participant", "--worker", "cf", "-vv", "--no-mask", "--fixed", "acq=x"]
    assert cli._explicit_options(argv) == {"worker", "verbose", "mask", "fixed"}


# ---------------------------------------------------------------------------------------------
# --stop-on-first-crash and BIDS validation (real runs: identity, serial worker)


@pytest.fixture
def broken_first(tmp_path: Path) -> Path:
    root = write_good_dataset(tmp_path / "ds", subjects=("02", "03"))
    anat = root / "sub-02" / "anat"
    good = {"fixed": anat / "sub-02_T1w.nii.gz", "moving": anat / "sub-02_T2w.nii.gz"}
    write_broken_subject(root, "01", "empty", good)
    return root


def _run(root: Path, out: Path, *extra: str) -> int:
    argv = [str(root), str(out), "participant", "--methods", "identity", "--worker", "debug"]
    return cli.main([*argv, *extra])


def test_stop_on_first_crash_stops_after_the_failed_subject(
    broken_first: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "stop"
    assert _run(broken_first, out, "--stop-on-first-crash", "--skip-bids-validation") == 65
    assert (out / "sub-01" / "sub-01_evaluation.csv").is_file()
    assert not (out / "sub-02").exists() and not (out / "sub-03").exists()
    assert "stopping after sub-01 failed; 2 subject(s) not run" in capsys.readouterr().err
    assert not list(out.glob("logs/*/bids_validator.json"))  # skipped

    everything = tmp_path / "all"
    assert _run(broken_first, everything) == 65
    for subject in ("01", "02", "03"):
        assert (everything / f"sub-{subject}" / f"sub-{subject}_evaluation.csv").is_file()
    [report] = everything.glob("logs/*/bids_validator.json")
    assert "issues" in json.loads(report.read_text())


def test_stop_on_first_crash_counts_a_missing_modality(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_good_dataset(tmp_path / "ds", subjects=("02", "03"))
    (root / "sub-03" / "anat" / "sub-03_T2w.nii.gz").unlink()
    out = tmp_path / "out"
    assert _run(root, out, "--stop-on-first-crash", "--skip-bids-validation") == 65
    assert (out / "sub-03" / "sub-03_evaluation.csv").is_file()  # sub-02 ran first, ok
    assert "stopping after sub-03 failed; 0 subject(s) not run" in capsys.readouterr().err


def test_stop_on_first_crash_runs_everything_when_nothing_fails(tmp_path: Path) -> None:
    root = write_good_dataset(tmp_path / "ds", subjects=("01", "02"))
    out = tmp_path / "out"
    assert _run(root, out, "--stop-on-first-crash", "--skip-bids-validation") == 0
    assert (out / "sub-02" / "sub-02_evaluation.csv").is_file()


def test_validator_reports_errors_without_failing(
    bids: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if validator.shutil.which(validator.BIDS_VALIDATOR) is None:
        pytest.skip("bids-validator-deno is not installed")
    with caplog.at_level(logging.DEBUG, logger="mmreg"):
        counts = validator.validate_bids(bids, tmp_path / "logs", cache_dir=tmp_path / "deno")
    assert counts is not None and counts["error"] >= 1  # sub-01_US.nii.gz is not BIDS
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "error(s)" in warnings[0] and "not fatal" in warnings[0]
    assert any("NOT_INCLUDED" in w and "US.nii.gz" in w for w in warnings[1:])
    assert (tmp_path / "logs" / validator.REPORT_NAME).is_file()


def test_missing_validator_warns_once(
    bids: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(validator, "BIDS_VALIDATOR", "no-such-bids-validator")
    monkeypatch.setattr(validator, "_warned_missing", False)
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        assert validator.validate_bids(bids) is None
        assert validator.validate_bids(bids) is None
    assert len([r for r in caplog.records if "not found" in r.getMessage()]) == 1


def test_validator_that_cannot_run_is_a_warning(
    bids: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = tmp_path / "fake-validator"
    fake.write_text("#!/bin/sh\necho 'boom' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(validator, "BIDS_VALIDATOR", str(fake))
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        assert validator.validate_bids(bids) is None
    assert any("could not run" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# --help


def test_help_lists_methods_parameters_and_exit_codes(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in available_methods():
        assert any(line.split()[:1] == [name] for line in text.splitlines()), name
    assert "NAME:KEY=VALUE" in text
    for code in ("70 internal error", "130"):
        assert code in text
    for option in (
        "--bids-filter-file",
        "--session-label",
        "--config-file",
        "--stop-on-first-crash",
        "--skip-bids-validation",
    ):
        assert option in text


# ---------------------------------------------------------------------------------------------
# The new Config fields


def test_new_config_fields_round_trip_and_old_files_load(tmp_path: Path) -> None:
    config = Config(
        bids_dir=str(tmp_path / "b"),
        output_dir=str(tmp_path / "o"),
        session_labels=("1", "2"),
        stop_on_first_crash=True,
        validate_bids=False,
    )
    assert Config.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["session_labels"] == ["1", "2"]
    old = config.to_dict()
    for key in ("session_labels", "stop_on_first_crash", "validate_bids"):
        del old[key]
    loaded = Config.from_dict(old)  # a config.json written before these options existed
    assert (loaded.session_labels, loaded.stop_on_first_crash, loaded.validate_bids) == (
        (),
        False,
        True,
    )
