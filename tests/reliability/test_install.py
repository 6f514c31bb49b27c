"""Installs that keep working: task functions pickle by reference, pins, a real cf run."""

from __future__ import annotations

import importlib
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest
from pydra.utils.hash import hash_function

import processes

REPO = Path(__file__).resolve().parents[2]
TASK_MODULES = (
    "mmreg.tasks.image",
    "mmreg.tasks.preprocess",
    "mmreg.tasks.register",
    "mmreg.tasks.evaluate",
    "mmreg.tasks.slice",
    "mmreg.tasks.sink",
    "mmreg.workflows.participant",
)


def _task_functions():
    from mmreg.tasks.define import FUNCTION_SUFFIX

    for name in TASK_MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if attr.endswith(FUNCTION_SUFFIX) and callable(value):
                yield f"{name}.{attr}", value


def test_every_task_function_pickles_by_reference():
    functions = dict(_task_functions())
    assert len(functions) >= 12
    for name, function in functions.items():
        data = cloudpickle.dumps(function)
        assert b"<dynamic-code>" not in data, name
        assert pickle.loads(data) is function, name


def test_task_hash_is_the_same_in_a_fresh_process():
    """What the cf worker does: unpickle the function elsewhere and hash it again."""
    here = {name: hash_function(f) for name, f in _task_functions()}
    blob = cloudpickle.dumps({name: f for name, f in _task_functions()})
    code = (
        "import pickle, sys\n"
        "from pydra.utils.hash import hash_function\n"
        "functions = pickle.loads(sys.stdin.buffer.read())\n"
        "for name, f in sorted(functions.items()):\n"
        "    print(name, hash_function(f))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=blob, capture_output=True, check=True
    ).stdout.decode()
    there = dict(line.split() for line in out.splitlines())
    assert there == here


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_constraints_pin_the_engine_and_are_used_everywhere():
    pins = _pins()
    for name in ("pydra", "cloudpickle", "fileformats", "antspyx", "simpleitk", "torch"):
        assert name in pins, name
    readme = (REPO / "README.md").read_text()
    commands = [line for line in readme.splitlines() if "pip install" in line][:2]
    assert all("-c constraints.txt" in line for line in commands), commands
    assert "-c constraints.txt" in (REPO / ".ci" / "run").read_text()
    assert "-c /tmp/constraints.txt" in (REPO / "containers" / "Dockerfile").read_text()
    assert '-c "$repo/constraints.txt"' in (REPO / "containers" / "build.sh").read_text()
    assert "!constraints.txt" in (REPO / ".dockerignore").read_text()


def test_installed_engine_matches_the_pins():
    """The suite runs against the pinned engine, so CI tests what users install."""
    from importlib.metadata import version

    pins = _pins()
    for name in ("pydra", "cloudpickle", "fileformats"):
        assert version(name) == pins[name], name


def test_real_cf_worker_participant_run(good_dataset, tmp_path):
    """The installed console script, the cf worker in worker processes, as a user runs it."""
    out = tmp_path / "out"
    mmreg = Path(sys.executable).with_name("mmreg")
    if not mmreg.exists():
        pytest.skip("the mmreg console script is not installed next to this Python")
    env = {**os.environ, "NO_ET": "1"}
    argv = [str(mmreg), str(good_dataset), str(out), "participant"]
    argv += ["--methods", "identity,sitk-rigid", "--worker", "cf", "--nprocs", "2"]
    done = processes.run(argv, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "hashes have changed" not in done.stderr
    for subject in ("01", "02"):
        assert (out / f"sub-{subject}" / "anat").is_dir()
        assert (out / f"sub-{subject}" / f"sub-{subject}_evaluation.csv").is_file()
