"""Reliability probes of the query, the group level and model loading.

Each test is a case a user hit: a broken subject folder, a corrupt BIDS index, a
non-ASCII label, damaged participant CSVs, a model file that must not be unpickled.
None may end a run as an internal error (exit 70) or fail subjects that are fine.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from mmreg import models
from mmreg.bids_app import cli
from mmreg.bids_app.config import Config
from mmreg.bids_app.query import (
    MissingPair,
    Pair,
    find_pairs,
    load_layout,
    normalize_participant_labels,
)
from mmreg.errors import InputError, UsageError
from mmreg.reports.group import aggregate, run_group_level, summarise

SUBJECTS = ("01", "02", "03")


def make_dataset(root: Path, subjects: tuple[str, ...] = SUBJECTS) -> Path:
    """A BIDS dataset with one T1w and one T2w 8^3 image per subject."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    data = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    for sub in subjects:
        anat = root / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        for suffix in ("T1w", "T2w"):
            nib.save(nib.Nifti1Image(data, np.eye(4)), anat / f"sub-{sub}_{suffix}.nii.gz")
    return root


def query(root: Path, tmp_path: Path, **kw: Any) -> tuple[list[Pair], list[MissingPair]]:
    config = Config(
        bids_dir=str(root), output_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"), **kw
    )
    return find_pairs(config)


def assert_only_02_fails(pairs: list[Pair], missing: list[MissingPair], *words: str) -> None:
    assert [p.subject for p in pairs] == ["01", "03"]
    assert [m.subject for m in missing] == ["02"]
    reason = missing[0].reason
    assert "\n" not in reason and "internal error" not in reason
    for word in words:
        assert word in reason


# ---------------------------------------------------------------------------------------------
# 1. Broken subject folders: that subject fails, the others are found


def test_file_symlink_loop_fails_only_that_subject(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    image = root / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    image.unlink()
    image.symlink_to(image.name)  # points at itself
    pairs, missing = query(root, tmp_path)
    assert_only_02_fails(pairs, missing, "sub-02/anat/sub-02_T1w.nii.gz", "symbolic links")


def test_directory_symlink_loop_fails_only_that_subject(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "sub-02" / "anat" / "loop").symlink_to("..", target_is_directory=True)
    pairs, missing = query(root, tmp_path)
    assert_only_02_fails(pairs, missing, "symlink loop", "sub-02/anat/loop")


def _deny(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Behave as ``chmod 000 folder`` does for a non-root user (tests run as root)."""
    denied = str(folder)

    def inside(path: Any, *, strictly: bool) -> bool:
        if isinstance(path, int):
            return False
        text = os.path.abspath(os.fspath(path))
        return text.startswith(denied + os.sep) or (not strictly and text == denied)

    def refuse(path: Any) -> PermissionError:
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    def wrap(real: Any, *, strictly: bool) -> Any:
        def fake(path: Any = ".", *args: Any, **kwargs: Any) -> Any:
            if inside(path, strictly=strictly):
                raise refuse(path)
            return real(path, *args, **kwargs)

        return fake

    # Listing the folder is refused; so is any stat of what lies inside it.
    monkeypatch.setattr(os, "scandir", wrap(os.scandir, strictly=False))
    monkeypatch.setattr(os, "listdir", wrap(os.listdir, strictly=False))
    monkeypatch.setattr(os, "stat", wrap(os.stat, strictly=True))
    monkeypatch.setattr(os, "lstat", wrap(os.lstat, strictly=True))


def test_unreadable_subject_folder_fails_only_that_subject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_dataset(tmp_path / "ds").resolve()
    _deny(monkeypatch, root / "sub-02")
    pairs, missing = query(root, tmp_path)
    assert_only_02_fails(pairs, missing, "cannot read folder sub-02", "Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_unreadable_subject_folder_with_real_permissions(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "sub-02").chmod(0)
    try:
        pairs, missing = query(root, tmp_path)
    finally:
        (root / "sub-02").chmod(0o755)
    assert_only_02_fails(pairs, missing, "Permission denied")


class _Listing:
    """What ``os.scandir`` returns, for a listing taken before the folder vanished."""

    def __init__(self, entries: list[os.DirEntry[str]]) -> None:
        self._entries = entries

    def __iter__(self) -> Iterator[os.DirEntry[str]]:
        return iter(self._entries)

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass


def test_folder_vanishing_while_indexed_fails_only_that_subject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_dataset(tmp_path / "ds").resolve()
    anat = str(root / "sub-02" / "anat")
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if not isinstance(path, int) and os.path.abspath(os.fspath(path)) == anat:
            with real_scandir(path) as it:
                entries = list(it)
            shutil.rmtree(anat)  # another process removes it right after it was listed
            return _Listing(entries)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    pairs, missing = query(root, tmp_path)
    assert_only_02_fails(pairs, missing, "missing modality")


def test_file_vanishing_between_indexing_and_use_fails_only_that_pair(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    layout = load_layout(root, tmp_path / "work" / "bids_db")
    (root / "sub-02" / "anat" / "sub-02_T2w.nii.gz").unlink()  # after indexing
    config = Config(bids_dir=str(root), output_dir=str(tmp_path / "out"))
    pairs, missing = find_pairs(config, layout)
    assert_only_02_fails(pairs, missing, "sub-02_T2w.nii.gz no longer exists")


# ---------------------------------------------------------------------------------------------
# 2. A corrupt BIDS index is rebuilt


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_index_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    root = make_dataset(tmp_path / "ds")
    assert len(query(root, tmp_path)[0]) == 3
    (db,) = (tmp_path / "work" / "bids_db").glob("*/layout_index.sqlite")
    content = db.read_bytes()
    db.write_bytes(
        {
            "garbage": os.urandom(len(content)),
            "truncated": content[: len(content) // 3],
            "empty": b"",
        }[damage]
    )
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        pairs, missing = query(root, tmp_path)
    assert [p.subject for p in pairs] == list(SUBJECTS) and not missing
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "rebuilding" in warnings[0] and "\n" not in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        assert len(query(root, tmp_path)[0]) == 3  # the rebuilt index is reused quietly
    assert not caplog.records


# ---------------------------------------------------------------------------------------------
# 3. Non-ASCII subject labels


def test_unicode_subject_folder_is_skipped_with_a_clear_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_dataset(tmp_path / "ds", ("01", "02", "Ünï"))
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        pairs, missing = query(root, tmp_path)
    assert [p.subject for p in pairs] == ["01", "02"]
    # No failed row: its label could not name an output folder anyway.
    assert missing == []
    (warning,) = [r.getMessage() for r in caplog.records if "sub-Ünï" in r.getMessage()]
    assert "not a BIDS subject label" in warning and "ASCII" in warning


def test_unicode_participant_label_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="ASCII letters and digits") as info:
        normalize_participant_labels(["Ünï"])
    assert "\n" not in str(info.value)
    root = make_dataset(tmp_path / "ds", ("01", "Ünï"))
    with pytest.raises(UsageError, match="ASCII"):
        query(root, tmp_path, participant_labels=("Ünï",))


# ---------------------------------------------------------------------------------------------
# 4. Group level

HEADER = "subject,session,fixed,moving,method,status,error,runtime_s,dice_mean\n"


def write_results(out: Path, subject: str, text: str) -> Path:
    path = out / f"sub-{subject}" / f"sub-{subject}_evaluation.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def good_rows(subject: str) -> str:
    return f"{subject},,T1w,T2w,ants-affine,ok,,1.0,0.7\n{subject},,T1w,T2w,ants-syn,ok,,2.0,0.9\n"


def group_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "mmreg.group" and r.levelno >= logging.WARNING
    ]


def test_no_participant_results_exits_with_a_contract_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_dataset(tmp_path / "ds", ("01",))
    with pytest.raises(InputError):
        aggregate(tmp_path / "empty")
    code = cli.main([str(root), str(tmp_path / "results"), "group"])
    assert code == 66  # the group level's input (participant results) is missing
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no participant results" in err[0]


def test_truncated_csv_rows_are_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    write_results(out, "01", HEADER + good_rows("01"))
    # sub-02: a row with fewer fields mid-file, and the file cut inside a number
    # ("1.5e-05" -> "1.5e-") without its final newline.
    write_results(
        out,
        "02",
        HEADER + "02,,T1w,T2w,ants-affine,ok,,1.0\n02,,T1w,T2w,ants-syn,ok,,1.5e-",
    )
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        df = aggregate(out)
    assert list(df["subject"]) == ["01", "01"]
    assert pd.api.types.is_float_dtype(df["runtime_s"])
    assert pd.api.types.is_float_dtype(df["dice_mean"])
    (warning,) = group_warnings(caplog)
    assert "sub-02/sub-02_evaluation.csv" in warning and "2 truncated row(s)" in warning
    summary = summarise(df).set_index("method")
    assert summary.loc["ants-syn", "runtime_s_mean"] == pytest.approx(2.0)


def test_a_stray_word_does_not_turn_a_metric_into_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    write_results(out, "01", HEADER + good_rows("01"))
    write_results(out, "02", HEADER + "02,,T1w,T2w,ants-syn,ok,,2.0,0.8x\n")
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        summary = summarise(aggregate(out)).set_index("method")
    assert summary.loc["ants-syn", "dice_mean_mean"] == pytest.approx(0.9)
    (warning,) = group_warnings(caplog)
    assert "dice_mean" in warning and "sub-02" in warning


def test_foreign_csv_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    write_results(out, "01", HEADER + good_rows("01"))
    write_results(out, "77", "a,b,c\n1,2,3\n")
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        df = aggregate(out)
    assert list(df["subject"]) == ["01", "01"]
    (warning,) = group_warnings(caplog)
    assert "sub-77/sub-77_evaluation.csv" in warning and "not an mmreg evaluation" in warning


def test_subjects_without_results_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bids = make_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    for subject in ("01", "02"):
        write_results(out, subject, HEADER + good_rows(subject))
    with caplog.at_level(logging.WARNING, logger="mmreg"):
        paths = run_group_level(out, bids_dir=bids, matching=False, max_subjects=0)
    assert paths["evaluation"].is_file()
    (warning,) = group_warnings(caplog)
    assert "1 subject(s)" in warning and "sub-03" in warning and "sub-01" not in warning


# ---------------------------------------------------------------------------------------------
# 5. Model files: one line, and never the advice to unpickle untrusted code


def _torch_bytes(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (os.urandom(4096), "not a PyTorch checkpoint"),
        (pickle.dumps({"config": {}, "state_dict": {}, "metadata": {}}), "not a PyTorch"),
        (
            _torch_bytes(
                {
                    "config": {},
                    "state_dict": {"w": torch.ones(1)},
                    "metadata": {"x": argparse.Namespace(a=1)},
                }
            ),
            "argparse.Namespace",
        ),
        (_torch_bytes(torch.nn.Linear(2, 2)), "other than tensors"),
        (_torch_bytes([1, 2, 3]), "not an mmreg checkpoint"),
        (_torch_bytes({"config": [], "state_dict": {}, "metadata": "m"}), "not an mmreg"),
        (_torch_bytes({"config": {}, "state_dict": {"w": 3}, "metadata": {}}), "not tensors"),
        (_torch_bytes({"config": {}, "state_dict": {}, "metadata": {}})[:300], "truncated"),
    ],
    ids=["garbage", "pickle", "namespace", "module", "list", "bad-types", "int-weight", "cut"],
)
def test_bad_model_files_give_one_safe_line(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        models.load_checkpoint(path, method="demo")
    message = str(info.value)
    assert str(path) in message and expected in message
    assert "\n" not in message
    assert "weights_only" not in message
