"""The participant workflow: split over subjects, pairs and methods; failures become rows."""

from __future__ import annotations

import numpy as np

from mmreg.imaging.image import Image, save_image
from mmreg.workflows.participant import init_participant_wf

from factories import second_contrast, smooth_head


def _subjects(tmp_path):
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    head = smooth_head((24, 26, 22), seed=5)
    fixed = save_image(Image(head, affine), tmp_path / "f.nii.gz")
    moving = save_image(Image(second_contrast(head), affine), tmp_path / "m.nii.gz")

    def pair(subject):
        return {
            "subject": subject,
            "session": None,
            "fixed": str(fixed),
            "moving": str(moving),
            "fixed_label": "T1w",
            "moving_label": "T2w",
        }

    return [[pair("a")], [pair("b")]]


def _task_dirs(cache):
    return {p.name for p in cache.glob("python-*") if (p / "_result.pklz").exists()}


def test_subject_jobs_run_the_same_nodes_as_a_task_run(tmp_path, monkeypatch):
    """One SubjectJob per subject (one sbatch job on SLURM) reuses the per-task cache."""
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")  # inner debug worker, as in a 1-CPU job
    subjects = _subjects(tmp_path)
    cache = tmp_path / "cache"
    by_task = init_participant_wf(subjects=subjects, methods=["identity", "sitk-rigid"])
    rows_task = by_task(worker="debug", cache_root=cache).rows
    inner = _task_dirs(cache)
    by_subject = init_participant_wf(
        subjects=subjects,
        methods=["identity", "sitk-rigid"],
        granularity="subject",
        cache_root=cache,
    )
    rows_subject = by_subject(worker="debug", cache_root=cache).rows
    assert rows_subject == rows_task
    # Only the two SubjectJob nodes are new: every inner task came from the cache.
    new = _task_dirs(cache) - inner
    assert len(new) == 2


def test_subject_granularity_needs_the_cache_root():
    import pytest

    with pytest.raises(ValueError, match="cache_root"):
        init_participant_wf(subjects=[], methods=["identity"], granularity="subject")


def test_rows_per_subject_pair_and_method(tmp_path):
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    head = smooth_head((24, 26, 22), seed=5)
    fixed = save_image(Image(head, affine), tmp_path / "f.nii.gz")
    moving = save_image(Image(second_contrast(head), affine), tmp_path / "m.nii.gz")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"")

    def pair(subject, moving_path, label):
        return {
            "subject": subject,
            "session": None,
            "fixed": str(fixed),
            "moving": str(moving_path),
            "fixed_label": "T1w",
            "moving_label": label,
        }

    subjects = [[pair("a", moving, "T2w"), pair("a", broken, "PDw")], [pair("b", moving, "T2w")]]
    wf = init_participant_wf(subjects=subjects, methods=["identity", "sitk-rigid"])
    rows = wf(worker="debug", cache_root=tmp_path / "cache").rows

    assert [len(r) for r in rows] == [4, 2]
    assert [r["pair_id"] for r in rows[0]] == ["pair-0", "pair-0", "pair-1", "pair-1"]
    statuses = [(r["method"], r["status"]) for r in rows[0]]
    assert statuses == [
        ("identity", "ok"),
        ("sitk-rigid", "ok"),
        ("identity", "failed"),
        ("sitk-rigid", "failed"),
    ]
    assert "empty file" in rows[0][2]["error"]
    assert all(r["status"] == "ok" for r in rows[1])
    assert rows[1][0]["metrics"]["neg_jacobian_pct"] == 0.0
