"""The slurm worker: ``--worker-args`` parsing (fast) and a real run on a SLURM cluster.

The ``slurm``-marked test needs a running cluster whose nodes share this machine's paths
(``scripts/slurm/start-local-slurm.sh`` starts one on localhost) and is left out of the
default suite: ``pytest -m slurm tests/bids_app/test_slurm.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmreg.bids_app import cli
from mmreg.bids_app.config import Config, slurm_worker_kwargs
from mmreg.errors import UsageError
from mmreg.imaging.image import Image

from factories import second_contrast, smooth_head, write_dataset_description, write_pair


def test_worker_args_become_sbatch_args() -> None:
    items = [
        "partition=gpu",
        "time=02:00:00",
        "mem=8G",
        "gres=gpu:1",
        "account=abc",
        "cpus=4",
        "poll=5",
        "sbatch=--nice=10 --exclusive",
        "sbatch=--requeue",
    ]
    args = cli.parse_worker_args(items, "slurm")
    assert args["sbatch"] == "--nice=10 --exclusive --requeue"
    assert slurm_worker_kwargs(args) == {
        "sbatch_args": "--partition=gpu --time=02:00:00 --mem=8G --gres=gpu:1 --account=abc "
        "--cpus-per-task=4 --nice=10 --exclusive --requeue",
        "poll_delay": 5,
    }
    assert cli.parse_worker_args([], "cf") == {}
    assert slurm_worker_kwargs({}) == {"sbatch_args": ""}
    # The last value of a key wins; keys are case-insensitive.
    assert cli.parse_worker_args(["Mem=1G", "mem=2G"], "slurm") == {"mem": "2G"}


@pytest.mark.parametrize(
    ("items", "worker", "message"),
    [
        (["partition=gpu"], "cf", "only --worker slurm"),
        (["partition"], "slurm", "expected KEY=VALUE"),
        (["queue=gpu"], "slurm", "unknown key 'queue'"),
        (["mem="], "slurm", "empty value"),
        (["poll=1.5"], "slurm", "whole seconds"),
        (["poll=-1"], "slurm", "whole seconds"),
        (["partition=a b"], "slurm", "spaces"),
        (["sbatch=--error=x.err"], "slurm", "--error"),
        (["sbatch=-e x.err"], "slurm", "--error"),
    ],
)
def test_bad_worker_args(items: list[str], worker: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        cli.parse_worker_args(items, worker)


def test_worker_args_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI stores them in the Config (JSON round trip) and rejects bad ones with 64."""
    root = tmp_path / "bids"
    write_dataset_description(root)
    seen: list[Config] = []
    monkeypatch.setattr(cli, "_check_worker", lambda worker: None)  # no sbatch needed here
    from mmreg.bids_app import run

    monkeypatch.setattr(run, "run_group", lambda config: seen.append(config) or 0)
    base = [str(root), str(tmp_path / "out"), "group", "--worker", "slurm"]
    assert cli.main([*base, "--worker-args", "partition=short", "poll=2"]) == 0
    [config] = seen
    assert config.worker_args == {"partition": "short", "poll": "2"}
    assert Config.from_json(config.to_json()) == config
    assert cli.main([*base, "--worker-args", "bogus=1"]) == 64
    assert cli.main([*base[:-2], "--worker-args", "poll=2"]) == 64  # cf takes none


# ---------------------------------------------------------------------------------------------
# A real cluster


def _sacct_jobs(since: str) -> list[list[str]]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-S", since, "-o", "JobID,JobName,State,ExitCode"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def _rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).drop(columns=["runtime_s", "evaluation_s"], errors="ignore")


@pytest.mark.slurm
def test_participant_run_on_slurm(tmp_path: Path) -> None:
    lacking = [tool for tool in ("sbatch", "sacct", "squeue") if shutil.which(tool) is None]
    if lacking:
        pytest.skip(f"no SLURM client tools: {', '.join(lacking)}")
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        pytest.skip("no SLURM controller answers (scripts/slurm/start-local-slurm.sh)")

    root = tmp_path / "bids"
    write_dataset_description(root)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    for i, subject in enumerate(("01", "02")):
        head = smooth_head((24, 26, 22), seed=20 + i)
        write_pair(
            root,
            subject,
            fixed=Image(head, affine),
            moving=Image(np.roll(second_contrast(head), 1 + i, axis=0), affine),
        )
    common = [str(root), "", "participant", "--methods", "identity,sitk-rigid", "--work-dir", ""]

    def argv(name: str, *extra: str) -> list[str]:
        args = list(common)
        args[1], args[6] = str(tmp_path / f"out-{name}"), str(tmp_path / f"work-{name}")
        return [*args, *extra]

    since = subprocess.run(
        ["date", "+%Y-%m-%dT%H:%M:%S"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert cli.main(argv("slurm", "--worker", "slurm", "--worker-args", "poll=1")) == 0
    jobs = _sacct_jobs(since)
    # One sbatch job per subject (its whole pipeline); pydra names them <node>.<task uid>.
    ours = [j for j in jobs if j[1].split(".")[0] == "subject_job"]
    assert len(ours) == 2, f"expected one job per subject in sacct: {jobs}"
    assert all(j[2] == "COMPLETED" and j[3] == "0:0" for j in ours), ours
    assert list((tmp_path / "work-slurm").glob("slurm_scripts/*/slurm-*.out"))

    assert cli.main(argv("cf", "--worker", "cf", "--nprocs", "2")) == 0
    for subject in ("01", "02"):
        table = f"sub-{subject}/sub-{subject}_evaluation.csv"
        slurm, cf = _rows(tmp_path / "out-slurm" / table), _rows(tmp_path / "out-cf" / table)
        assert len(slurm) == 2 and set(slurm["status"]) == {"ok"}
        pd.testing.assert_frame_equal(slurm, cf)
    # Images and transforms are byte-identical across workers.
    images = sorted(
        p.relative_to(tmp_path / "out-cf") for p in (tmp_path / "out-cf").rglob("*_xfm.*")
    )
    images += sorted(
        p.relative_to(tmp_path / "out-cf") for p in (tmp_path / "out-cf").rglob("*.nii.gz")
    )
    assert images
    for rel in images:
        assert (tmp_path / "out-slurm" / rel).read_bytes() == (
            tmp_path / "out-cf" / rel
        ).read_bytes()


def test_engine_failure_reason_finds_the_first_real_error(tmp_path: Path) -> None:
    """A failed job's reason comes from its files, not from Pydra's wrapping RuntimeErrors."""
    import time

    from mmreg.bids_app.run import engine_failure_reason
    from mmreg.tasks.define import CRASH_REPORT

    wrapped = RuntimeError(
        "Workflow job main failed with errors:\n\nJob 'subject(0)' errored:\n"
        "Exception: Job failed (unknown reason - TODO)\n"
    )
    start = time.time()
    # Nothing on disk: the exception's own last real line (here only wrappers, so its text).
    reason, source = engine_failure_reason(
        RuntimeError("Error returned from sbatch: sbatch: error: Invalid partition name"),
        tmp_path,
        since=start,
    )
    assert source is None and reason.startswith("RuntimeError: Error returned from sbatch")

    # A job's .err with chained tracebacks: the first (root) cause.
    err = tmp_path / "slurm_scripts" / "abc" / "slurm-7.err"
    err.parent.mkdir(parents=True)
    err.write_text(
        "Traceback (most recent call last):\n  File 'x', line 1\n"
        "RuntimeError: mmreg is broken on this node\n\n"
        "During handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\n"
        "AttributeError: 'str' object has no attribute 'parent'\n"
    )
    assert engine_failure_reason(wrapped, tmp_path, since=start) == (
        "RuntimeError: mmreg is broken on this node",
        err,
    )

    # The crash report of a task that raised (its traceback) comes first.
    report = tmp_path / "python-123" / CRASH_REPORT
    report.parent.mkdir()
    report.write_text("Traceback (most recent call last):\n  File 'y'\nMemoryError: big\n")
    assert engine_failure_reason(wrapped, tmp_path, since=start) == ("MemoryError: big", report)
    # ... but not when left over from an earlier run.
    assert engine_failure_reason(wrapped, tmp_path, since=start + 3600)[1] is None
