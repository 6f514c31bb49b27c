"""Atomic writes leave either the old file or the new one, never a partial one."""

from __future__ import annotations

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
