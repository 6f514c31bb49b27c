"""The participant workflow: split over subjects, pairs and methods; failures become rows."""

from __future__ import annotations

import numpy as np

from mmreg.imaging.image import Image, save_image
from mmreg.workflows.participant import init_participant_wf

from factories import second_contrast, smooth_head


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
    statuses = [(r["method"], r["status"]) for r in rows[0]]
    assert statuses == [
        ("identity", "ok"),
        ("sitk-rigid", "ok"),
        ("identity", "failed"),
        ("sitk-rigid", "failed"),
    ]
    assert "empty file" in rows[0][2]["error"]
    assert all(r["status"] == "ok" for r in rows[1])
    assert rows[1][0]["neg_jacobian_pct"] == 0.0
