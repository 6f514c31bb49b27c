"""A cache that is never stale and never corrupt: the rerun equals a fresh run."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mmreg.bids_app.cli import main
from mmreg.cache import SEAL
from mmreg.imaging.image import Image, load_image, save_image

import processes

METHODS = ("--methods", "identity,sitk-rigid", "--worker", "debug")


def _run(bids: Path, out: Path, work: Path) -> int:
    return main([str(bids), str(out), "participant", *METHODS, "--work-dir", str(work)])


def _derivatives(out: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(out.glob("sub-*/**/*")):
        if path.is_file() and not path.name.endswith(".csv"):
            files[str(path.relative_to(out))] = path.read_bytes()
    return files


def _rows(out: Path) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in sorted(out.glob("sub-*/sub-*_evaluation.csv"))]
    rows = pd.concat(frames).reset_index(drop=True)
    return rows.drop(columns=[c for c in rows.columns if c.endswith("_s")])  # timings


def test_rerun_after_changed_input_and_damaged_cache_equals_fresh_run(good_dataset, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    assert _run(good_dataset, out, work) == 0
    before = _derivatives(out)

    # 1. New content under the same name and the same mtime.
    moving = good_dataset / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    stat = moving.stat()
    image = load_image(moving)
    save_image(Image(np.roll(image.data, 2, axis=1), image.affine), moving)
    os.utime(moving, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # 2. A cached warped image truncated, and another cached result deleted.
    sealed = sorted(work.glob(f"python-*/{SEAL}"))
    warped = sorted(p for s in sealed for p in s.parent.glob("warped.nii.gz"))
    transforms = sorted(p for s in sealed for p in s.parent.glob("xfm.txt"))
    assert warped and transforms
    for path in warped:
        path.write_bytes(path.read_bytes()[:100])
    transforms[-1].unlink()

    assert _run(good_dataset, out, work) == 0
    fresh = tmp_path / "fresh"
    assert _run(good_dataset, fresh, tmp_path / "fresh-work") == 0
    rerun = _derivatives(out)
    assert rerun == _derivatives(fresh)
    changed = [name for name in rerun if "sub-01" in name and rerun[name] != before[name]]
    assert changed, "the changed input was served from the cache"
    pd.testing.assert_frame_equal(_rows(out), _rows(fresh))
    for path in out.glob("sub-*/anat/*.nii.gz"):
        assert load_image(path).data.size  # every written image loads


def test_repaired_input_no_longer_reports_its_old_failure(good_dataset, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    moving = good_dataset / "sub-02" / "anat" / "sub-02_T2w.nii.gz"
    good = moving.read_bytes()
    moving.write_bytes(good[: len(good) // 3])
    assert _run(good_dataset, out, work) == 65
    moving.write_bytes(good)
    assert _run(good_dataset, out, work) == 0
    assert set(_rows(out)["status"]) == {"ok"}


def test_engine_state_stays_in_the_work_dir(good_dataset, tmp_path, monkeypatch):
    """A HOME that does not exist is neither needed nor created."""
    home = tmp_path / "no-home"
    monkeypatch.setenv("HOME", str(home))
    for var in ("PYDRA_HASH_CACHE", "MPLCONFIGDIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    assert _run(good_dataset, tmp_path / "out", work) == 0
    assert not home.exists()
    assert any((work / ".state" / "pydra-hashes").iterdir())


def test_two_runs_in_one_process_keep_their_state_in_their_own_work_dirs(
    good_dataset, tmp_path, monkeypatch
):
    for var in ("PYDRA_HASH_CACHE", "MPLCONFIGDIR"):
        monkeypatch.delenv(var, raising=False)
    first, second = tmp_path / "work-1", tmp_path / "work-2"
    assert _run(good_dataset, tmp_path / "out-1", first) == 0
    marks = {p.name for p in (first / ".state" / "pydra-hashes").iterdir()}
    assert _run(good_dataset, tmp_path / "out-2", second) == 0
    assert {p.name for p in (first / ".state" / "pydra-hashes").iterdir()} == marks
    assert any((second / ".state" / "pydra-hashes").iterdir())
    assert os.environ["PYDRA_HASH_CACHE"] == str(second / ".state" / "pydra-hashes")


def test_a_location_the_user_set_is_kept(good_dataset, tmp_path, monkeypatch):
    mine = tmp_path / "my-hashes"
    monkeypatch.setenv("PYDRA_HASH_CACHE", str(mine))
    assert _run(good_dataset, tmp_path / "out", tmp_path / "work") == 0
    assert any(mine.iterdir())
    assert not (tmp_path / "work" / ".state" / "pydra-hashes").exists()


def test_locks_left_by_a_killed_run_do_not_stall_the_next_one(good_dataset, tmp_path):
    """SIGKILL between creating a soft lock and writing its owner leaves an empty file
    that would make every later run wait for ever; here every lock the engine takes is
    left so, and the rerun must still finish."""
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [sys.executable, "-m", "mmreg.bids_app", str(good_dataset), str(out)]
    argv += ["participant", *METHODS, "--work-dir", str(work)]
    env = {**os.environ, "NO_ET": "1"}
    env.pop("PYDRA_HASH_CACHE", None)
    first = processes.run(argv, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    hashes = work / ".state" / "pydra-hashes"
    keys = [p for p in hashes.iterdir() if p.suffix != ".lock"]
    tasks = [p for p in work.iterdir() if p.is_dir() and p.name.startswith(("python-", "wor"))]
    assert keys and tasks
    old = time.time() - 3600
    for path in [*keys, *tasks]:
        lock = path.with_suffix(".lock")
        lock.write_bytes(b"")
        os.utime(lock, (old, old))

    again = processes.run(argv, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stale lock" in (out / "logs").joinpath(*_latest_log(out)).read_text()


def _latest_log(out: Path) -> tuple[str, str]:
    run = sorted(p for p in (out / "logs").iterdir() if p.is_dir())[-1]
    return run.name, "mmreg.log"
