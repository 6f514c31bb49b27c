"""The derivatives sink: one subject's rows become its derivatives, table and report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mmreg.bids_app.derivatives import missing_row, write_subject_outputs
from mmreg.cache import seal
from mmreg.imaging.image import Image, save_image
from mmreg.imaging.transform import Transform
from mmreg.records import PairRecord, ResultRow, SubjectOutcome
from mmreg.tasks.sink import SubjectDerivatives


def _pair(tmp_path: Path, moving: str) -> PairRecord:
    anat = tmp_path / "bids" / "sub-01" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    for suffix in ("T1w", moving):
        image = Image(np.ones((6, 6, 6), np.float32), np.eye(4))
        save_image(image, anat / f"sub-01_{suffix}.nii.gz")
    return PairRecord(
        "01",
        None,
        str(anat / "sub-01_T1w.nii.gz"),
        str(anat / f"sub-01_{moving}.nii.gz"),
        "T1w",
        moving,
        pair_id=f"sub-01_from-{moving}_to-T1w",
        bids_dir=str(tmp_path / "bids"),
    )


def _result(tmp_path: Path, pair: PairRecord, method: str) -> ResultRow:
    work = tmp_path / "work" / f"{pair.moving_label}-{method}"
    work.mkdir(parents=True)
    warped = save_image(Image(np.zeros((6, 6, 6), np.float32), np.eye(4)), work / "w.nii.gz")
    xfm = Transform.identity().write(work / "xfm.txt")
    seal(work)
    metrics = {"dice_mean": 0.5, "neg_jacobian_pct": 0.0}
    return ResultRow(
        pair.pair_id, method, "ok", metrics=metrics, warped=str(warped), transform=str(xfm)
    )


def test_rows_meet_their_pairs_by_id_and_everything_lands(tmp_path):
    t2, pd_ = _pair(tmp_path, "T2w"), _pair(tmp_path, "PDw")
    rows = [_result(tmp_path, pd_, "identity"), _result(tmp_path, t2, "identity")]
    missing = [missing_row("01", None, "T1w", "FLAIR", "identity", "no FLAIR image")]
    out = tmp_path / "out"
    outcome = SubjectOutcome.from_dict(
        SubjectDerivatives(
            subject="01",
            pairs=[t2.to_dict(), pd_.to_dict()],
            rows=[r.to_dict() for r in rows],
            missing_rows=missing,
            output_dir=str(out),
            run_id="run-1",
        )(worker="debug", cache_root=tmp_path / "cache").outcome
    )
    assert [(r["moving"], r["status"]) for r in outcome.rows] == [
        ("PDw", "ok"),
        ("T2w", "ok"),
        ("FLAIR", "failed"),
    ]
    table = pd.read_csv(out / "sub-01" / "sub-01_evaluation.csv", keep_default_na=False)
    assert list(table["moving"]) == ["PDw", "T2w", "FLAIR"]
    assert table.loc[0, "warped"] == "sub-01/anat/sub-01_space-T1w_desc-identity_PDw.nii.gz"
    assert (out / table.loc[1, "warped"]).is_file()
    assert table.loc[0, "fixed_image"] == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    assert table.loc[2, "error"] == "no FLAIR image"
    assert (out / "sub-01.html").is_file()
    sidecar = json.loads((out / "sub-01/anat/sub-01_space-T1w_desc-identity_T2w.json").read_text())
    assert sidecar["Method"] == "identity"


def test_a_damaged_work_file_fails_its_row_and_is_reported(tmp_path):
    pair = _pair(tmp_path, "T2w")
    good, bad = _result(tmp_path, pair, "identity"), _result(tmp_path, pair, "sitk-rigid")
    Path(bad.warped).write_bytes(b"truncated")
    outcome = write_subject_outputs(tmp_path / "out", "01", [pair], [good, bad])
    assert [r["status"] for r in outcome.rows] == ["ok", "failed"]
    assert "damaged" in outcome.rows[1]["error"]
    assert outcome.damaged == (str(Path(bad.warped).parent),)
    assert not (tmp_path / "out/sub-01/anat/sub-01_space-T1w_desc-sitkRigid_T2w.nii.gz").exists()
