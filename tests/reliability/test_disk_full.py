"""A full disk: one line per pair, exit 65, no traceback flood (a real 600 kB tmpfs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import processes
from reliability_data import write_good_dataset


@pytest.fixture
def tiny_disk(tmp_path: Path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_output_disk_fails_each_pair_in_one_line(tmp_path, tiny_disk):
    mmreg = Path(sys.executable).with_name("mmreg")
    if not mmreg.exists():
        pytest.skip("the mmreg console script is not installed next to this Python")
    bids = write_good_dataset(tmp_path / "bids", tuple(f"{i:02d}" for i in range(6)))
    argv = [str(mmreg), str(bids), str(tiny_disk / "out"), "participant", "--worker", "debug"]
    argv += ["--methods", "identity,sitk-rigid", "--work-dir", str(tmp_path / "work")]
    done = processes.run(argv, timeout=600)
    assert done.returncode == 65, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert len(lines) < 40, len(lines)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert any("No space left on device" in line for line in lines)
