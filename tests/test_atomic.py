"""Atomic writes leave either the old file or the new one, never a partial one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmreg.atomic import atomic_copy, atomic_path, atomic_write_text


def test_failed_write_leaves_previous_content(tmp_path):
    target = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_temporary_keeps_double_suffix(tmp_path):
    with atomic_path(tmp_path / "x.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"1")


def test_copy(tmp_path):
    src = atomic_write_text(tmp_path / "s.txt", "data")
    assert atomic_copy(src, tmp_path / "sub" / "d.txt").read_text() == "data"


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    import tempfile

    from mmreg.atomic import remove_stale_temporaries

    sub = tmp_path / "sub-01" / "anat"
    sub.mkdir(parents=True)
    # What atomic_path leaves behind when the process dies before the rename.
    fd, stale = tempfile.mkstemp(prefix=".x_T2w.nii.gz.", suffix=".tmp.nii.gz", dir=sub)
    os.close(fd)
    keep = [sub / "x_T2w.nii.gz", sub / ".hidden", sub / ".notes.tmp"]
    for path in keep:
        path.write_text("data")
    work = tmp_path / "work"
    work.mkdir()
    fd, in_work = tempfile.mkstemp(prefix=".y.", suffix=".tmp", dir=work)
    os.close(fd)
    assert remove_stale_temporaries(tmp_path, skip=[work]) == 1
    assert not Path(stale).exists()
    assert all(p.exists() for p in keep) and Path(in_work).exists()
    assert remove_stale_temporaries(tmp_path / "missing") == 0


def test_outputs_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
