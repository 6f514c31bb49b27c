"""Ctrl-C and SIGTERM stop a run with exit 130 and one line; a resume completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmreg.imaging.image import Image

import processes
from factories import second_contrast, smooth_head, write_dataset_description, write_pair


@pytest.fixture
def slow_dataset(tmp_path: Path) -> Path:
    """Two pairs big enough that ants-syn runs for many seconds."""
    root = tmp_path / "bids"
    write_dataset_description(root)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = -60
    for i, subject in enumerate(("01", "02")):
        head = smooth_head((80, 84, 76), seed=i)
        moving = Image(second_contrast(np.roll(head, 3, axis=0)), affine)
        write_pair(root, subject, fixed=Image(head, affine), moving=moving)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(("worker", "signum"), [("cf", signal.SIGINT), ("debug", signal.SIGTERM)])
def test_interrupt_is_not_a_failure_and_resume_completes(slow_dataset, tmp_path, worker, signum):
    mmreg = Path(sys.executable).with_name("mmreg")
    if not mmreg.exists():
        pytest.skip("the mmreg console script is not installed next to this Python")
    out = tmp_path / "out"
    argv = [str(mmreg), str(slow_dataset), str(out), "participant", "--worker", worker]
    argv += ["--methods", "sitk-rigid,ants-syn", "--resolution", "1.5"]
    env = {**os.environ, "NO_ET": "1"}
    # A session of its own, so SIGINT reaches every process as a terminal's Ctrl-C does.
    with processes.started(argv, env=env, stderr=subprocess.PIPE, text=True) as run:
        deadline = time.time() + 120
        while not list((out / "work").glob("python-*/_job.pklz")) and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(4)  # inside a registration
        if signum == signal.SIGINT:
            os.killpg(run.pid, signum)
        else:
            run.send_signal(signum)
        err = run.communicate(timeout=120)[1]
    assert run.returncode == 130, err
    lines = err.strip().splitlines()
    assert "interrupted by" in lines[-1] and "Traceback" not in err, err
    assert not list(out.glob("sub-*/*_evaluation.csv"))  # nothing recorded as failed

    resumed = processes.run(argv, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "4 of 4 registration(s) ok" in resumed.stderr
