"""Rerunning with the same work dir reuses finished tasks and gives identical outputs."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from mmreg.bids_app.cli import main
from mmreg.imaging.image import Image

from factories import second_contrast, smooth_head, write_dataset_description, write_pair


def test_rerun_resumes_from_the_work_dir_and_repeats_bytes(tmp_path):
    root = tmp_path / "bids"
    write_dataset_description(root)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    head = smooth_head((26, 28, 24), seed=8)
    write_pair(
        root,
        "01",
        fixed=Image(head, affine),
        moving=Image(np.roll(second_contrast(head), 2, axis=0), affine),
    )
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [
        str(root),
        str(out),
        "participant",
        "--methods",
        "sitk-rigid",
        "--work-dir",
        str(work),
        "--nprocs",
        "1",
    ]
    warped = out / "sub-01" / "anat" / "sub-01_space-T1w_desc-sitkRigid_T2w.nii.gz"
    table = out / "sub-01" / "sub-01_evaluation.csv"

    assert main(argv) == 0
    first = (warped.read_bytes(), table.read_text())
    # Task folders; cached workflow results are only pointers, recomputed on every run.
    tasks = sorted(p.name for p in work.glob("python-*"))
    # A lost derivative is rewritten from the cache, not recomputed.
    warped.unlink()
    assert main(argv) == 0
    # Nothing recomputed; only the subject's derivatives sink ran again (it writes anew in
    # every run, the work it copies from is cached).
    new = sorted(p.name for p in work.glob("python-*") if p.name not in tasks)
    assert len(new) == 1 and not (work / new[0] / "warped.nii.gz").exists()
    assert all((work / name).is_dir() for name in tasks)
    assert table.read_text() == first[1]
    assert warped.read_bytes() == first[0]

    # A fresh work dir recomputes everything: same image bytes (seeded, one ITK thread),
    # same table except the measured times.
    argv[argv.index("--work-dir") + 1] = str(tmp_path / "work2")
    assert main(argv) == 0
    assert warped.read_bytes() == first[0]
    timing = ["runtime_s", "evaluation_s"]
    again = pd.read_csv(table).drop(columns=timing)
    pd.testing.assert_frame_equal(again, pd.read_csv(io.StringIO(first[1])).drop(columns=timing))
