"""Derivatives are written by each subject's sink while the run goes on (slow)."""

from __future__ import annotations

import json

import pytest

from mmreg.bids_app.run import run_demo

pytestmark = pytest.mark.slow


def test_first_subject_is_on_disk_before_the_last_subject_starts(tmp_path):
    assert run_demo(out=tmp_path, subjects=4, methods=("identity",), nprocs=1) == 0
    derivatives = tmp_path / "bids" / "derivatives" / "mmreg"
    # The sink writes the images, then the table, then the report.
    first_done = (derivatives / "sub-01.html").stat().st_mtime
    starts = {}
    for manifest in (tmp_path / "work").glob("python-*/prepared.json"):
        record = json.loads(manifest.read_text())
        subject = record["pair_id"].split("_")[0]
        starts[subject] = min(starts.get(subject, float("inf")), record["started_at"])
    assert sorted(starts) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert first_done < starts["sub-04"]
    # The group report links each subject's own report.
    group = (derivatives / "group" / "report.html").read_text(encoding="utf-8")
    for label in ("01", "02", "03", "04"):
        assert f'href="../sub-{label}.html"' in group
