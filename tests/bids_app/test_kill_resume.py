"""A participant run killed with SIGKILL half-way resumes from its work dir.

The restarted run must end with the same images (byte for byte) and tables as a run
that was never interrupted, leave no temporary file behind, and never show a partial
output file under its final name.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from subprocess import DEVNULL

import numpy as np
import pandas as pd
import pytest

from mmreg.imaging.image import Image

import processes
from factories import second_contrast, smooth_head, write_dataset_description, write_pair

TIMING = ["runtime_s", "evaluation_s"]


def _dataset(root: Path, n: int) -> None:
    write_dataset_description(root)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    for i in range(n):
        head = smooth_head((26, 28, 24), seed=40 + i)
        moving = np.roll(second_contrast(head), 1 + i % 3, axis=0)
        write_pair(root, f"{i + 1:02d}", fixed=Image(head, affine), moving=Image(moving, affine))


def _argv(root: Path, out: Path, work: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mmreg.bids_app",
        str(root),
        str(out),
        "participant",
        "--methods",
        "identity,sitk-rigid,sitk-affine",
        "--work-dir",
        str(work),
        "--nprocs",
        "2",
    ]


def _finished_registrations(work: Path) -> int:
    return sum(
        1 for p in work.glob("python-*/result.json") if (p.parent / "_result.pklz").exists()
    )


def _outputs(out: Path) -> dict[str, bytes]:
    files = [p for p in out.rglob("*") if p.is_file() and "logs" not in p.parts]
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


@pytest.mark.slow
def test_sigkill_half_way_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    n_subjects = 4
    root = tmp_path / "bids"
    _dataset(root, n_subjects)
    env = {**os.environ, "NO_ET": "1"}

    reference = tmp_path / "reference"
    done = processes.run(_argv(root, reference, tmp_path / "work-ref"), env=env)
    assert done.returncode == 0, done.stderr[-2000:]

    out, work = tmp_path / "out", tmp_path / "work"
    total = n_subjects * 3
    deadline = time.monotonic() + 300
    partial_names: list[str] = []
    # The group is SIGKILLed when the block ends, cf worker processes included.
    argv = _argv(root, out, work)
    with processes.started(argv, env=env, stdout=DEVNULL, stderr=DEVNULL) as process:
        while _finished_registrations(work) < total // 2:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            # Final names only ever hold complete files: a NIfTI must load.
            for path in out.rglob("*.nii.gz"):
                if not path.name.startswith(".") and path.stat().st_size < 100:
                    partial_names.append(path.name)
            time.sleep(0.05)
    assert not partial_names
    assert _finished_registrations(work) < total, "killed too late to test resuming"

    resumed = processes.run(_argv(root, out, work), env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    got, want = _outputs(out), _outputs(reference)
    assert not [name for name in got if ".tmp" in name]
    images = [n for n in want if n.endswith((".nii.gz", ".txt", ".h5", ".json"))]
    assert images and set(got) >= set(want)
    for name in images:
        if name.endswith("dataset_description.json"):
            continue  # records its own output path
        assert got[name] == want[name], name
    for name in (n for n in want if n.endswith("_evaluation.csv")):
        a = pd.read_csv(out / name).drop(columns=TIMING)
        b = pd.read_csv(reference / name).drop(columns=TIMING)
        pd.testing.assert_frame_equal(a, b)
